//! Start-up and shutdown of everything: the store, TLS material, every enabled server,
//! the tracker and the API. `provbox serve` and `provbox demo` use it, and so can other
//! projects' integration tests:
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! // With `loopback()` and no `.state(…)`, leases, journal and TLS key go to a fresh
//! // temporary directory that lives as long as the appliance.
//! let app = provbox::Appliance::builder().store(dir.path()).loopback().start().await?;
//! println!("HTTP on {:?}", app.addrs().http);
//! app.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Order matters: file servers bind first so that DHCP knows their (possibly
//! ephemeral) ports for `{http_port}`-style placeholders; every bind happens before any
//! server runs, so a port clash fails start-up as a whole instead of half-starting.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use provbox_config::{Config, TemplateVars};
use provbox_protocols::dhcp::DhcpServer;
use provbox_protocols::events::{EventBus, EventKind, StoreChange};
use provbox_protocols::http::HttpServer;
use provbox_protocols::tftp::TftpServer;
use provbox_storage::leases::LeaseDb;
use provbox_storage::{Store, StoreEvent, StoreOptions};

use crate::tracker::{self, PhoneState, TrackerHandle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where each enabled service listens.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Addrs {
    pub dhcp: Option<SocketAddr>,
    pub tftp: Option<SocketAddr>,
    pub ftp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
}

/// A running appliance.
pub struct Appliance {
    addrs: Addrs,
    bus: EventBus,
    store: Store,
    tracker: TrackerHandle,
    leases: Option<LeaseDb>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    /// Stops the tracker, once the servers have finished (see [`Appliance::shutdown`]).
    tracker_stop: CancellationToken,
    tasks: TaskTracker,
    /// The temporary state directory a `loopback()` fixture got; removed when the
    /// appliance is dropped (after `shutdown` has closed every file in it).
    _temp_state: Option<tempfile::TempDir>,
}

/// Builds an [`Appliance`].
#[derive(Debug, Clone)]
pub struct ApplianceBuilder {
    config: Config,
    grace: Duration,
    loopback: bool,
    /// `.state(…)` was called.
    state_set: bool,
}

impl Default for ApplianceBuilder {
    fn default() -> Self {
        Self {
            config: Config::default(),
            grace: Duration::from_secs(10),
            loopback: false,
            state_set: false,
        }
    }
}

/// The Prometheus recorder is process-global; install it once.
static METRICS: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle (None if another recorder was installed first).
pub fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    METRICS
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        })
        .clone()
}

impl ApplianceBuilder {
    /// Starts from a whole config.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
    pub fn store(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.store.root = dir.into();
        self
    }
    /// Where leases, the journal, the TLS key and blobs are kept. With `loopback()`
    /// and no state directory (here or in `config`), a temporary one is used.
    pub fn state(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state.dir = dir.into();
        self.state_set = true;
        self
    }
    /// How long in-flight downloads may run on after shutdown is asked for.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
    /// Every service on 127.0.0.1 with an ephemeral port, DHCP in relay mode with a
    /// pool in 127.77.0.0/16: no root needed, and tests can run side by side. Unless a
    /// state directory is given, state goes to a temporary directory: the default
    /// `./state` would be shared by every fixture started from the same directory,
    /// and a journal replay would bring back another test's phones.
    pub fn loopback(mut self) -> Self {
        self.loopback = true;
        let lo = |_: SocketAddr| SocketAddr::from(([127, 0, 0, 1], 0));
        let c = &mut self.config;
        c.dhcp.bind = lo(c.dhcp.bind);
        c.dhcp.server_ip = Some(Ipv4Addr::LOCALHOST);
        c.dhcp.interface = None;
        if c.dhcp.pool.is_none() {
            c.dhcp.subnet = "127.77.0.0/16".parse().ok();
            c.dhcp.pool = "127.77.0.10-127.77.3.250".parse().ok();
            c.dhcp.router = Some(Ipv4Addr::new(127, 77, 0, 1));
        }
        c.tftp.bind = lo(c.tftp.bind);
        c.ftp.bind = lo(c.ftp.bind);
        c.http.bind = lo(c.http.bind);
        c.https.bind = lo(c.https.bind);
        c.api.bind = lo(c.api.bind);
        c.api.token = None;
        // Passive FTP needs a range, not port 0: pick a random block to keep parallel
        // fixtures apart.
        let first = 40000 + 100 * rand::random_range(0..190u16);
        c.ftp.passive_ports = provbox_config::PortRange {
            first,
            last: first + 99,
        };
        self.grace = Duration::from_secs(1);
        self
    }
    /// Applies a change to the config before start.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    pub async fn start(mut self) -> anyhow::Result<Appliance> {
        let temp_state = if self.loopback
            && !self.state_set
            && self.config.state.dir == Config::default().state.dir
        {
            let dir = tempfile::Builder::new()
                .prefix("provbox-state.")
                .tempdir()
                .context("cannot create a temporary state directory for the loopback appliance; set one with .state(dir)")?;
            self.config.state.dir = dir.path().to_path_buf();
            Some(dir)
        } else {
            None
        };
        let mut app = Appliance::start(self.config, self.grace).await?;
        app._temp_state = temp_state;
        Ok(app)
    }
}

