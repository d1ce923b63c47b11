//! One file fetch over any of the four protocols, as a phone does it: bound to the
//! phone's own address, with its User-Agent, either a header check (the first bytes
//! only: HTTP Range, an early close, or a TFTP ERROR after two blocks) or a full
//! download (resumable where the protocol allows it), optionally paced to a slow link.
//! The bytes go to a sink; nothing here keeps a whole file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::url::{ProvUrl, Scheme};
use super::{ftp_client, http_client, tftp};

/// How a phone reads the start of an image to learn its version (phone-behaviour.md §5;
/// the real mechanism is not public, so all are offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderCheck {
    /// HTTP `Range: bytes=0-N`; other protocols fall back to an early close.
    Range,
    /// Start a normal download and close the connection after N bytes.
    #[default]
    EarlyClose,
}

/// What to read.
#[derive(Debug, Clone)]
pub enum ReadMode {
    /// The first `bytes` bytes only. Over TFTP: stop after `tftp_blocks` blocks with an
    /// ERROR (code 0).
    Header {
        bytes: u64,
        how: HeaderCheck,
        tftp_blocks: u16,
    },
    /// The whole file, starting at `offset` (a resume; `validator` is the ETag or
    /// Last-Modified seen at the start, for `If-Range`).
    Full {
        offset: u64,
        validator: Option<String>,
    },
}

/// Why a fetch failed. The phone decides from the kind whether to retry.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: access denied")]
    Denied(String),
    #[error("{0}: cannot connect: {1}")]
    Connect(String, String),
    #[error("{0}: timed out {1}")]
    Timeout(String, String),
    #[error("{0}: {1}")]
    Protocol(String, String),
    #[error("{0}: TLS: {1}")]
    Tls(String, String),
    #[error("{0}: connection lost after {1} bytes: {2}")]
    Lost(String, u64, String),
    #[error("{0}: the server did not resume at the offset asked for")]
    NoResume(String),
    /// The server is busy for now (FTP 421, HTTP 503): a phone tries again later.
    #[error("{0}: server busy: {1}")]
    Busy(String, String),
}

impl FetchError {
    /// Worth another attempt (the phone's per-file retries)?
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            FetchError::Connect(..)
                | FetchError::Timeout(..)
                | FetchError::Lost(..)
                | FetchError::NoResume(..)
                | FetchError::Busy(..)
        )
    }
}

/// The result of a fetch that did not fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes delivered to the sink by this fetch.
    pub bytes: u64,
    /// The file size, when the server said (Content-Length/Range, SIZE, tsize).
    pub total: Option<u64>,
    /// ETag or Last-Modified, for resuming with `If-Range`.
    pub validator: Option<String>,
}

/// TFTP client settings (phone-behaviour.md §4: blksize 1428 with tsize by default,
/// falling back to 512 without an OACK).
#[derive(Debug, Clone)]
pub struct TftpSettings {
    pub blksize: u16,
    pub windowsize: u16,
    pub tsize: bool,
    pub timeout: Duration,
    pub retries: u32,
}

impl Default for TftpSettings {
    fn default() -> Self {
        TftpSettings {
            blksize: 1428,
            windowsize: 1,
            tsize: true,
            timeout: Duration::from_secs(5),
            retries: 5,
        }
    }
}

/// What every phone of a fleet shares for transfers.
#[derive(Debug, Clone)]
pub struct Transport {
    pub tls: Arc<rustls::ClientConfig>,
    /// Port for TFTP URLs that name none.
    pub tftp_port: u16,
    pub tftp: TftpSettings,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a transfer.
    pub read_timeout: Duration,
}

