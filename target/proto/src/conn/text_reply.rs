//! Text requests in full feature phase: SendTargets and key negotiation,
//! with long answers split over several PDUs.

use super::*;

impl Connection {
    pub(super) fn on_text(&mut self, p: TextPdu, raw: &RawPdu, dir: &dyn TargetDirectory) {
        // A continuation of our long response.
        if p.ttt != RESERVED_TAG {
            match self.text_reply.take() {
                Some(reply) if reply.itt == p.itt && reply.ttt == p.ttt => {
                    self.send_text_part(reply.itt, reply.rest);
                }
                _ => self.send_reject(reject::PROTOCOL_ERROR, raw),
            }
            return;
        }
        if self.text_in.len() + p.data.len() > text::MAX_TEXT_LEN {
            self.text_in.clear();
            self.send_reject(reject::PROTOCOL_ERROR, raw);
            return;
        }
        self.text_in.extend_from_slice(&p.data);
        if p.cont {
            let seq = self.seq(true);
            let ttt = self.alloc_ttt();
            self.send(&Response::Text {
                final_: false,
                cont: false,
                itt: p.itt,
                ttt,
                seq,
                data: Bytes::new(),
            });
            return;
        }
        let raw_text = std::mem::take(&mut self.text_in);
        let keys = match text::parse(&raw_text) {
            Ok(k) => k,
            Err(_) => {
                self.send_reject(reject::PROTOCOL_ERROR, raw);
                return;
            }
        };
        let mut out = Pairs::default();
        let limits = Self::limits_of(&self.config);
        let initiator = self
            .session
            .as_ref()
            .map(|s| s.initiator_name.clone())
            .unwrap_or_default();
        let own_target = self.session.as_ref().and_then(|s| s.target_name.clone());
        for (k, v) in &keys.0 {
            if k == "SendTargets" {
                let named = ["iqn.", "eui.", "naa."].iter().any(|p| v.starts_with(p));
                if !(v == "All" || v.is_empty() || named) {
                    out.push(k.clone(), "Reject");
                    continue;
                }
                for t in dir.discover(&initiator) {
                    // A normal session only learns about its own target.
                    let wanted = match (v.as_str(), own_target.as_deref()) {
                        ("All", None) => true,
                        ("All" | "", Some(own)) => own == t.name,
                        ("", None) => false,
                        (name, own) => name == t.name && own.is_none_or(|o| o == name),
                    };
                    if wanted {
                        out.push("TargetName", t.name.clone());
                        for a in &t.addresses {
                            out.push("TargetAddress", a.clone());
                        }
                    }
                }
                continue;
            }
            match negotiate::answer(&mut self.params, &limits, k, v, false) {
                Answer::Value(a) => out.push(k.clone(), a),
                Answer::NotMine => out.push(k.clone(), "Reject"),
            }
        }
        self.send_text_part(p.itt, out.encode());
    }

    pub(super) fn send_text_part(&mut self, itt: u32, data: Bytes) {
        let max = self.params.initiator_mrdsl.max(512) as usize;
        let (now, rest) = if data.len() > max {
            // Split at a key boundary where possible.
            let cut = data[..max]
                .iter()
                .rposition(|&b| b == 0)
                .map_or(max, |i| i + 1);
            (data.slice(..cut), data.slice(cut..))
        } else {
            (data, Bytes::new())
        };
        let more = !rest.is_empty();
        let ttt = if more { self.alloc_ttt() } else { RESERVED_TAG };
        let seq = self.seq(true);
        self.send(&Response::Text {
            final_: !more,
            cont: more,
            itt,
            ttt,
            seq,
            data: now,
        });
        self.text_reply = more.then_some(TextReply { itt, ttt, rest });
    }

    // ---- time ------------------------------------------------------------
}
