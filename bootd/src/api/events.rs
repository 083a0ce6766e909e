//! `GET /api/v1/events`: boot events as server-sent events, for live views.
//! Two kinds: `stage` (one per boot stage the boot timeline records, as
//! `node show` names them, resolved to its node) and `io` (every second:
//! each node's iSCSI bytes and rates over that second). A view that falls
//! behind gets a `lagged` event with how many it missed.

use super::error::{ApiError, ApiResult};
use super::Api;
use crate::bootlog::StageEvent;
use crate::events::{Event, Subscriber};
use crate::fleet::FleetView;
use crate::service::Shutdown;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, Semaphore};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Event streams open at once; more are refused (503).
const STREAMS: usize = 256;
/// How often `io` events go out.
const IO_EVERY: Duration = Duration::from_secs(1);

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new().routes(routes!(events))
}

/// Where the streams' events come from; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    stages: broadcast::Sender<Arc<StageEvent>>,
    io: broadcast::Sender<Arc<Value>>,
    streams: Arc<Semaphore>,
    shutdown: Shutdown,
}

impl Feed {
    /// Stages from the boot log's `feed`; `io` events start once
    /// [`IoRates::run`] runs. Streams end at `shutdown`.
    pub fn new(stages: broadcast::Sender<Arc<StageEvent>>, shutdown: Shutdown) -> (Self, IoRates) {
        let io = broadcast::channel(64).0;
        let rates = IoRates {
            counts: Arc::new(IoCounts::default()),
            io: io.clone(),
        };
        let feed = Self {
            stages,
            io,
            streams: Arc::new(Semaphore::new(STREAMS)),
            shutdown,
        };
        (feed, rates)
    }
}

/// Bytes read and written per target since serve started; a boot-event
/// subscriber (one short lock per SCSI command, no allocation but the
/// first for a target).
#[derive(Default)]
pub struct IoCounts(Mutex<HashMap<String, [u64; 2]>>);

impl Subscriber for IoCounts {
    fn on(&self, event: &Event<'_>) {
        let Event::Command(c) = event else { return };
        if c.data_in == 0 && c.data_out == 0 {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(c.target) {
            Some(v) => {
                v[0] += c.data_in;
                v[1] += c.data_out;
            }
            None => {
                m.insert(c.target.to_string(), [c.data_in, c.data_out]);
            }
        }
    }
}

/// The counters and the ticker that turns them into `io` events.
pub struct IoRates {
    counts: Arc<IoCounts>,
    io: broadcast::Sender<Arc<Value>>,
}

impl IoRates {
    /// The subscriber to put on serve's event stream.
    pub fn subscriber(&self) -> Arc<IoCounts> {
        self.counts.clone()
    }

    /// Every [`IO_EVERY`] until `shutdown`: one `io` event with each node
    /// that moved bytes since the last, while anyone listens.
    pub async fn run(self, view: FleetView, mut shutdown: Shutdown) {
        let mut timer = tokio::time::interval(IO_EVERY);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: HashMap<String, [u64; 2]> = HashMap::new();
        let mut last_at = Instant::now();
        loop {
            tokio::select! {
                _ = timer.tick() => {}
                _ = shutdown.wait() => return,
            }
            let now: HashMap<String, [u64; 2]> = {
                let m = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
                m.clone()
            };
            let secs = last_at.elapsed().as_secs_f64().max(0.001);
            last_at = Instant::now();
            let snap = view.current();
            let mut nodes = Vec::new();
            for (target, [read, written]) in &now {
                let [r0, w0] = last.get(target).copied().unwrap_or([0, 0]);
                let (dr, dw) = (read.saturating_sub(r0), written.saturating_sub(w0));
                if dr == 0 && dw == 0 {
                    continue;
                }
                let Some(n) = snap.by_target(target) else {
                    continue;
                };
                nodes.push(json!({
                    "node": n.name,
                    "target": target,
                    "read_bytes": read,
                    "written_bytes": written,
                    "read_bytes_per_s": (dr as f64 / secs).round() as u64,
                    "written_bytes_per_s": (dw as f64 / secs).round() as u64,
                }));
            }
            last = now;
            if self.io.receiver_count() == 0 {
                continue;
            }
            let at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let _ = self.io.send(Arc::new(json!({
                "at_ms": at_ms,
                "interval_ms": (secs * 1000.0).round() as u64,
                "nodes": nodes,
            })));
        }
    }
}

fn lagged(missed: u64) -> Sse {
    Sse::default()
        .event("lagged")
        .data(json!({ "missed": missed }).to_string())
}

fn data(kind: &str, v: &impl serde::Serialize) -> Sse {
    Sse::default()
        .event(kind)
        .data(serde_json::to_string(v).unwrap_or_default())
}

/// Boot events as they happen (`text/event-stream`): `stage` events
/// `{node, mac, stage, at_ms, boot_started_ms, new_boot, detail}`, `io`
/// events `{at_ms, interval_ms, nodes: [{node, target, read_bytes,
/// written_bytes, read_bytes_per_s, written_bytes_per_s}]}` every second,
/// `lagged` `{missed}` when the stream fell behind.
#[utoipa::path(get, path = "/events", tag = "events",
    responses(
        (status = 200, description = "Server-sent events", content_type = "text/event-stream", body = String),
        (status = 503, description = "Too many streams open")))]
async fn events(
    State(api): State<Api>,
) -> ApiResult<axum::response::Sse<impl futures_util::Stream<Item = Result<Sse, Infallible>>>> {
    let feed = api.feed.clone();
    let permit = feed.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("at most {STREAMS} event streams at once"),
        )
    })?;
    let state = (
        feed.stages.subscribe(),
        feed.io.subscribe(),
        feed.shutdown.clone(),
        permit,
    );
    let stream = futures_util::stream::unfold(state, |(mut st, mut io, mut sd, p)| async move {
        use broadcast::error::RecvError;
        let ev = tokio::select! {
            r = st.recv() => match r {
                Ok(s) => data("stage", &*s),
                Err(RecvError::Lagged(n)) => lagged(n),
                Err(RecvError::Closed) => return None,
            },
            r = io.recv() => match r {
                Ok(v) => data("io", &*v),
                Err(RecvError::Lagged(n)) => lagged(n),
                Err(RecvError::Closed) => return None,
            },
            _ = sd.wait() => return None,
        };
        Some((Ok(ev), (st, io, sd, p)))
    });
    Ok(axum::response::Sse::new(stream).keep_alive(KeepAlive::default()))
}
