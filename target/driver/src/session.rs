//! One TCP connection: moves bytes between the socket and its
//! [`Connection`], runs its SCSI commands concurrently on the LUNs, and
//! keeps the session registry current.

use crate::admission::Ticket;
use crate::events::{EndReason, SessionEvent};
use crate::outbox::Outbox;
use crate::server::{Directory, Server, SessionEntry, SessionKey, Target};
use bytes::BytesMut;
use iscsi_proto::conn::{ConnError, Connection, Event, SessionInfo, SessionType, TmfRequest};
use iscsi_proto::login::LoginError;
use iscsi_proto::scsi::spc;
use iscsi_proto::task::{Nexus, ScsiCommand, ScsiResult, TmfResponse};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

const READ_CHUNK: usize = 256 * 1024;
/// Bytes of a connection's first login request kept to feed again after a
/// hold (one is a few hundred bytes, at most a header and 8 KiB of text;
/// more than this is not held).
const LOGIN_KEPT_MAX: usize = 16 * 1024;
const REPORT_LUNS: u8 = 0xA0;

/// The logged-in side of a connection: its target and I_T nexus.
struct Bound {
    target: Arc<Target>,
    nexus: Nexus,
}

struct State {
    server: Arc<Server>,
    conn: Connection,
    conn_id: u64,
    kill: Arc<Notify>,
    info: Option<SessionInfo>,
    bound: Option<Bound>,
    done_tx: mpsc::UnboundedSender<(u32, ScsiResult)>,
    peer: SocketAddr,
    logged_out: bool,
    /// This connection's slot (held until the connection ends).
    ticket: Option<Ticket>,
    /// The server's command observer, fetched once for the connection.
    observer: Option<crate::events::CommandObserver>,
}

/// Why a connection ended other than by the initiator closing it. Its
/// text is what the log line and [`SessionEvent::Ended`]'s reason say.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("read: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("ended by the server (reinstated, target removed, or evicted before login)")]
    EndedByServer,
}

pub(crate) async fn run(server: Arc<Server>, stream: TcpStream, peer: SocketAddr, ticket: Ticket) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%peer, "no local address: {e}");
            return;
        }
    };
    tune_socket(&stream);
    let (mut rd, wr) = stream.into_split();
    let out = Outbox::spawn(wr, server.clone());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut st = State {
        conn: Connection::new(server.conn_config(), Instant::now()),
        conn_id: ticket.id,
        kill: ticket.kill.clone(),
        info: None,
        bound: None,
        done_tx,
        server,
        peer,
        logged_out: false,
        ticket: Some(ticket),
        observer: None,
    };
    st.observer = st.server.command_observer();
    let mut stop = st.server.shutdown_signal();
    let mut stopping = false;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Every byte fed before the first login answer: a login for a target
    // about to be served here is held, then fed again to a fresh
    // connection state once the target is here (once per connection).
    let mut login_bytes: Option<BytesMut> = Some(BytesMut::new());
    let result: Result<(), SessionError> = loop {
        let deadline = st.conn.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        // While the initiator owes us reading (our backlog is over the
        // cap), its socket is not read: its PDUs wait in the kernel.
        let reading = st.conn.wants_input();
        let draining = st.conn.waits_for_drain();
        tokio::select! {
            r = rd.read_buf(&mut buf), if reading => match r {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(SessionError::Read(e)),
            },
            _ = out.drained(), if draining => {}
            Some((itt, res)) = done_rx.recv() => {
                st.conn.complete_command(itt, res);
                // Take every completion that is ready: one write for all.
                while let Ok((itt, res)) = done_rx.try_recv() {
                    st.conn.complete_command(itt, res);
                }
            }
            _ = sleep => {
                if let Err(e) = st.conn.handle_timeout(Instant::now()) {
                    break Err(e.into());
                }
            }
            _ = st.kill.notified() => {
                st.conn.close();
                break Err(SessionError::EndedByServer);
            }
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) }, if !stopping => {
                stopping = true;
                st.conn.request_logout(0);
                let grace = st.server.config.shutdown_grace;
                let kill = st.kill.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    kill.notify_one();
                });
            }
        }
        st.conn.set_unsent(out.unsent(), out.cap());
        // Input just read, or held back until the backlog drained.
        if !buf.is_empty() && st.conn.wants_input() {
            let dir = Directory {
                server: &st.server,
                local,
            };
            if login_bytes
                .as_ref()
                .is_some_and(|kept| kept.len() + buf.len() > LOGIN_KEPT_MAX)
            {
                login_bytes = None;
            }
            let before = login_bytes.is_some().then(|| buf.clone());
            let mut fed = st.conn.handle_input(&mut buf, &dir, Instant::now());
            if let (Some(before), Some(kept)) = (before, login_bytes.as_mut()) {
                // What the connection took (a partial PDU stays in `buf`).
                let taken = before.len().saturating_sub(buf.len());
                kept.extend_from_slice(&before[..taken]);
            }
            let coming = match &fed {
                Err(ConnError::Login(LoginError::Unavailable { target })) => Some(target.clone()),
                _ => None,
            };
            if let (Some(target), Some(kept)) = (coming, login_bytes.take()) {
                let hold = st.server.config.coming_hold;
                if held(&st.server, &target, local, hold, &st.kill).await {
                    // The answer queued ("service unavailable") goes with
                    // the old state; the login starts again as it came.
                    st.conn = Connection::new(st.server.conn_config(), Instant::now());
                    let mut again = kept;
                    again.extend_from_slice(&buf);
                    buf = again;
                    fed = st.conn.handle_input(&mut buf, &dir, Instant::now());
                }
            }
            if fed.is_ok() && login_bytes.is_some() {
                // The first answer is out: nothing is held after it.
                if let Some(b) = st.conn.poll_transmit() {
                    out.send(b);
                    login_bytes = None;
                }
            }
            if let Err(e) = fed {
                flush_out(&mut st.conn, &out);
                break Err(e.into());
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(READ_CHUNK);
            }
        }
        while let Some(ev) = st.conn.poll_event() {
            st.on_event(ev);
        }
        flush_out(&mut st.conn, &out);
        if st.conn.is_closed() {
            break Ok(());
        }
    };
    if let Err(e) = &result {
        tracing::info!(%peer, initiator = st.info.as_ref().map(|i| i.initiator_name.as_str()), "connection ended: {e}");
    }
    if let (Some(info), Some(bound)) = (&st.info, &st.bound) {
        let reason = match result {
            _ if st.logged_out => EndReason::Logout,
            Ok(()) => EndReason::Closed,
            Err(e) => EndReason::Error(Arc::new(e)),
        };
        st.server.notify(&SessionEvent::Ended {
            initiator: info.initiator_name.clone(),
            target: bound.target.iqn.clone(),
            isid: info.isid,
            peer,
            reason,
        });
    }
    st.unregister();
    out.finish().await;
}

