//! Login PDUs until full feature phase.

use super::*;

impl Connection {
    pub(super) fn on_login_pdu(
        &mut self,
        req: Request,
        dir: &dyn TargetDirectory,
        now: Instant,
    ) -> Result<(), ConnError> {
        let Request::Login(req) = req else {
            return Err(LoginError::NotLoginPdu.into());
        };
        let Some(login) = self.login.as_mut() else {
            return Err(LoginError::StateMissing.into());
        };
        let first = login.initiator_name.is_empty();
        if first {
            self.stat_sn = req.exp_stat_sn;
            self.exp_cmd_sn = req.cmd_sn;
            self.max_cmd_sn = req.cmd_sn;
        }
        let step = login.handle(&req, dir);
        let isid = req.isid;
        let seq = self.seq(true);
        match step {
            Step::Continue {
                transit,
                csg,
                nsg,
                data,
            } => {
                self.send(&Response::Login {
                    transit,
                    cont: false,
                    csg,
                    nsg,
                    isid,
                    tsih: 0,
                    itt: req.itt,
                    status_class: 0,
                    status_detail: 0,
                    seq,
                    data,
                });
                Ok(())
            }
            Step::Fail(e) => {
                let status = e.status();
                self.send(&Response::Login {
                    transit: false,
                    cont: false,
                    csg: req.csg,
                    nsg: 0,
                    isid,
                    tsih: 0,
                    itt: req.itt,
                    status_class: status.0,
                    status_detail: status.1,
                    seq,
                    data: e.response_text(),
                });
                self.closing = true;
                Err(e.into())
            }
            Step::Done { csg, data } => {
                let Some(login) = self.login.take() else {
                    return Err(LoginError::StateMissing.into());
                };
                let tsih = if login.tsih != 0 {
                    login.tsih
                } else {
                    self.config.tsih
                };
                self.send(&Response::Login {
                    transit: true,
                    cont: false,
                    csg,
                    nsg: 3,
                    isid,
                    tsih,
                    itt: req.itt,
                    status_class: login::status::SUCCESS.0,
                    status_detail: login::status::SUCCESS.1,
                    seq,
                    data,
                });
                self.params = login.params.clone();
                self.digests = Digests {
                    header: self.params.header_digest,
                    data: self.params.data_digest,
                };
                let info = SessionInfo {
                    session_type: login.session_type,
                    initiator_name: login.initiator_name.clone(),
                    initiator_alias: login.initiator_alias.clone(),
                    isid: login.isid,
                    tsih,
                    target_name: login.target_name.clone(),
                };
                self.session = Some(info.clone());
                self.cid = login.cid;
                self.phase = Phase::FullFeature;
                self.last_rx = now;
                self.events.push_back(Event::LoggedIn(info));
                Ok(())
            }
        }
    }
}