impl Transport {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Transport {
            tls,
            tftp_port: 69,
            tftp: TftpSettings::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub url: &'a ProvUrl,
    /// The phone's leased address; `None` lets the kernel choose.
    pub bind_ip: Option<Ipv4Addr>,
    pub user_agent: &'a str,
    pub mode: ReadMode,
    /// Slow-link pacing, bytes per second.
    pub rate: Option<u64>,
}

/// Receives the bytes, in order.
pub type Sink<'a> = &'a mut (dyn FnMut(&[u8]) + Send);

/// Fetches `req.url` into `sink`.
pub async fn fetch(
    t: &Transport,
    req: &Request<'_>,
    sink: Sink<'_>,
) -> Result<Fetched, FetchError> {
    match req.url.scheme {
        Scheme::Http | Scheme::Https => http_client::get(t, req, sink).await,
        Scheme::Ftp => ftp_client::get(t, req, sink).await,
        Scheme::Tftp => tftp::get(t, req, sink).await,
    }
}

/// Paces a transfer to a byte rate by sleeping once the bytes run ahead of the clock.
/// Reading slowly makes TCP flow control slow the sender, like a slow link.
#[derive(Debug)]
pub struct Pace {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
    yielded: u64,
}

/// An unpaced download gives the other phones a turn this often (bytes).
const YIELD_EVERY: u64 = 1 << 20;

impl Pace {
    pub fn new(rate: Option<u64>) -> Self {
        Pace {
            rate: rate.filter(|r| *r > 0),
            start: Instant::now(),
            bytes: 0,
            yielded: 0,
        }
    }
    pub async fn after(&mut self, n: usize) {
        self.bytes += n as u64;
        let Some(rate) = self.rate else {
            // Hundreds of phones share a few threads here. A download whose data is
            // always ready would otherwise run a whole tokio coop budget of reads
            // (tens of MiB) per turn, and a phone waiting for its DHCP OFFER would
            // wait behind hundreds of such turns: half a second per exchange, where a
            // real phone, being its own device, takes milliseconds.
            if self.bytes - self.yielded >= YIELD_EVERY {
                self.yielded = self.bytes;
                tokio::task::yield_now().await;
            }
            return;
        };
        let due = self.start + Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Resolves `host:port` to an IPv4 socket address (phones here are IPv4).
pub async fn resolve(url: &ProvUrl, port: u16) -> Result<SocketAddr, FetchError> {
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs = tokio::net::lookup_host((url.host.as_str(), port))
        .await
        .map_err(|e| {
            FetchError::Connect(
                url.to_string(),
                format!("cannot resolve host `{}`: {e}", url.host),
            )
        })?;
    let mut first = None;
    for a in addrs {
        if a.is_ipv4() {
            return Ok(a);
        }
        first.get_or_insert(a);
    }
    first.ok_or_else(|| {
        FetchError::Connect(
            url.to_string(),
            format!("host `{}` has no address", url.host),
        )
    })
}

/// A TCP connection from `bind_ip` (port chosen by the kernel) to `to`.
pub async fn connect_from(
    bind_ip: Option<Ipv4Addr>,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let sock = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let (Some(ip), true) = (bind_ip, to.is_ipv4()) {
        sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    match tokio::time::timeout(timeout, sock.connect(to)).await {
        Ok(r) => {
            let s = r?;
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    }
}

/// Accepts any server certificate (a lab appliance with a self-signed certificate)
/// but still checks the handshake signatures, so the TLS exchange itself is real.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Errors building the TLS client configuration.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    #[error("reading CA file {0}: {1}")]
    Read(String, String),
    #[error("CA file {0} holds no usable certificate (expected PEM `CERTIFICATE` blocks)")]
    Empty(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The phones' TLS client configuration (ring provider only). Without `ca` the server
/// certificate is not verified; with it, the server must chain to a certificate in
/// that PEM file.
pub fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut cfg = match ca {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
        Some(path) => {
            let name = path.display().to_string();
            let mut roots = rustls::RootCertStore::empty();
            let iter = CertificateDer::pem_file_iter(path)
                .map_err(|e| TlsSetupError::Read(name.clone(), e.to_string()))?;
            for cert in iter {
                let cert = cert.map_err(|e| TlsSetupError::Read(name.clone(), e.to_string()))?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(TlsSetupError::Empty(name));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
