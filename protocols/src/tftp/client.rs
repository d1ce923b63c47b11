//! A small async TFTP client (RRQ only): what the phone simulator and the tests use
//! to fetch files, probe headers (stop after N blocks with an ERROR, as a phone
//! checking an image's version does) and negotiate every option the server offers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::netascii;
use super::packet::{self, ErrorCode, Mode, Options, Packet, Request, ack_packet, error_packet};
use super::transfer::{self, Link, RecvEnd, RecvParams, Sink};

/// How to fetch.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// RFC 2348 blksize to ask for; `None` asks nothing (512).
    pub blksize: Option<u16>,
    /// RFC 7440 windowsize to ask for.
    pub windowsize: Option<u16>,
    /// Ask for the size (RFC 2349 `tsize 0`).
    pub tsize: bool,
    /// RFC 2349 timeout (seconds) to ask for.
    pub timeout: Option<u8>,
    /// Our own retransmission timer.
    pub retransmit: Duration,
    /// Retransmissions before giving up.
    pub retries: u32,
    pub mode: Mode,
    /// Source address (a simulated phone binds its leased address).
    pub bind_ip: Option<IpAddr>,
    /// Header probe: after this many blocks, send ERROR 0 and stop.
    pub stop_after_blocks: Option<u64>,
    /// Keep the bytes in [`FetchResult::data`].
    pub keep_data: bool,
    /// Compute [`FetchResult::sha256`]. The simulator turns it off: it checks each
    /// image with the phone's own checksum, and SHA-256 was a tenth of its CPU in a
    /// lock-step TFTP fleet.
    pub hash: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            blksize: None,
            windowsize: None,
            tsize: false,
            timeout: None,
            retransmit: Duration::from_secs(1),
            retries: 5,
            mode: Mode::Octet,
            bind_ip: None,
            stop_after_blocks: None,
            keep_data: true,
            hash: true,
        }
    }
}

/// What a fetch got.
#[derive(Debug, Clone)]
pub struct FetchResult {
    /// The bytes (after netascii translation), when `keep_data`.
    pub data: Option<Vec<u8>>,
    pub len: u64,
    /// Lowercase hex SHA-256 of the bytes, when [`ClientOptions::hash`] asked for it.
    pub sha256: Option<String>,
    /// The options the server's OACK granted; `None` when it sent no OACK.
    pub oack: Option<Options>,
    /// False when `stop_after_blocks` ended the transfer early.
    pub complete: bool,
    pub blocks: u64,
    pub blksize: u16,
    pub windowsize: u16,
    /// The server's transfer address (its TID).
    pub server_tid: SocketAddr,
}

/// Why a fetch failed. Each names the server and path.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot open a UDP socket on {bind}: {source}")]
    Bind {
        bind: IpAddr,
        source: std::io::Error,
    },
    #[error("tftp://{server}/{path}: the server answered ERROR {code}: {message}")]
    Server {
        server: SocketAddr,
        path: String,
        code: ErrorCode,
        message: String,
    },
    #[error("tftp://{server}/{path}: no answer after {tries} tries")]
    Timeout {
        server: SocketAddr,
        path: String,
        tries: u32,
    },
    #[error("tftp://{server}/{path}: {message}")]
    Protocol {
        server: SocketAddr,
        path: String,
        message: String,
    },
    #[error("tftp://{server}/{path}: socket error: {source}")]
    Io {
        server: SocketAddr,
        path: String,
        source: std::io::Error,
    },
}

/// Fetches `path` from `server`; `progress` is called with the bytes received so far.
pub async fn fetch(
    server: SocketAddr,
    path: &str,
    opts: ClientOptions,
    mut progress: impl FnMut(u64),
) -> Result<FetchResult, ClientError> {
    fetch_inner(server, path, opts, |_, len| progress(len)).await
}

/// Like [`fetch`], but hands each block's bytes (after netascii translation) to
/// `on_data` as it arrives, so a caller can stream a large file without holding it
/// (set `keep_data: false`). The bytes of a transfer that fails were already handed
/// over: the caller must discard them.
pub async fn fetch_streaming(
    server: SocketAddr,
    path: &str,
    opts: ClientOptions,
    mut on_data: impl FnMut(&[u8]),
) -> Result<FetchResult, ClientError> {
    fetch_inner(server, path, opts, |bytes, _| on_data(bytes)).await
}

