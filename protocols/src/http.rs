//! HTTP and HTTPS file serving over the store.
//!
//! GET and HEAD with Content-Length, Last-Modified, a strong ETag from the content
//! hash, Accept-Ranges; a single Range gives 206, an unsatisfiable one 416; If-None-Match
//! and If-Modified-Since give 304; If-Match and If-Unmodified-Since give 412; and
//! If-Range is honoured (a stale validator gets the whole file — tower-http's ServeDir
//! ignores it, which would corrupt a resumed firmware download of a changed image).
//! Every response body reads one pinned snapshot, so a file replaced mid-download is
//! delivered whole, in its old version.
//!
//! The accept loop is hand-written on hyper-util rather than `axum::serve`: it runs
//! each TLS handshake in its own task with a timeout (a slow or hostile client cannot
//! stall accepts), records the peer address for every request, and drains in-flight
//! downloads on shutdown with hyper-util's `GracefulShutdown`. Plain HTTP connections
//! run over [`crate::zerocopy::SendfileStream`], so image bodies leave by `sendfile`;
//! every connection runs over [`crate::linkstats::Probed`], whose TCP figures its
//! downloads report. `[access] allow` is decided once per connection (403 to every
//! request of a refused client), and with an upload area PUT stores phone logs there.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use provbox_storage::{Snapshot, Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::{EventBus, EventKind, Proto};
use crate::linkstats::{LinkStats, Probed};
use crate::progress::{Transfer, TransferStart};
use crate::uploads::{self, UploadArea, UploadError};
use crate::warn_limited;