impl Appliance {
    pub fn builder() -> ApplianceBuilder {
        ApplianceBuilder::default()
    }

    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Where this appliance keeps its state (`<state>/tls/cert.pem` is the HTTPS
    /// certificate a test client should trust).
    pub fn state_dir(&self) -> &std::path::Path {
        &self.config.state.dir
    }
    pub fn tracker(&self) -> &TrackerHandle {
        &self.tracker
    }
    /// The lease database, when DHCP runs.
    pub fn leases(&self) -> Option<&LeaseDb> {
        self.leases.as_ref()
    }

    /// Forgets a device (its row, timeline and receipt; its lease stays), as
    /// `DELETE /api/v1/devices/{key}` does: a test that re-runs a phone starts clean.
    /// False when no such device is known.
    pub async fn forget(&self, mac: &str) -> bool {
        self.tracker
            .forget(&self.bus, mac, Duration::from_secs(5))
            .await
            .is_some()
    }

    /// Waits until the phone with this MAC (any spelling) reaches `state`.
    pub async fn wait_for(
        &self,
        mac: &str,
        state: PhoneState,
        timeout: Duration,
    ) -> anyhow::Result<tracker::DeviceView> {
        self.tracker
            .wait_for(mac, state, timeout)
            .await
            .with_context(|| format!("phone {mac} did not reach {state:?} within {timeout:?}"))
    }

    async fn start(config: Config, grace: Duration) -> anyhow::Result<Appliance> {
        // ring is the only provider compiled in; installing it also makes a stray
        // default-provider lookup deterministic.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = metrics_handle();
        let config = Arc::new(config);
        let state_dir = config.state.dir.clone();
        std::fs::create_dir_all(&state_dir).with_context(|| {
            format!(
                "cannot create the state directory {}; set [state] dir to a writable place",
                state_dir.display()
            )
        })?;

        let bus = EventBus::default();
        let store = Store::start(StoreOptions {
            root: config.store.root.clone(),
            state_dir: state_dir.join("store"),
            poll: config.store.poll,
            poll_interval: config.store.poll_interval.get(),
            settle: config.store.settle.get(),
            rescan_interval: config.store.rescan_interval.get(),
        })
        .await
        .with_context(|| format!("cannot open the store {}", config.store.root.display()))?;
        tracing::info!(root = %store.root().display(), files = store.index().len(), "store indexed");

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut addrs = Addrs::default();

        // The tracker subscribes before any server runs, so it sees every event. It
        // has its own stop token: it must outlive the servers' grace period.
        let tracker_stop = CancellationToken::new();
        let tracker = tracker::spawn(
            &config.tracker,
            bus.clone(),
            store.clone(),
            &state_dir.join("journal"),
            tracker_stop.clone(),
        )
        .with_context(|| {
            format!(
                "cannot start the device tracker (journal in {})",
                state_dir.join("journal").display()
            )
        })?;

        // Store changes become wire events.
        {
            let mut rx = store.subscribe();
            let (bus, shutdown) = (bus.clone(), shutdown.clone());
            tasks.spawn(async move {
                loop {
                    let ev =
                        tokio::select! { _ = shutdown.cancelled() => break, ev = rx.recv() => ev };
                    let kind = match ev {
                        Ok(StoreEvent::Added(e)) => store_event(&e, StoreChange::Added),
                        Ok(StoreEvent::Modified(e)) => store_event(&e, StoreChange::Modified),
                        Ok(StoreEvent::Removed(path)) => EventKind::StoreChanged {
                            path,
                            change: StoreChange::Removed,
                            sha256: None,
                            version: None,
                            model: None,
                        },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    };
                    bus.publish(kind);
                }
            });
        }

        // TLS material is shared by HTTPS and FTPS.
        let tls = if config.https.enabled || (config.ftp.enabled && config.ftp.ftps) {
            let mut names = config.https.san.clone();
            if let Some(ip) = config.dhcp.server_ip {
                names.push(ip.to_string());
            }
            let m = provbox_storage::tls::load_or_generate(
                config.https.cert.as_deref(),
                config.https.key.as_deref(),
                &state_dir,
                &names,
            )
            .context("TLS certificate")?;
            Some(
                provbox_protocols::http::tls_config(m.chain.clone(), m.key.clone_key())
                    .context("the TLS certificate and key do not fit together")?,
            )
        } else {
            None
        };

        if !config.access.allow.is_empty() {
            let nets: Vec<String> = config.access.allow.iter().map(|n| n.to_string()).collect();
            tracing::info!(allow = %nets.join(", "), "file servers serve only these clients ([access] allow)");
        }

        // PUT uploads (phone logs), one area for HTTP and HTTPS.
        let http_uploads = match &config.http.upload_dir {
            Some(dir) if config.http.enabled || config.https.enabled => Some(Arc::new(
                provbox_protocols::uploads::UploadArea::open(dir, config.http.upload_max)
                    .with_context(|| {
                        format!(
                            "cannot use the HTTP upload directory {}; create it or fix [http] upload_dir",
                            dir.display()
                        )
                    })?,
            )),
            _ => None,
        };

        // Bind everything first.
        let http = if config.http.enabled {
            Some(
                HttpServer::bind(config.http.bind, None, store.clone(), bus.clone())
                    .await?
                    .with_access(config.access.clone())
                    .with_uploads(http_uploads.clone()),
            )
        } else {
            None
        };
        let https = match (&tls, config.https.enabled) {
            (Some(tls), true) => Some(
                HttpServer::bind(
                    config.https.bind,
                    Some(tls.clone()),
                    store.clone(),
                    bus.clone(),
                )
                .await?
                .with_access(config.access.clone())
                .with_uploads(http_uploads.clone()),
            ),
            _ => None,
        };
        addrs.http = http.as_ref().and_then(|s| s.local_addr().ok());
        addrs.https = https.as_ref().and_then(|s| s.local_addr().ok());
        let tftp = if config.tftp.enabled {
            Some(
                TftpServer::bind(&config.tftp, store.clone(), bus.clone())
                    .context("TFTP")?
                    .with_access(config.access.clone()),
            )
        } else {
            None
        };
        addrs.tftp = tftp.as_ref().map(|t| t.local_addr());
        let ftp = if config.ftp.enabled {
            let ftps = if config.ftp.ftps { tls.clone() } else { None };
            Some(
                provbox_protocols::ftp::FtpServer::bind(
                    &config.ftp,
                    store.clone(),
                    bus.clone(),
                    ftps,
                )
                .await
                .context("FTP")?
                .with_access(config.access.clone()),
            )
        } else {
            None
        };
        addrs.ftp = ftp.as_ref().map(|f| f.local_addr());

        // DHCP last among the protocols: its templates name the other servers' ports.
        let mut leases = None;
        let dhcp = if config.dhcp.enabled
            && (config.dhcp.pool.is_some() || !config.dhcp.reservations.is_empty())
        {
            let db_path = state_dir.join("leases.redb");
            let db = LeaseDb::open(&db_path)
                .with_context(|| format!("cannot open the lease database {}", db_path.display()))?;
            let port = |bound: Option<SocketAddr>, configured: SocketAddr| {
                bound.map_or(configured.port(), |a| a.port())
            };
            let vars = TemplateVars {
                server: config
                    .dhcp
                    .server_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                http_port: port(addrs.http, config.http.bind),
                https_port: port(addrs.https, config.https.bind),
                ftp_port: port(addrs.ftp, config.ftp.bind),
                tftp_port: port(addrs.tftp, config.tftp.bind),
            };
            let server =
                DhcpServer::bind(&config.dhcp, vars, db.clone(), bus.clone()).context("DHCP")?;
            leases = Some(db);
            Some(server)
        } else {
            if config.dhcp.enabled {
                tracing::info!("DHCP is off: no pool or reservation configured ([dhcp] pool)");
            }
            None
        };
        addrs.dhcp = dhcp.as_ref().map(|d| d.local_addr());

        let api = if config.api.enabled {
            let l = tokio::net::TcpListener::bind(config.api.bind)
                .await
                .with_context(|| {
                    format!(
                        "cannot bind the API to {}; is another server using the port?",
                        config.api.bind
                    )
                })?;
            addrs.api = l.local_addr().ok();
            Some(l)
        } else {
            None
        };

        // Everything is bound: run.
        for server in [http, https].into_iter().flatten() {
            tasks.spawn(server.run(shutdown.clone(), grace));
        }
        if let Some(mut t) = tftp {
            // [[tftp.quirk]] by the model a client's lease recorded (option 60/77).
            if let Some(db) = leases.clone() {
                t = t.with_models(provbox_protocols::tftp::ModelLookup(Arc::new(
                    move |ip: std::net::IpAddr| match ip.to_canonical() {
                        std::net::IpAddr::V4(v4) => db.by_ip(v4).and_then(|l| l.model),
                        std::net::IpAddr::V6(_) => None,
                    },
                )));
            }
            let sd = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = t.run(sd).await {
                    tracing::error!(error = %e, "TFTP server stopped");
                }
            });
        }
        if let Some(f) = ftp {
            let sd = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = f.run(sd).await {
                    tracing::error!(error = %e, "FTP server stopped");
                }
            });
        }
        if let Some(d) = dhcp {
            let sd = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = d.run(sd).await {
                    tracing::error!(error = %e, "DHCP server stopped");
                }
            });
        }
        if let Some(listener) = api {
            let db = leases.clone();
            let state = crate::api::ApiState {
                tracker: tracker.clone(),
                bus: bus.clone(),
                store: store.clone(),
                leases: Arc::new(move || {
                    db.as_ref().map_or(serde_json::json!([]), |d| {
                        serde_json::to_value(d.all()).unwrap_or_default()
                    })
                }),
                token: config.api.token.clone(),
                metrics: metrics_handle()
                    .context("the Prometheus recorder could not be installed")?,
            };
            let sd = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = crate::api::serve(listener, state, sd).await {
                    tracing::error!(error = %e, "API server stopped");
                }
            });
        }

        let app = Appliance {
            addrs,
            bus,
            store,
            tracker,
            leases,
            config,
            shutdown,
            tracker_stop,
            tasks,
            _temp_state: None,
        };
        app.log_addresses();
        Ok(app)
    }

    fn log_addresses(&self) {
        let a = &self.addrs;
        for (name, addr) in [
            ("dhcp", a.dhcp),
            ("tftp", a.tftp),
            ("ftp", a.ftp),
            ("http", a.http),
            ("https", a.https),
            ("api", a.api),
        ] {
            if let Some(addr) = addr {
                tracing::info!(service = name, %addr, "listening");
            }
        }
    }

    /// Stops every server: new connections are refused at once, in-flight downloads
    /// get the grace period. The tracker stops last, so what happened during the grace
    /// period is journaled, and the journal ends with the snapshot a restart resumes from.
    pub async fn shutdown(self) {
        self.tracker.close_streams();
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.tracker_stop.cancel();
        self.tracker.stopped().await;
    }

    /// A token that is cancelled when the appliance shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

fn store_event(e: &provbox_storage::Entry, change: StoreChange) -> EventKind {
    EventKind::StoreChanged {
        path: e.path.clone(),
        change,
        sha256: Some(e.sha256.clone()),
        version: e.version.clone(),
        model: e.model.clone(),
    }
}
