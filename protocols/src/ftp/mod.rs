//! The FTP/FTPS server: libunftp over the store, read-only unless a user has an upload
//! area.
//!
//! provbox owns the listening socket and the accept loop, and gives each control
//! connection to its own libunftp `Server` (`Server::service`). That is what lets the
//! server bind port 0 and report it, cap connections, close every session on shutdown,
//! and know each session's client address (see `auth`) — libunftp's own `listen`
//! does none of these.
//!
//! - `backend`: the `StorageBackend` over the store (and the upload area);
//! - `auth`: logins and the per-session user carrying the client address;
//! - `passive`: passive-port allocation over the configured range;
//! - `upload`: the confined, size-capped upload area.
//!
//! Explicit FTPS (`AUTH TLS`, then `PBSZ 0`/`PROT P` for the data channel) uses the
//! HTTPS certificate. Implicit FTPS (port 990) is not offered.

mod auth;
mod backend;
mod passive;
mod upload;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use libunftp::ServerBuilder;
use libunftp::options::PassiveHost;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use provbox_storage::Store;

pub use auth::FtpUser;
pub use backend::Meta;

use crate::events::{EventBus, EventKind, Proto};
use auth::{Accounts, SessionAuth};
use backend::StoreBackend;
use passive::PassivePorts;
use upload::UploadArea;

const GREETING: &str = "provbox FTP server ready";

/// How long shutdown waits for sessions to close before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// FTP server errors; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum FtpError {
    #[error("cannot listen for FTP on {addr}: {source}; free the port or change ftp.bind")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("`{field}`: {message}")]
    Config { field: String, message: String },
    #[error(
        "cannot use the FTP upload directory {path}: {source}; create it or fix ftp.upload_dir"
    )]
    UploadDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the FTPS TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot set up the FTP listener on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Builds the rustls configuration FTPS uses from the HTTPS certificate and key:
/// ring provider, TLS 1.2 and 1.3, no client certificates, no ALPN.
pub fn tls_config(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, FtpError> {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// What every session shares.
#[derive(Debug)]
struct Shared {
    store: Store,
    bus: EventBus,
    accounts: Arc<Accounts>,
    tls: Option<Arc<rustls::ServerConfig>>,
    passive: PassivePorts,
    passive_host: PassiveHost,
    idle_secs: u64,
    max_connections: usize,
    upload: Option<Arc<UploadArea>>,
    /// Cancelled by `run`'s shutdown token; stops transfers in flight.
    stop: CancellationToken,
}

/// A bound, not yet running, FTP server.
#[derive(Debug)]
pub struct FtpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    access: provbox_config::AccessConfig,
}

impl FtpServer {
    /// Binds the control port (port 0 picks a free one; see [`FtpServer::local_addr`]).
    /// `tls` is required when `cfg.ftps` is set: the HTTPS server configuration is
    /// reused, with its ALPN list cleared (an FTP client offering none must not be
    /// refused for not speaking h2).
    pub async fn bind(
        cfg: &provbox_config::FtpConfig,
        store: Store,
        bus: EventBus,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<FtpServer, FtpError> {
        let passive_host = match cfg.passive_address {
            None => PassiveHost::FromConnection,
            Some(IpAddr::V4(ip)) => PassiveHost::Ip(ip),
            Some(IpAddr::V6(ip)) => {
                return Err(FtpError::Config {
                    field: "ftp.passive_address".into(),
                    message: format!(
                        "{ip} is IPv6, but PASV can only advertise an IPv4 address; give an IPv4 address (EPSV needs none)"
                    ),
                });
            }
        };
        let tls = match (cfg.ftps, tls) {
            (false, _) => None,
            (true, None) => {
                return Err(FtpError::Config {
                    field: "ftp.ftps".into(),
                    message: "FTPS is on but no TLS configuration was given; set ftps = false or provide the HTTPS certificate".into(),
                });
            }
            (true, Some(t)) => {
                let mut t = (*t).clone();
                t.alpn_protocols.clear();
                Some(Arc::new(t))
            }
        };
        let upload = match &cfg.upload_dir {
            Some(dir) => Some(Arc::new(UploadArea::open(dir, cfg.upload_max)?)),
            None => None,
        };
        let accounts = Arc::new(Accounts::from_config(cfg, upload.is_some())?);
        let listener = crate::listen::tcp(cfg.bind).map_err(|source| FtpError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| FtpError::Io {
            addr: cfg.bind,
            source,
        })?;
        let shared = Shared {
            store,
            bus,
            accounts,
            tls,
            passive: PassivePorts::new(cfg.passive_ports),
            passive_host,
            idle_secs: cfg.idle_timeout.get().as_secs().max(1),
            max_connections: cfg.max_connections.max(1),
            upload,
            stop: CancellationToken::new(),
        };
        tracing::info!(
            addr = %local_addr,
            passive = %cfg.passive_ports,
            ftps = shared.tls.is_some(),
            anonymous = cfg.anonymous,
            users = cfg.users.len(),
            upload = ?cfg.upload_dir,
            "ftp server listening"
        );
        Ok(FtpServer {
            listener,
            local_addr,
            access: provbox_config::AccessConfig::default(),
            shared: Arc::new(shared),
        })
    }

    /// The bound control address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve only the clients `access` permits; others get 421 at connect.
    pub fn with_access(mut self, access: provbox_config::AccessConfig) -> Self {
        self.access = access;
        self
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, closes every
    /// control connection, stops transfers in flight, and waits (briefly) for the
    /// sessions to end.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), FtpError> {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.shared.max_connections));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) if !self.access.permits(peer.ip()) => {
                        metrics::counter!("provbox_access_denied_total", "proto" => "ftp").increment(1);
                        crate::warn_limited!(peer = %peer, "ftp: client not in [access] allow; refused");
                        self.shared.bus.publish(EventKind::TransferRefused {
                            proto: Proto::Ftp,
                            peer,
                            // No file asked yet: the refusal is of the connection.
                            path: "(connect)".to_string(),
                            reason: "client address not in [access] allow".to_string(),
                            user_agent: None,
                        });
                        tracker.spawn(refuse_with(stream, "421 This address may not use this server.\r\n"));
                    }
                    Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tracker.spawn(session(self.shared.clone(), stream, peer, permit));
                        }
                        Err(_) => {
                            metrics::counter!("provbox_ftp_sessions_refused_total", "reason" => "max_connections").increment(1);
                            crate::warn_limited!(peer = %peer, max = self.shared.max_connections, "ftp: connection limit reached; refusing");
                            tracker.spawn(refuse_with(stream, "421 Too many connections; try again later.\r\n"));
                        }
                    },
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        crate::warn_limited!(error = %e, "ftp: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(self.listener);
        self.shared.stop.cancel();
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = tracker.len(),
                "ftp: sessions still open after the shutdown grace period"
            );
        }
        tracing::info!(addr = %self.local_addr, "ftp server stopped");
        Ok(())
    }
}

