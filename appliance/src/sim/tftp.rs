//! TFTP for the simulated phone, through the project's one TFTP client
//! (`provbox_protocols::tftp::client`). The phone asks for blksize 1428 and tsize by
//! default (the client falls back to 512-byte blocks when the server sends no OACK),
//! binds its leased address, and for the header check stops after N blocks with an
//! ERROR (code 0).
//!
//! The bytes reach the sink block by block as they arrive (nothing holds the whole
//! file, so a fleet of large images fits in memory). Limit of the shared client as used
//! here: a slow link cannot be paced (ACK timing is inside the client).

use std::time::Duration;

use provbox_protocols::tftp::client::{self, ClientError, ClientOptions};
use provbox_protocols::tftp::packet::ErrorCode;

use super::fetch::{FetchError, Fetched, ReadMode, Request, Sink, Transport, resolve};

/// Fetches `req.url` (a `tftp://` URL) into `sink`.
pub async fn get(t: &Transport, req: &Request<'_>, sink: Sink<'_>) -> Result<Fetched, FetchError> {
    let url = req.url;
    let u = url.to_string();
    let server = resolve(url, url.port_or(t.tftp_port)).await?;
    // The header check reads whole blocks (all of them reach the sink, so the byte
    // counts are what crossed the wire); a full read always starts at block 1 (TFTP
    // cannot resume).
    let stop_after = match &req.mode {
        ReadMode::Header { tftp_blocks, .. } => Some(u64::from(*tftp_blocks)),
        ReadMode::Full { .. } => None,
    };
    let opts = ClientOptions {
        blksize: Some(t.tftp.blksize),
        windowsize: (t.tftp.windowsize > 1).then_some(t.tftp.windowsize),
        tsize: t.tftp.tsize,
        timeout: None,
        retransmit: t.tftp.timeout.max(Duration::from_millis(100)),
        retries: t.tftp.retries,
        bind_ip: req.bind_ip.map(Into::into),
        stop_after_blocks: stop_after,
        keep_data: false,
        hash: false,
        ..ClientOptions::default()
    };
    // The TFTP path is the URL path without its leading slash (servers chroot anyway).
    let path = url.path.trim_start_matches('/');
    let res = client::fetch_streaming(server, path, opts, |d| sink(d))
        .await
        .map_err(|e| map_err(&u, e))?;
    let total = res
        .oack
        .as_ref()
        .and_then(|o| o.tsize)
        .or(res.complete.then_some(res.len));
    Ok(Fetched {
        bytes: res.len,
        total,
        validator: None,
    })
}

fn map_err(url: &str, e: ClientError) -> FetchError {
    match e {
        ClientError::Server {
            code: ErrorCode::FileNotFound,
            ..
        } => FetchError::NotFound(url.to_string()),
        ClientError::Server {
            code: ErrorCode::AccessViolation,
            ..
        } => FetchError::Denied(url.to_string()),
        ClientError::Server { code, message, .. } => {
            FetchError::Protocol(url.to_string(), format!("TFTP ERROR {code:?}: {message}"))
        }
        ClientError::Timeout { tries, .. } => {
            FetchError::Timeout(url.to_string(), format!("after {tries} tries"))
        }
        ClientError::Bind { bind, source } => {
            FetchError::Connect(url.to_string(), format!("bind {bind}: {source}"))
        }
        ClientError::Io { source, .. } => FetchError::Lost(url.to_string(), 0, source.to_string()),
        ClientError::Protocol { message, .. } => FetchError::Protocol(url.to_string(), message),
    }
}