/// What the command observer needs of a command, kept from its arrival.
struct Watch {
    f: crate::events::CommandObserver,
    target: Arc<Target>,
    cdb: bytes::Bytes,
    data_out: u64,
    started: Instant,
}

impl Watch {
    fn done(&self, res: &ScsiResult) {
        (self.f)(&crate::events::CommandDone {
            target: &self.target.iqn,
            cdb: &self.cdb,
            data_out: self.data_out,
            data_in: res.data_in.len() as u64,
            good: res.status == iscsi_proto::task::ScsiStatus::GOOD,
            elapsed: self.started.elapsed(),
        });
    }
}

/// Waits, at most `hold`, while target `iqn` is about to be served here;
/// whether that ended (the target is here, or is known elsewhere or not at
/// all now) so the login can be fed again. Polls: a takeover is a matter of
/// seconds and a held login costs one sleeping task.
async fn held(
    server: &Server,
    iqn: &str,
    local: SocketAddr,
    hold: std::time::Duration,
    kill: &Notify,
) -> bool {
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        if server.target(iqn).is_some() || !server.is_coming(iqn, local) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            _ = kill.notified() => return false,
        }
    }
}

fn flush_out(conn: &mut Connection, out: &Outbox) {
    if let Some(b) = conn.poll_transmit() {
        out.send(b);
    }
}

fn tune_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    // Dead peers (an abandoned iPXE session after a power cut, a node powered
    // off without logging out) are found by keepalive even when the idle
    // timer is long: 30 s quiet, then 3 unanswered probes 10 s apart, so a
    // dead node's session ends within about a minute. A live initiator's
    // kernel answers probes whatever its iSCSI layer does.
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&ka);
}