async fn fetch_inner(
    server: SocketAddr,
    path: &str,
    opts: ClientOptions,
    mut progress: impl FnMut(&[u8], u64),
) -> Result<FetchResult, ClientError> {
    let io_err = |source| ClientError::Io {
        server,
        path: path.to_string(),
        source,
    };
    let proto = |message: String| ClientError::Protocol {
        server,
        path: path.to_string(),
        message,
    };
    let bind = opts.bind_ip.unwrap_or(if server.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let sock = UdpSocket::bind((bind, 0))
        .await
        .map_err(|source| ClientError::Bind { bind, source })?;
    let asked = Options {
        blksize: opts.blksize,
        timeout: opts.timeout,
        tsize: opts.tsize.then_some(0),
        windowsize: opts.windowsize,
    };
    let rrq = Packet::Rrq(Request {
        filename: path.to_string(),
        mode: opts.mode,
        options: asked.to_pairs(),
    })
    .encode();
    let mut buf = vec![0u8; 65536];

    // Until the server answers from its transfer address.
    sock.send_to(&rrq, server).await.map_err(io_err)?;
    let mut tries = 0;
    let (first, tid) = loop {
        match tokio::time::timeout(opts.retransmit, sock.recv_from(&mut buf)).await {
            Err(_) => {
                tries += 1;
                if tries > opts.retries {
                    return Err(ClientError::Timeout {
                        server,
                        path: path.to_string(),
                        tries,
                    });
                }
                sock.send_to(&rrq, server).await.map_err(io_err)?;
            }
            Ok(Err(e)) => return Err(io_err(e)),
            Ok(Ok((n, from))) if from.ip() == server.ip() => break (buf[..n].to_vec(), from),
            Ok(Ok(_)) => {} // not the server: ignore
        }
    };
    sock.connect(tid).await.map_err(io_err)?;
    let mut link = Link::Own(sock);

    let (oack, granted, pending) = match Packet::decode(&first) {
        Ok(Packet::Oack(pairs)) => {
            let g = Options::from_pairs(&pairs);
            let bad = (g.blksize.is_some() && asked.blksize.is_none_or(|b| g.blksize > Some(b)))
                || (g.windowsize.is_some()
                    && asked.windowsize.is_none_or(|w| g.windowsize > Some(w)))
                || (g.tsize.is_some() && asked.tsize.is_none())
                || (g.timeout.is_some() && g.timeout != asked.timeout);
            if bad {
                let _ = link
                    .send(&error_packet(
                        ErrorCode::OptionRefused,
                        "OACK grants what was not asked",
                    ))
                    .await;
                return Err(proto(format!(
                    "the OACK grants options that were not asked for: {pairs:?}"
                )));
            }
            (Some(g), g, None)
        }
        Ok(Packet::Data { block: 1, .. }) => (None, Options::default(), Some(first)),
        Ok(Packet::Error { code, message }) => {
            return Err(ClientError::Server {
                server,
                path: path.to_string(),
                code,
                message,
            });
        }
        Ok(other) => return Err(proto(format!("unexpected first reply {other:?}"))),
        Err(e) => return Err(proto(format!("malformed first reply: {e}"))),
    };
    let params = RecvParams {
        blksize: granted.blksize.unwrap_or(packet::DEFAULT_BLKSIZE),
        windowsize: granted.windowsize.unwrap_or(1),
        timeout: opts.retransmit,
        retries: opts.retries,
    };
    let bs = usize::from(params.blksize);
    let mut hasher = opts.hash.then(Sha256::new);
    let mut data = Vec::new();
    let mut len = 0u64;
    let mut blocks = 0u64;
    let mut decoder = netascii::Decoder::new();
    let mut scratch = Vec::new();
    let netascii = opts.mode != Mode::Octet;
    let keep = opts.keep_data;
    let stop_after = opts.stop_after_blocks;
    let mut sink = |block: &[u8]| {
        blocks += 1;
        let bytes = if netascii {
            scratch.clear();
            decoder.decode(block, &mut scratch);
            &scratch[..]
        } else {
            block
        };
        if let Some(h) = hasher.as_mut() {
            h.update(bytes);
        }
        len += bytes.len() as u64;
        if keep {
            data.extend_from_slice(bytes);
        }
        progress(bytes, len);
        match stop_after {
            Some(n) if blocks >= n && block.len() == bs => Sink::Stop(
                ErrorCode::NotDefined,
                format!("header probe: stopping after {n} blocks"),
            ),
            _ => Sink::Continue,
        }
    };
    let cancel = CancellationToken::new();
    let end = transfer::receive(
        &mut link,
        &params,
        ack_packet(0).to_vec(),
        oack.is_some(),
        pending,
        &mut sink,
        &cancel,
    )
    .await;
    let complete = match end {
        RecvEnd::Done { last, .. } => {
            // Answer a repeated final block for a while, in the background.
            let dally = opts.retransmit.min(Duration::from_secs(2));
            tokio::spawn(async move { transfer::dally(&mut link, last, dally).await });
            true
        }
        RecvEnd::Stopped => false,
        RecvEnd::PeerError { code, message } => {
            return Err(ClientError::Server {
                server,
                path: path.to_string(),
                code,
                message,
            });
        }
        RecvEnd::TimedOut => {
            return Err(ClientError::Timeout {
                server,
                path: path.to_string(),
                tries: opts.retries + 1,
            });
        }
        RecvEnd::PeerGone(e) => return Err(io_err(e)),
        RecvEnd::Protocol(m) => return Err(proto(m)),
        RecvEnd::Cancelled | RecvEnd::Superseded => return Err(proto("transfer cancelled".into())),
    };
    if complete && netascii {
        scratch.clear();
        decoder.finish(&mut scratch);
        if let Some(h) = hasher.as_mut() {
            h.update(&scratch);
        }
        len += scratch.len() as u64;
        if keep {
            data.extend_from_slice(&scratch);
        }
        if !scratch.is_empty() {
            progress(&scratch, len);
        }
    }
    Ok(FetchResult {
        data: keep.then_some(data),
        len,
        sha256: hasher.map(|h| hex::encode(h.finalize())),
        oack,
        complete,
        blocks,
        blksize: params.blksize,
        windowsize: params.windowsize,
        server_tid: tid,
    })
}