/// Body frame size: large frames keep TLS records full and `writev` calls few, small
/// enough that progress is reported while a firmware image is on its way.
const CHUNK: usize = 256 * 1024;
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "cannot bind {proto} to {addr}: {source}; is another server using the port, or does it need root (ports below 1024)?"
    )]
    Bind {
        proto: Proto,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Builds the rustls server config: ring provider, TLS 1.2 and 1.3 only, h2 + http/1.1.
pub fn tls_config(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTP or HTTPS file server, bound and ready to run.
pub struct HttpServer {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<FileState>,
    access: provbox_config::AccessConfig,
    uploads: Option<Arc<UploadArea>>,
}

#[derive(Debug)]
struct FileState {
    store: Store,
    bus: EventBus,
    proto: Proto,
    /// `ETag` and `Last-Modified` by content hash, with the mtime they were made for.
    validators: Mutex<HashMap<String, (u64, Validators)>>,
}

/// One file version's validators as header values, formatted once: per request they
/// were four allocations and an HTTP-date formatting. A clone shares the bytes.
#[derive(Debug, Clone)]
struct Validators {
    etag: HeaderValue,
    last_modified: HeaderValue,
}

impl FileState {
    fn validators(&self, e: &provbox_storage::Entry) -> Validators {
        let mut cache = self.validators.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((mtime, v)) = cache.get(e.sha256.as_str())
            && *mtime == e.mtime_ms
        {
            return v.clone();
        }
        let value = |s: String| {
            HeaderValue::from_maybe_shared(Bytes::from(s))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        let v = Validators {
            etag: value(format!("\"{}\"", e.sha256)),
            last_modified: value(httpdate::fmt_http_date(e.mtime())),
        };
        // Bounded: a store rarely holds this many versions at once.
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(e.sha256.clone(), (e.mtime_ms, v.clone()));
        v
    }
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port). With `tls`, serves HTTPS.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        store: Store,
        bus: EventBus,
    ) -> Result<HttpServer, HttpError> {
        let proto = if tls.is_some() {
            Proto::Https
        } else {
            Proto::Http
        };
        let listener = crate::listen::tcp(addr).map_err(|source| HttpError::Bind {
            proto,
            addr,
            source,
        })?;
        Ok(HttpServer {
            listener,
            access: provbox_config::AccessConfig::default(),
            uploads: None,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            state: Arc::new(FileState {
                store,
                bus,
                proto,
                validators: Mutex::default(),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept PUT into this upload area (phone logs); without one PUT gets 405.
    pub fn with_uploads(mut self, area: Option<Arc<UploadArea>>) -> Self {
        self.uploads = area;
        self
    }

    /// Serve only the clients `access` permits; others get 403 for every request.
    pub fn with_access(mut self, access: provbox_config::AccessConfig) -> Self {
        self.access = access;
        self
    }

    /// Serves until `shutdown`, then lets in-flight requests finish for up to `grace`.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().max_buf_size(4 * 1024 * 1024).writev(true);
        let builder = Arc::new(builder);
        let proto = self.state.proto;
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        warn_limited!(%proto, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            // One handler for every path: a plain hyper service, no router. axum's
            // Router and tower layers were a tenth of the CPU of a 1 KiB request.
            let st = self.state.clone();
            // Decided once per connection; refused requests still get an answer (403)
            // and an event, so a lab sees which phone was turned away and for what.
            let conn = Arc::new(Conn {
                peer,
                allowed: self.access.permits(peer.ip()),
                link: Arc::new(LinkStats::default()),
                put: self.uploads.is_some(),
            });
            let link = conn.link.clone();
            let uploads = self.uploads.clone();
            let svc = hyper::service::service_fn(move |req| {
                let (st, conn, uploads) = (st.clone(), conn.clone(), uploads.clone());
                async move {
                    let r = match uploads {
                        Some(area) if conn.allowed && req.method() == Method::PUT => {
                            put_upload(&st, conn.peer, &area, req).await
                        }
                        _ => serve_file(&st, &conn, req).await,
                    };
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let builder = builder.clone();
            match &self.tls {
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(
                            TokioIo::new(Probed::new(
                                crate::zerocopy::SendfileStream::new(tcp),
                                link,
                            )),
                            svc,
                        )
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(
                            HANDSHAKE_TIMEOUT,
                            acceptor.accept(Probed::new(tcp, link)),
                        )
                        .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                metrics::counter!("provbox_tls_handshake_failures_total")
                                    .increment(1);
                                warn_limited!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                warn_limited!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                            .into_owned();
                        let _ = watcher.watch(conn).await;
                    });
                }
            }
        }
        drop(self.listener);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(grace) => tracing::info!(%proto, "grace period over; closing remaining connections"),
        }
    }
}

/// PUT into the upload area: 201 for a new file, 204 for a replaced one, 413 over
/// the cap (announced by Content-Length or found while reading), 403 for a refused
/// path. The body is streamed to a temporary file, so memory stays flat.
async fn put_upload<B>(
    st: &FileState,
    peer: SocketAddr,
    area: &UploadArea,
    req: http::Request<B>,
) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let raw_path = req.uri().path().to_string();
    let rel = percent_decode(&raw_path)
        .map(|p| p.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let result = if announced.is_some_and(|n| n > area.max()) {
        // Refused before reading: a client that sent `Expect: 100-continue` never sends it.
        Err(UploadError::TooLarge { max: area.max() })
    } else {
        let body = http_body_util::BodyDataStream::new(req.into_body());
        let reader = tokio_util::io::StreamReader::new(futures::TryStreamExt::map_err(body, |e| {
            std::io::Error::other(e.into())
        }));
        area.put(&rel, reader, true).await
    };
    let (status, outcome) = match &result {
        Ok(s) if s.replaced => (StatusCode::NO_CONTENT, Ok(s.bytes)),
        Ok(s) => (StatusCode::CREATED, Ok(s.bytes)),
        Err(e @ UploadError::TooLarge { .. }) => {
            (StatusCode::PAYLOAD_TOO_LARGE, Err(e.to_string()))
        }
        Err(UploadError::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => (
            StatusCode::FORBIDDEN,
            Err(format!("upload path refused: {e}")),
        ),
        Err(UploadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::CONFLICT, Err(e.to_string()))
        }
        Err(e) => {
            // A client that vanished mid-body lands here too; the disk is the other cause.
            warn_limited!(%peer, path = %raw_path, error = %e, "HTTP upload not stored");
            (StatusCode::INTERNAL_SERVER_ERROR, Err(e.to_string()))
        }
    };
    let text = match &outcome {
        Ok(n) => format!("stored {n} bytes\n"),
        Err(e) => format!("{e}\n"),
    };
    uploads::publish(&st.bus, st.proto, peer, &rel, user_agent, outcome);
    if status == StatusCode::NO_CONTENT {
        // 204 has no body (HTTP/2 clients treat one as a protocol error).
        return status.into_response();
    }
    (status, text).into_response()
}

/// The one handler: every path is a store path.
/// What every request on one connection shares.
struct Conn {
    peer: SocketAddr,
    /// `[access] allow` permits the client (decided once per connection).
    allowed: bool,
    /// The connection's live TCP figures, for its transfers' progress.
    link: Arc<LinkStats>,
    /// PUT goes to an upload area (for the `Allow` header of a 405).
    put: bool,
}

async fn serve_file<B>(st: &FileState, conn: &Conn, req: http::Request<B>) -> Response {
    let (peer, allowed) = (conn.peer, conn.allowed);
    let method = req.method().clone();
    if allowed && method != Method::GET && method != Method::HEAD {
        let (text, allow) = if conn.put {
            (
                "GET, HEAD, and PUT into the upload area\n",
                "GET, HEAD, PUT",
            )
        } else {
            (
                "provbox serves files read-only here: GET and HEAD (PUT needs [http] upload_dir)\n",
                "GET, HEAD",
            )
        };
        let mut r = (StatusCode::METHOD_NOT_ALLOWED, text).into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return r;
    }
    let headers = req.headers();
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let raw_path = req.uri().path();
    let refuse = |status: StatusCode, path: &str, reason: String| {
        metrics::counter!("provbox_requests_refused_total", "proto" => st.proto.as_str())
            .increment(1);
        st.bus.publish(EventKind::TransferRefused {
            proto: st.proto,
            peer,
            path: path.to_string(),
            reason: reason.clone(),
            user_agent: user_agent.clone(),
        });
        (status, format!("{reason}\n")).into_response()
    };
    if !allowed {
        metrics::counter!("provbox_access_denied_total", "proto" => st.proto.as_str()).increment(1);
        warn_limited!(%peer, path = %raw_path, "client not in [access] allow; refused");
        return refuse(
            StatusCode::FORBIDDEN,
            raw_path,
            "client address not in [access] allow".into(),
        );
    }
    let Some(path) = percent_decode(raw_path) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            raw_path,
            "malformed percent-encoding in the path".into(),
        );
    };
    let snap = match st.store.open(&path).await {
        Ok(s) => s,
        Err(e @ StoreError::Refused { .. }) => {
            warn_limited!(%peer, path = %raw_path, error = %e, "refused request");
            return refuse(StatusCode::FORBIDDEN, &path, e.to_string());
        }
        Err(StoreError::NotFound(_)) => {
            return refuse(
                StatusCode::NOT_FOUND,
                &path,
                format!("no such file: {path}"),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "store error");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                &path,
                "store error".into(),
            );
        }
    };
    respond(
        st,
        conn,
        &path,
        snap,
        headers,
        method == Method::HEAD,
        user_agent,
    )
}

fn respond(
    st: &FileState,
    conn: &Conn,
    path: &str,
    snap: Snapshot,
    headers: &HeaderMap,
    head: bool,
    user_agent: Option<String>,
) -> Response {
    let entry = &*snap.entry;
    let validators = st.validators(entry);
    let etag = validators.etag.to_str().unwrap_or_default();
    let mtime_secs = entry.mtime_ms / 1000;
    let base = |status: StatusCode| {
        let mut b = Response::builder()
            .status(status)
            .header(header::ETAG, validators.etag.clone())
            .header(header::LAST_MODIFIED, validators.last_modified.clone())
            .header(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if status != StatusCode::NOT_MODIFIED {
            b = b.header(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(&entry.path)),
            );
        }
        b
    };
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let date_secs = |v: &str| {
        httpdate::parse_http_date(v)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };

    // RFC 9110 §13.2.2 order: If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since, If-Range.
    if let Some(im) = get(header::IF_MATCH)
        && !etag_matches(im, etag)
    {
        return base(StatusCode::PRECONDITION_FAILED)
            .body(Body::empty())
            .unwrap_or_default();
    }
    if get(header::IF_MATCH).is_none()
        && let Some(t) = get(header::IF_UNMODIFIED_SINCE).and_then(date_secs)
        && mtime_secs > t
    {
        return base(StatusCode::PRECONDITION_FAILED)
            .body(Body::empty())
            .unwrap_or_default();
    }
    if let Some(inm) = get(header::IF_NONE_MATCH) {
        if etag_matches(inm, etag) {
            return base(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .unwrap_or_default();
        }
    } else if let Some(t) = get(header::IF_MODIFIED_SINCE).and_then(date_secs)
        && mtime_secs <= t
    {
        return base(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_default();
    }

    let size = entry.size;
    let range_allowed = match get(header::IF_RANGE) {
        None => true,
        Some(v) if v.starts_with('"') || v.starts_with("W/") => v == etag, // strong comparison
        Some(v) => date_secs(v).is_some_and(|t| t == mtime_secs),
    };
    let mut status = StatusCode::OK;
    let (mut offset, mut len) = (0, size);
    if let Some(r) = get(header::RANGE).filter(|_| range_allowed) {
        match http_range_header::parse_range_header(r).map(|p| p.validate(size)) {
            Ok(Ok(ranges)) if ranges.len() == 1 => {
                let (s, e) = (*ranges[0].start(), *ranges[0].end());
                offset = s;
                len = e - s + 1;
                status = StatusCode::PARTIAL_CONTENT;
            }
            // Several ranges: serving the whole file is allowed (RFC 9110 §14.2) and is
            // what a firmware client can always use.
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .header(header::ACCEPT_RANGES, "bytes")
                    .body(Body::empty())
                    .unwrap_or_default();
            }
            // A malformed Range header is ignored (RFC 9110 §14.2).
            Err(_) => {}
        }
    }
    let mut b = base(status);
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", offset, offset + len - 1, size),
        );
    }
    if head {
        return b
            .header(header::CONTENT_LENGTH, len)
            .body(Body::empty())
            .unwrap_or_default();
    }
    // No Content-Length header for a body: hyper writes it from the body's exact size
    // hint, without a header value to allocate and parse back per request.
    let mut transfer = Transfer::start(
        &st.bus,
        TransferStart {
            proto: st.proto,
            peer: conn.peer,
            path,
            entry: &snap.entry,
            offset,
            size: len,
            user_agent,
            tftp: None,
        },
    );
    transfer.set_link(conn.link.clone());
    let body = SnapshotBody {
        snap,
        pos: offset,
        end: offset + len,
        start: offset,
        transfer: Some(transfer),
    };
    b.body(Body::new(body)).unwrap_or_default()
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("");
    let is = |e: &str| ext.eq_ignore_ascii_case(e);
    if is("cfg") || is("txt") || is("ini") || is("conf") {
        "text/plain; charset=utf-8"
    } else if is("xml") {
        "application/xml"
    } else if is("json") {
        "application/json"
    } else if is("htm") || is("html") {
        "text/html; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// Decodes `%XX` once. The store's resolver then refuses anything that still looks
/// encoded (double encoding) or climbs out of the root.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// A response body slicing a byte range of a pinned snapshot (in memory, see
/// `provbox_storage::store`), reporting progress. Dropped before its end = the client
/// went away.
struct SnapshotBody {
    snap: Snapshot,
    pos: u64,
    end: u64,
    start: u64,
    transfer: Option<Transfer>,
}

impl http_body::Body for SnapshotBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.pos >= self.end {
            if let Some(t) = self.transfer.take() {
                t.finish();
            }
            return Poll::Ready(None);
        }
        let n = CHUNK.min(usize::try_from(self.end - self.pos).unwrap_or(CHUNK));
        let chunk = self.snap.slice(self.pos, n);
        if chunk.len() < n {
            let e = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "snapshot shorter than its index entry",
            );
            if let Some(t) = self.transfer.take() {
                t.abort(format!("read error: {e}"));
            }
            return Poll::Ready(Some(Err(e)));
        }
        self.pos += n as u64;
        // Count what is handed to hyper for sending; the previous chunk is on the wire.
        let sent = self.pos - self.start;
        if let Some(t) = self.transfer.as_mut() {
            t.progress(sent);
        }
        // hyper knows the length and will not poll again after the last byte: the
        // transfer is complete when its last chunk is handed over.
        if self.pos >= self.end
            && let Some(t) = self.transfer.take()
        {
            t.finish();
        }
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.end - self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_once() {
        assert_eq!(percent_decode("/a%20b.cfg").as_deref(), Some("/a b.cfg"));
        assert_eq!(
            percent_decode("/%252e%252e/x").as_deref(),
            Some("/%2e%2e/x")
        );
        assert_eq!(percent_decode("/bad%zz"), None);
        assert_eq!(percent_decode("/trunc%2"), None);
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"abc\", \"def\"", "\"def\""));
        assert!(etag_matches("*", "\"x\""));
        assert!(!etag_matches("\"abc\"", "\"abd\""));
    }
}