impl State {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::LoggedIn(info) => self.logged_in(info),
            Event::Command(cmd) => self.command(cmd),
            Event::TaskManagement(req) => self.task_management(req),
            Event::Logout => self.logged_out = true,
        }
    }

    fn logged_in(&mut self, info: SessionInfo) {
        if let Some(t) = &self.ticket {
            t.logged_in();
        }
        let key = SessionKey::of(&info, self.conn_id);
        let entry = SessionEntry {
            tsih: info.tsih,
            conn_id: self.conn_id,
            kill: self.kill.clone(),
            target: info.target_name.clone(),
        };
        // Same initiator, ISID and target: session reinstatement ends the
        // old one. The login got here only after passing the target's
        // authorization and CHAP; a discovery key is unique to this
        // connection and replaces nothing.
        if let Some(old) = self
            .server
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry)
        {
            old.kill.notify_one();
        }
        if info.session_type == SessionType::Normal {
            if let Some(target) = info
                .target_name
                .as_deref()
                .and_then(|t| self.server.target(t))
            {
                let nexus = Nexus {
                    initiator_port: format!("{},i,0x{}", info.initiator_name, hex_isid(&info.isid))
                        .into(),
                    target_port: format!(
                        "{},t,0x{:04x}",
                        target.iqn, self.server.config.portal_group_tag
                    )
                    .into(),
                    relative_port: 1,
                };
                self.server.notify(&SessionEvent::LoggedIn {
                    initiator: info.initiator_name.clone(),
                    target: target.iqn.clone(),
                    isid: info.isid,
                    peer: self.peer,
                });
                self.bound = Some(Bound { target, nexus });
            }
        }
        tracing::info!(
            initiator = %info.initiator_name,
            target = info.target_name.as_deref().unwrap_or("(discovery)"),
            tsih = info.tsih,
            "login"
        );
        self.info = Some(info);
    }

    fn command(&mut self, cmd: ScsiCommand) {
        let Some(bound) = &self.bound else {
            return;
        };
        let opcode = cmd.cdb.first().copied().unwrap_or(0);
        if opcode == REPORT_LUNS {
            let luns: Vec<u64> = bound.target.luns.keys().copied().collect();
            self.conn
                .complete_command(cmd.itt, spc::report_luns(&luns, &cmd.cdb));
            return;
        }
        let Some(lun) = bound.target.luns.get(&cmd.lun).cloned() else {
            self.conn
                .complete_command(cmd.itt, spc::unknown_lun(&cmd.cdb));
            return;
        };
        let nexus = bound.nexus.clone();
        let itt = cmd.itt;
        let watch = self.observer.clone().map(|f| Watch {
            f,
            target: bound.target.clone(),
            cdb: cmd.cdb.clone(),
            data_out: cmd.data_out.len() as u64,
            started: Instant::now(),
        });
        let mut fut = Box::pin(async move { lun.execute(&nexus, &cmd).await });
        // Most reads of a warm image finish without waiting (page-cache hits
        // through RWF_NOWAIT): poll once here and skip a task spawn and a
        // channel round trip. Anything that would wait goes to its own task,
        // which polls again with a real waker.
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(res) => {
                if let Some(w) = &watch {
                    w.done(&res);
                }
                self.conn.complete_command(itt, res)
            }
            Poll::Pending => {
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    let res = fut.await;
                    if let Some(w) = &watch {
                        w.done(&res);
                    }
                    let _ = done.send((itt, res));
                });
            }
        }
    }

    fn task_management(&mut self, req: TmfRequest) {
        let Some(bound) = &self.bound else {
            self.conn
                .complete_task_management(req.itt, TmfResponse::Rejected);
            return;
        };
        let all = matches!(
            req.function,
            iscsi_proto::task::TmfFunction::TargetWarmReset
                | iscsi_proto::task::TmfFunction::TargetColdReset
        );
        let response = if all {
            for lun in bound.target.luns.values() {
                lun.task_management(&bound.nexus, req.function);
            }
            TmfResponse::Complete
        } else {
            match bound.target.luns.get(&req.lun) {
                Some(lun) => lun.task_management(&bound.nexus, req.function),
                None => TmfResponse::LunDoesNotExist,
            }
        };
        self.conn.complete_task_management(req.itt, response);
        if req.function == iscsi_proto::task::TmfFunction::TargetColdReset {
            // RFC 7143 11.5.1: a cold reset is a power cycle of the target:
            // every session with it ends, not only the requester's.
            let me = self.bound.as_ref().map(|b| b.target.iqn.clone());
            let sessions = self
                .server
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for s in sessions
                .values()
                .filter(|s| s.conn_id != self.conn_id && s.target == me)
            {
                s.kill.notify_one();
            }
            drop(sessions);
            self.conn.close_after_flush();
        }
    }

    fn unregister(&mut self) {
        let Some(info) = &self.info else {
            return;
        };
        let key = SessionKey::of(info, self.conn_id);
        let mut sessions = self
            .server
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if sessions
            .get(&key)
            .is_some_and(|s| s.conn_id == self.conn_id)
        {
            sessions.remove(&key);
        }
        drop(sessions);
        if let Some(b) = &self.bound {
            for lun in b.target.luns.values() {
                lun.nexus_lost(&b.nexus);
            }
        }
    }
}

fn hex_isid(isid: &[u8; 6]) -> String {
    isid.iter().map(|b| format!("{b:02x}")).collect()
}
