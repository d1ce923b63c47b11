//! The web API and dashboard (axum): REST for devices, receipts, leases and the store,
//! Server-Sent Events for the live feed (resumable with `Last-Event-ID` or `?since=`),
//! Prometheus `/metrics`, `/healthz`, and the embedded dashboard at `/`.
//!
//! Authentication: with a token configured, every `/api` route and `/metrics` needs
//! `Authorization: Bearer <token>` or `?token=<token>` (browsers' EventSource cannot
//! send headers). `/healthz` and the dashboard's static files are open: they carry no
//! fleet data. [`serve`] refuses to listen beyond loopback without a token.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use provbox_protocols::events::EventBus;
use provbox_storage::{FileKind, Store};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::dashboard;
use crate::tracker::{FeedItem, PhoneState, TrackerHandle};

/// The current leases as JSON (an array of lease objects). The lead wires this to the
/// lease database; the API does not depend on its type.
pub type LeaseSource = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Everything the API serves from.
#[derive(Clone)]
pub struct ApiState {
    pub tracker: TrackerHandle,
    pub bus: EventBus,
    pub store: Store,
    pub leases: LeaseSource,
    /// Bearer token; `None` leaves the API open (loopback only, see [`serve`]).
    pub token: Option<String>,
    pub metrics: PrometheusHandle,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// The response header carrying the feed id a device list was taken at: open the SSE
/// stream with `?since=<it>` to miss nothing after the list.
pub const FEED_SEQ_HEADER: &str = "x-provbox-feed-seq";

/// The whole router: dashboard, API, metrics, health.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{key}", get(device).delete(forget))
        .route("/api/v1/devices/{key}/receipt", get(receipt))
        .route("/api/v1/events", get(events))
        .route("/api/v1/leases", get(leases))
        .route("/api/v1/store", get(store))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(dashboard::routes())
        .merge(protected)
        .fallback(not_found)
        .with_state(state)
}

/// Why [`serve`] refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the API would listen on {0}, beyond loopback, without a token: set `[api] token` (or bind to 127.0.0.1)"
    )]
    NoToken(SocketAddr),
    #[error("API server error on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves the router on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Io {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    if !addr.ip().is_loopback() && state.token.as_deref().is_none_or(str::is_empty) {
        return Err(ServeError::NoToken(addr));
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| ServeError::Io { addr, source })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such page; the API is under /api/v1 (devices, events, leases, store), plus /metrics and /healthz",
    )
}

/// Compares without an early exit, so the time taken does not reveal a prefix.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(percent_decode)
}

/// Minimal `%XX` and `+` decoding for the token query parameter.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn auth(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(expected) = s.token.as_deref().filter(|t| !t.is_empty()) else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_string()));
    let given = bearer.or_else(|| query_token(req.uri().query()));
    match given {
        Some(t) if same_secret(&t, expected) => next.run(req).await,
        _ => {
            metrics::counter!("provbox_api_unauthorized_total").increment(1);
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this API needs its token: send `Authorization: Bearer <token>` (or add ?token=<token>); the token is `[api] token` in the config",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"provbox\""),
            );
            r
        }
    }
}

