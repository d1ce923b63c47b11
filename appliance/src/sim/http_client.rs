//! The phone's HTTP(S) client: hyper's HTTP/1.1 client connection over a TCP socket
//! bound to the phone's address, TLS through tokio-rustls (ring). GET only, the
//! phone's User-Agent, Basic auth from `user:pass@` in the URL, 301/302/303/307/308
//! followed (at most 5), `Range` for the header check or a resume (with `If-Range`),
//! and an early close: once enough bytes arrived the connection is dropped, as a phone
//! that only wanted the header would.

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Request as HttpRequest, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use super::fetch::{
    FetchError, Fetched, HeaderCheck, Pace, ReadMode, Request, Sink, Transport, connect_from,
    resolve,
};
use super::url::{ProvUrl, Scheme};

const MAX_REDIRECTS: usize = 5;

/// Aborts the connection task when the download ends, closing the socket.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// GETs `req.url` (following redirects) into `sink`.
pub async fn get(t: &Transport, req: &Request<'_>, sink: Sink<'_>) -> Result<Fetched, FetchError> {
    let mut url = req.url.clone();
    for _ in 0..=MAX_REDIRECTS {
        match get_once(t, req, &url, sink).await? {
            Step::Done(f) => return Ok(f),
            Step::Redirect(to) => {
                url = url.join(&to).map_err(|e| {
                    FetchError::Protocol(url.to_string(), format!("bad redirect: {e}"))
                })?;
                if !matches!(url.scheme, Scheme::Http | Scheme::Https) {
                    return Err(FetchError::Protocol(
                        url.to_string(),
                        "redirect to a non-HTTP URL".into(),
                    ));
                }
            }
        }
    }
    Err(FetchError::Protocol(
        req.url.to_string(),
        format!("more than {MAX_REDIRECTS} redirects"),
    ))
}

enum Step {
    Done(Fetched),
    Redirect(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn get_once(
    t: &Transport,
    req: &Request<'_>,
    url: &ProvUrl,
    sink: Sink<'_>,
) -> Result<Step, FetchError> {
    let u = url.to_string();
    let port = url.port_or(t.tftp_port);
    let addr = resolve(url, port).await?;
    let tcp = connect_from(req.bind_ip, addr, t.connect_timeout)
        .await
        .map_err(|e| FetchError::Connect(u.clone(), e.to_string()))?;
    let io: Box<dyn Io> = if url.scheme == Scheme::Https {
        let name = ServerName::try_from(url.host.clone()).map_err(|e| {
            FetchError::Tls(u.clone(), format!("bad server name `{}`: {e}", url.host))
        })?;
        let connector = tokio_rustls::TlsConnector::from(t.tls.clone());
        let tls = tokio::time::timeout(t.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| FetchError::Timeout(u.clone(), "in the TLS handshake".into()))?
            .map_err(|e| FetchError::Tls(u.clone(), e.to_string()))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    // A fixed 256 KiB read buffer, as the FTP client reads: hyper's adaptive buffer grows
    // to 408 KiB per connection, which a fleet of hundreds of phones multiplies.
    let (mut sender, conn) = http1::Builder::new()
        .read_buf_exact_size(Some(256 * 1024))
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| FetchError::Protocol(u.clone(), format!("HTTP handshake: {e}")))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));

    let mut rq = HttpRequest::get(url.path.as_str())
        .header(header::HOST, url.host_header())
        .header(header::USER_AGENT, req.user_agent)
        .header(header::ACCEPT, "*/*");
    if let Some(user) = &url.user {
        let cred = format!("{user}:{}", url.password.as_deref().unwrap_or(""));
        let b64 = base64::engine::general_purpose::STANDARD.encode(cred);
        rq = rq.header(header::AUTHORIZATION, format!("Basic {b64}"));
    }
    let (limit, want_offset) = match &req.mode {
        ReadMode::Header { bytes, how, .. } => {
            if *how == HeaderCheck::Range {
                rq = rq.header(
                    header::RANGE,
                    format!("bytes=0-{}", bytes.saturating_sub(1)),
                );
            }
            (Some(*bytes), 0)
        }
        ReadMode::Full { offset, validator } => {
            if *offset > 0 {
                rq = rq.header(header::RANGE, format!("bytes={offset}-"));
                if let Some(v) = validator {
                    rq = rq.header(header::IF_RANGE, v.as_str());
                }
            }
            (None, *offset)
        }
    };
    let rq = rq
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Protocol(u.clone(), e.to_string()))?;
    let resp = tokio::time::timeout(t.read_timeout, sender.send_request(rq))
        .await
        .map_err(|_| FetchError::Timeout(u.clone(), "waiting for the response".into()))?
        .map_err(|e| FetchError::Lost(u.clone(), 0, e.to_string()))?;

    let status = resp.status();
    let hv = |h: header::HeaderName| {
        resp.headers()
            .get(h)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    match status {
        StatusCode::MOVED_PERMANENTLY
        | StatusCode::FOUND
        | StatusCode::SEE_OTHER
        | StatusCode::TEMPORARY_REDIRECT
        | StatusCode::PERMANENT_REDIRECT => {
            let to = hv(header::LOCATION).ok_or_else(|| {
                FetchError::Protocol(u.clone(), format!("{status} without a Location"))
            })?;
            return Ok(Step::Redirect(to));
        }
        StatusCode::NOT_FOUND | StatusCode::GONE => return Err(FetchError::NotFound(u)),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(FetchError::Denied(u)),
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => {}
        StatusCode::SERVICE_UNAVAILABLE => {
            return Err(FetchError::Busy(u, format!("HTTP {status}")));
        }
        s => return Err(FetchError::Protocol(u, format!("HTTP {s}"))),
    }
    let validator = hv(header::ETAG).or_else(|| hv(header::LAST_MODIFIED));
    let content_length = hv(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    let (start, total) = if status == StatusCode::PARTIAL_CONTENT {
        // Content-Range: bytes a-b/total
        let cr = hv(header::CONTENT_RANGE).unwrap_or_default();
        let (range, total) = cr
            .trim_start_matches("bytes ")
            .split_once('/')
            .unwrap_or(("", ""));
        let start = range
            .split('-')
            .next()
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(0);
        (start, total.parse::<u64>().ok())
    } else {
        (0, content_length)
    };
    if want_offset > 0 && start != want_offset {
        // A 200 (file changed, or Range unsupported) or a different range: the bytes
        // would not continue what the phone has.
        return Err(FetchError::NoResume(u));
    }

    let mut body = resp.into_body();
    let mut pace = Pace::new(req.rate);
    let mut got = 0u64;
    loop {
        if let Some(l) = limit
            && got >= l
        {
            // Early close: dropping the body and the connection resets it.
            break;
        }
        let frame = match tokio::time::timeout(t.read_timeout, body.frame()).await {
            Err(_) => return Err(FetchError::Timeout(u, format!("after {got} bytes"))),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(FetchError::Lost(u, got, e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            let take = match limit {
                Some(l) => data.len().min((l - got) as usize),
                None => data.len(),
            };
            sink(&data[..take]);
            got += take as u64;
            pace.after(take).await;
        }
    }
    if limit.is_none()
        && let Some(cl) = content_length
        && got < cl
    {
        return Err(FetchError::Lost(u, got, format!("expected {cl} bytes")));
    }
    Ok(Step::Done(Fetched {
        bytes: got,
        total,
        validator,
    }))
}