async fn refuse_with(mut stream: TcpStream, reply: &'static str) {
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(reply.as_bytes())).await;
}

fn build_server(
    shared: &Shared,
    peer: SocketAddr,
) -> Result<libunftp::Server<StoreBackend, FtpUser>, libunftp::ServerError> {
    // Plain data connections send mapped image slices with sendfile (set once per
    // process; later calls are no-ops).
    libunftp::data_stream::set_plain_writer(|socket| {
        Box::new(crate::zerocopy::SendfileStream::new(socket))
    });
    let auth = Arc::new(SessionAuth::new(shared.accounts.clone(), peer));
    let backend = StoreBackend::new(
        shared.store.clone(),
        shared.bus.clone(),
        shared.upload.clone(),
        shared.stop.clone(),
    );
    let mut builder = ServerBuilder::<StoreBackend, FtpUser>::with_user_detail_provider(
        Box::new(move || backend.clone()),
        auth.clone(),
    )
    .authenticator(auth)
    .greeting(GREETING)
    .passive_ports(shared.passive.range())
    .passive_host(shared.passive_host.clone())
    .binder(shared.passive.clone())
    .idle_session_timeout(shared.idle_secs);
    if let Some(tls) = &shared.tls {
        builder = builder.ftps_manual::<std::path::PathBuf>(tls.clone());
    }
    builder.build()
}

/// One control connection, from accept to close.
async fn session(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    metrics::counter!("provbox_ftp_sessions_total").increment(1);
    metrics::gauge!("provbox_ftp_sessions_active").increment(1.0);
    let _active = ActiveGuard;
    let _ = stream.set_nodelay(true);
    // Keep a second handle on the socket: libunftp owns the stream, and shutting the
    // socket down is how a session is ended from outside (shutdown).
    let (stream, closer) = match split_closer(stream) {
        Ok(v) => v,
        Err(e) => {
            crate::warn_limited!(peer = %peer, error = %e, "ftp: cannot set up the session socket");
            return;
        }
    };
    let server = match build_server(&shared, peer) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(peer = %peer, error = %e, "ftp: cannot build the session");
            return;
        }
    };
    let service = server.service(stream);
    tokio::pin!(service);
    tokio::select! {
        _ = &mut service => {}
        _ = shared.stop.cancelled() => {
            let _ = closer.shutdown(std::net::Shutdown::Both);
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut service).await;
        }
    }
}

/// Decrements the active-session gauge however the session ends.
struct ActiveGuard;

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        metrics::gauge!("provbox_ftp_sessions_active").decrement(1.0);
    }
}

fn split_closer(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let closer = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, closer))
}