async fn healthz(State(s): State<ApiState>) -> Response {
    Json(json!({
        "status": if s.tracker.is_stopped() { "stopping" } else { "ok" },
        "devices": s.tracker.devices().len(),
        "last_seq": s.bus.last_seq(),
        "store_files": s.store.index().len(),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct DevicesQuery {
    /// Comma-separated states.
    state: Option<String>,
    /// Substring of MAC, address, model or firmware.
    q: Option<String>,
}

async fn devices(State(s): State<ApiState>, Query(q): Query<DevicesQuery>) -> Response {
    // Take the feed position first: replaying from it may repeat an update the list
    // already has (harmless, rows are upserted) but never misses one.
    let seq = s.tracker.feed_seq();
    let wanted: Option<Vec<PhoneState>> = match &q.state {
        Some(list) => {
            let parsed: Result<Vec<PhoneState>, String> = list
                .split(',')
                .filter(|x| !x.is_empty())
                .map(str::parse)
                .collect();
            match parsed {
                Ok(v) => Some(v),
                Err(e) => {
                    let all: Vec<&str> = PhoneState::ALL.iter().map(|s| s.as_str()).collect();
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("{e}; states are {}", all.join(", ")),
                    );
                }
            }
        }
        None => None,
    };
    let needle = q.q.as_deref().map(str::to_ascii_lowercase);
    let rows: Vec<_> = s
        .tracker
        .devices()
        .into_iter()
        .filter(|d| wanted.as_ref().is_none_or(|w| w.contains(&d.state)))
        .filter(|d| {
            needle.as_ref().is_none_or(|n| {
                let hay = format!(
                    "{} {} {} {}",
                    d.key,
                    d.ip.map(|i| i.to_string()).unwrap_or_default(),
                    d.model.as_deref().unwrap_or(""),
                    d.firmware.as_deref().unwrap_or("")
                )
                .to_ascii_lowercase();
                hay.contains(n.as_str())
            })
        })
        .collect();
    let mut r = Json(rows).into_response();
    r.headers_mut()
        .insert(FEED_SEQ_HEADER, HeaderValue::from(seq));
    r
}

fn unknown_device(key: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no device {key:?}: name it by MAC (any spelling) or address; GET /api/v1/devices lists the known ones"
        ),
    )
}

async fn device(State(s): State<ApiState>, Path(key): Path<String>) -> Response {
    match s.tracker.device(&key) {
        Some(d) => Json(d).into_response(),
        None => unknown_device(&key),
    }
}

/// Forgets a device: 204 once the tracker has dropped it (its lease stays).
async fn forget(State(s): State<ApiState>, Path(key): Path<String>) -> Response {
    match s
        .tracker
        .forget(&s.bus, &key, std::time::Duration::from_secs(5))
        .await
    {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => unknown_device(&key),
    }
}

async fn receipt(State(s): State<ApiState>, Path(key): Path<String>) -> Response {
    match s.tracker.receipt(&key) {
        Some(r) => Json(r).into_response(),
        None => unknown_device(&key),
    }
}

async fn leases(State(s): State<ApiState>) -> Response {
    Json((s.leases)()).into_response()
}

async fn store(State(s): State<ApiState>) -> Response {
    let index = s.store.index();
    let files: Vec<_> = index.entries().map(|e| e.as_ref().clone()).collect();
    // The image each (directory, model) would be upgraded to.
    let mut newest: BTreeMap<(String, String), serde_json::Value> = BTreeMap::new();
    for e in index.entries().filter(|e| e.kind == FileKind::Firmware) {
        let (Some(model), dir) = (&e.model, e.path.rsplit_once('/').map_or("", |(d, _)| d)) else {
            continue;
        };
        let key = (dir.to_string(), model.clone());
        if newest.contains_key(&key) {
            continue;
        }
        if let Some(n) = index.newest_image(dir, model) {
            newest.insert(key, json!({ "dir": dir, "model": model, "path": n.path, "version": n.version, "sha256": n.sha256 }));
        }
    }
    Json(json!({ "files": files, "newest": newest.into_values().collect::<Vec<_>>() }))
        .into_response()
}

fn count_leases(v: &serde_json::Value) -> Option<usize> {
    match v {
        serde_json::Value::Array(a) => Some(a.len()),
        serde_json::Value::Object(o) => o.get("leases").and_then(count_leases),
        _ => None,
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    use std::fmt::Write;
    let mut text = s.metrics.render();
    let counts = s.tracker.counts();
    let _ = writeln!(
        text,
        "# HELP provbox_phones Phones by tracker state.\n# TYPE provbox_phones gauge"
    );
    for (state, n) in &counts {
        let _ = writeln!(text, "provbox_phones{{state=\"{state}\"}} {n}");
    }
    let pending = s
        .tracker
        .devices()
        .iter()
        .filter(|d| d.update_pending)
        .count();
    let _ = writeln!(
        text,
        "# HELP provbox_phones_update_pending Phones whose firmware differs from the store's newest image for their model.\n# TYPE provbox_phones_update_pending gauge\nprovbox_phones_update_pending {pending}"
    );
    if let Some(n) = count_leases(&(s.leases)()) {
        let _ = writeln!(
            text,
            "# HELP provbox_leases Active DHCP leases.\n# TYPE provbox_leases gauge\nprovbox_leases {n}"
        );
    }
    let _ = writeln!(
        text,
        "# HELP provbox_events_total Wire events published.\n# TYPE provbox_events_total counter\nprovbox_events_total {}",
        s.bus.last_seq()
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    since: Option<u64>,
    /// Comma-separated: wire, state, device (default: all).
    types: Option<String>,
}

async fn events(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = last_id.or(q.since);
    let types: Option<Vec<String>> = q.types.map(|t| {
        t.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    });
    let sub = s.tracker.subscribe_feed(after);
    let stop = s.tracker.stop_token();
    let head: Vec<Arc<FeedItem>> = sub.backlog;
    let state = StreamState {
        head: head.into_iter(),
        live: sub.live,
        reset: sub.reset,
        types,
        stop,
        last: after.unwrap_or(0),
    };
    let stream = futures::stream::unfold(state, next_event);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

struct StreamState {
    head: std::vec::IntoIter<Arc<FeedItem>>,
    live: broadcast::Receiver<Arc<FeedItem>>,
    reset: bool,
    types: Option<Vec<String>>,
    stop: CancellationToken,
    last: u64,
}

impl StreamState {
    fn wants(&self, item: &FeedItem) -> bool {
        // `removed` rows go to whoever follows devices.
        let name = if item.event == "removed" {
            "device"
        } else {
            item.event
        };
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == name))
    }
}

fn sse(item: &FeedItem) -> Event {
    Event::default()
        .id(item.id.to_string())
        .event(item.event)
        .data(item.data())
}

fn reset_event(last: u64) -> Event {
    // Keeps the client's position: after a reload it resumes from here.
    Event::default()
        .id(last.to_string())
        .event("reset")
        .data("{\"reload\":true}")
}

async fn next_event(mut st: StreamState) -> Option<(Result<Event, Infallible>, StreamState)> {
    if st.reset {
        st.reset = false;
        return Some((Ok(reset_event(st.last)), st));
    }
    while let Some(item) = st.head.next() {
        if item.id <= st.last {
            continue;
        }
        st.last = item.id;
        if st.wants(&item) {
            return Some((Ok(sse(&item)), st));
        }
    }
    loop {
        let r = tokio::select! {
            _ = st.stop.cancelled() => return None,
            r = st.live.recv() => r,
        };
        match r {
            Ok(item) => {
                if item.id <= st.last {
                    continue;
                }
                st.last = item.id;
                if st.wants(&item) {
                    return Some((Ok(sse(&item)), st));
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics::counter!("provbox_sse_lagged_total").increment(n);
                return Some((Ok(reset_event(st.last)), st));
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn token_from_query() {
        assert_eq!(
            query_token(Some("since=3&token=a%2Bb+c")).as_deref(),
            Some("a+b c")
        );
        assert_eq!(query_token(Some("token=%zz")).as_deref(), Some("%zz"));
        assert_eq!(query_token(Some("token=abc%")).as_deref(), Some("abc%"));
        assert_eq!(query_token(Some("since=3")), None);
        assert_eq!(query_token(None), None);
    }
}
