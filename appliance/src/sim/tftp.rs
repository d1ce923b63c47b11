//! TFTP for the simulated phone, through the shared client in
//! `provbox_protocols::tftp::client` (one TFTP codec in the project).
//!
//! Until that client is merged into this branch, TFTP fetches fail with a clear error.

use super::fetch::{FetchError, Fetched, Request, Sink, Transport};

/// Fetches `req.url` (a `tftp://` URL) into `sink`.
pub async fn get(
    _t: &Transport,
    req: &Request<'_>,
    _sink: Sink<'_>,
) -> Result<Fetched, FetchError> {
    Err(FetchError::Protocol(
        req.url.to_string(),
        "TFTP client not available in this build yet".into(),
    ))
}
