//! provbox configuration: the TOML schema, its defaults and its validation.
//!
//! Every field has a default, so an empty file (or none) is a valid config. Loading is
//! two steps: serde parses the text (unknown keys are errors, so typos are caught), then
//! [`validate`] checks what serde cannot: a pool outside its subnet, overlapping
//! reservations, unknown URL placeholders, two services on one port, unreadable
//! certificates. Every error names the file, the line and the field, and says what is
//! expected. The binary exits with status 64 on any of them, before binding a port.

mod env;
mod types;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use types::{ClientNet, Duration, Ipv4Net, Ipv4Range, MacAddr, MacPrefix, PortRange};
pub use validate::{PLACEHOLDERS, TemplateVars, expand_template};

/// A config problem, with where it is and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: `{field}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
    /// A `PROVBOX_<SECTION>_<FIELD>` environment override is wrong.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// The whole config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub state: StateConfig,
    pub dhcp: DhcpConfig,
    pub tftp: TftpConfig,
    pub ftp: FtpConfig,
    pub http: HttpConfig,
    pub https: HttpsConfig,
    pub api: ApiConfig,
    pub tracker: TrackerConfig,
    pub access: AccessConfig,
}

/// `[access]`: which clients may fetch and upload files over TFTP, FTP, HTTP and
/// HTTPS. Config files carry SIP credentials; on a shared lab network, list the phone
/// subnets here. DHCP and the API are not covered: DHCP answers by policy, the API has
/// its token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Client networks or addresses allowed; empty (the default) allows every client.
    /// Others get TFTP ERROR 2, HTTP 403, or FTP 421 at connect, each recorded as a
    /// refused request.
    pub allow: Vec<ClientNet>,
}

impl AccessConfig {
    /// Whether a client at `ip` may use the file servers.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip))
    }
}

/// `[store]`: the watched file store phones download from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of `.img`, `.cfg` and other files. Watched live.
    pub root: PathBuf,
    /// Poll the directory instead of using inotify (Docker Desktop bind mounts, NFS, SMB).
    pub poll: bool,
    pub poll_interval: Duration,
    /// A changed file is served once it has been quiet this long (size and mtime stable).
    pub settle: Duration,
    /// Full rescan period: a safety net under the watcher.
    pub rescan_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("./store"),
            poll: false,
            poll_interval: Duration::from_secs(2),
            settle: Duration::from_millis(300),
            rescan_interval: Duration::from_secs(300),
        }
    }
}

/// `[state]`: where leases, the journal, snapshots and the generated certificate live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./state"),
        }
    }
}

/// `[dhcp]`: the DHCPv4 server. Its `provisioning_url`, `tftp_server` and `boot_file`
/// form the default policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DhcpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Serve only this interface (SO_BINDTODEVICE); `server_ip` defaults to its address.
    pub interface: Option<String>,
    /// Option 54 and `{server}` in templates. Never guessed from a container address.
    pub server_ip: Option<Ipv4Addr>,
    /// The subnet the pool belongs to; defaults to `server_ip`/`subnet_mask`.
    pub subnet: Option<Ipv4Net>,
    pub pool: Option<Ipv4Range>,
    pub subnet_mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub lease_time: Duration,
    /// T1; defaults to half the lease time.
    pub renew_time: Option<Duration>,
    /// T2; defaults to 7/8 of the lease time.
    pub rebind_time: Option<Duration>,
    /// How long a DECLINEd address stays out of the pool.
    pub decline_quarantine: Duration,
    /// Packets accepted per MAC per second before that MAC is ignored for a while.
    pub per_mac_rate: u32,
    /// Default option 160 URL template.
    pub provisioning_url: Option<String>,
    /// Default option 66.
    pub tftp_server: Option<String>,
    /// Default option 67.
    pub boot_file: Option<String>,
    #[serde(rename = "policy")]
    pub policies: Vec<Policy>,
    #[serde(rename = "reservation")]
    pub reservations: Vec<Reservation>,
    /// Extra options sent to every client.
    #[serde(rename = "option")]
    pub options: Vec<CustomOption>,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 67)),
            interface: None,
            server_ip: None,
            subnet: None,
            pool: None,
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: Vec::new(),
            ntp: Vec::new(),
            domain_name: None,
            lease_time: Duration::from_secs(3600),
            renew_time: None,
            rebind_time: None,
            decline_quarantine: Duration::from_secs(600),
            per_mac_rate: 20,
            provisioning_url: None,
            tftp_server: None,
            boot_file: None,
            policies: Vec::new(),
            reservations: Vec::new(),
            options: Vec::new(),
        }
    }
}

impl DhcpConfig {
    /// The subnet the pool lives in: explicit, else `server_ip`/`subnet_mask`, else the
    /// pool's first address under the mask.
    pub fn effective_subnet(&self) -> Option<Ipv4Net> {
        if let Some(s) = self.subnet {
            return Some(s);
        }
        let base = self.server_ip.or(self.pool.map(|p| p.first))?;
        Ipv4Net::from_mask(base, self.subnet_mask)
    }
    /// T1 and T2 for a lease of `lease_time`.
    pub fn timers(&self) -> (std::time::Duration, std::time::Duration) {
        let lease = self.lease_time.get();
        let t1 = self.renew_time.map(|d| d.get()).unwrap_or(lease / 2);
        let t2 = self.rebind_time.map(|d| d.get()).unwrap_or(lease * 7 / 8);
        (t1, t2)
    }
}

/// One `[[dhcp.policy]]`: first match wins; the `[dhcp]` defaults apply when none matches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Shown in events, the dashboard and `provbox check`.
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Match,
    pub provisioning_url: Option<String>,
    pub tftp_server: Option<String>,
    pub boot_file: Option<String>,
    /// Send option 160 even if the client did not ask for it in option 55.
    pub force_160: bool,
    /// Extra options for clients of this policy.
    #[serde(rename = "option")]
    pub options: Vec<CustomOption>,
}

impl Policy {
    /// The name to show: the configured one, else `policy #<index+1>`.
    pub fn display_name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("policy #{}", index + 1))
    }
}

/// What a policy matches. Every field that is set must match (AND). Text matches are
/// case-insensitive substrings unless `exact = true`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Match {
    /// Option 60.
    pub vendor_class: Option<String>,
    /// Option 77, raw or RFC 3004 length-prefixed.
    pub user_class: Option<String>,
    /// Option 60 or option 77.
    pub model: Option<String>,
    pub mac: Option<MacAddr>,
    pub mac_prefix: Option<MacPrefix>,
    /// Option 82 sub-option 1.
    pub circuit_id: Option<String>,
    /// Option 82 sub-option 2.
    pub remote_id: Option<String>,
    pub exact: bool,
}

impl Match {
    pub fn is_empty(&self) -> bool {
        self.vendor_class.is_none()
            && self.user_class.is_none()
            && self.model.is_none()
            && self.mac.is_none()
            && self.mac_prefix.is_none()
            && self.circuit_id.is_none()
            && self.remote_id.is_none()
    }
}

/// `[[dhcp.reservation]]`: a fixed address for one MAC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub hostname: Option<String>,
}

/// An extra DHCP option by number. Exactly one of `text`, `ip` or `hex`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomOption {
    pub code: u8,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub ip: Option<Vec<Ipv4Addr>>,
    #[serde(default)]
    pub hex: Option<String>,
}

impl CustomOption {
    /// The option's payload bytes (validated at load time).
    pub fn bytes(&self) -> Vec<u8> {
        if let Some(t) = &self.text {
            t.as_bytes().to_vec()
        } else if let Some(ips) = &self.ip {
            ips.iter().flat_map(|i| i.octets()).collect()
        } else if let Some(h) = &self.hex {
            hex::decode(h.replace([':', ' '], "")).unwrap_or_default()
        } else {
            Vec::new()
        }
    }
}

/// `[tftp]`: the read-only TFTP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TftpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Local ports for transfer sockets; any free port when unset.
    pub port_range: Option<PortRange>,
    /// Answer every transfer from the listening port (NAT, containers).
    pub single_port: bool,
    /// Largest blksize granted (RFC 2348 allows 8-65464).
    pub max_blksize: u16,
    /// Largest windowsize granted (RFC 7440).
    pub max_windowsize: u16,
    /// Initial retransmission timeout; adapted to the measured RTT after the first ACKs.
    pub timeout: Duration,
    /// Floor of the adapted retransmission timeout: below it, scheduling hiccups of a
    /// busy host would look like losses.
    pub min_timeout: Duration,
    /// Retransmissions of one packet before the transfer is given up.
    pub retries: u32,
    /// Accept WRQ into this directory (phone logs). Refused when unset.
    pub upload_dir: Option<PathBuf>,
    /// Largest upload accepted, bytes.
    pub upload_max: u64,
    /// Transfers at once (dnsmasq's `--tftp-max`); requests beyond it get ERROR 0
    /// "server busy" and the phone retries. Lower it to spread a fleet's reboot storm.
    pub max_transfers: usize,
    /// Per-model option caps for clients that break with what they ask for.
    #[serde(rename = "quirk")]
    pub quirks: Vec<TftpQuirk>,
}

/// One `[[tftp.quirk]]`: what a phone model is granted at most, below the `[tftp]`
/// limits. The model is the one its DHCP lease recorded (option 60/77), else the one in
/// the requested image name (`420HD.img`); the first quirk whose `model` it contains
/// (case-insensitively) applies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpQuirk {
    pub model: String,
    pub max_blksize: Option<u16>,
    pub max_windowsize: Option<u16>,
    /// `false`: never answer the tsize option (some boot ROMs mishandle it).
    #[serde(default = "yes")]
    pub tsize: bool,
}

fn yes() -> bool {
    true
}

impl TftpConfig {
    /// The quirk for a client of `model`, if any.
    pub fn quirk_for(&self, model: &str) -> Option<&TftpQuirk> {
        let m = model.to_ascii_lowercase();
        self.quirks
            .iter()
            .find(|q| !q.model.is_empty() && m.contains(&q.model.to_ascii_lowercase()))
    }
}

impl Default for TftpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 69)),
            port_range: None,
            single_port: false,
            max_blksize: 65464,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            min_timeout: Duration::from_millis(10),
            retries: 6,
            upload_dir: None,
            upload_max: 16 * 1024 * 1024,
            max_transfers: 4096,
            quirks: Vec::new(),
        }
    }
}

/// `[ftp]`: the FTP/FTPS server, read-only unless an upload area is configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FtpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    pub passive_ports: PortRange,
    /// What PASV/EPSV advertise (NAT, containers); the control connection's local address when unset.
    pub passive_address: Option<IpAddr>,
    /// Offer explicit FTPS (AUTH TLS) with the HTTPS certificate.
    pub ftps: bool,
    pub anonymous: bool,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    #[serde(rename = "user")]
    pub users: Vec<FtpUser>,
    pub upload_dir: Option<PathBuf>,
    pub upload_max: u64,
}

impl Default for FtpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 21)),
            passive_ports: PortRange {
                first: 30000,
                last: 30099,
            },
            passive_address: None,
            ftps: true,
            anonymous: true,
            idle_timeout: Duration::from_secs(300),
            max_connections: 500,
            users: Vec::new(),
            upload_dir: None,
            upload_max: 16 * 1024 * 1024,
        }
    }
}

/// `[[ftp.user]]`: a named FTP account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FtpUser {
    pub name: String,
    /// `sha256:<hex>` of the password.
    pub password_hash: String,
    #[serde(default)]
    pub upload: bool,
}

/// `[http]`: plain HTTP file serving.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Accept PUT into this directory over HTTP and HTTPS (Polycom phones PUT
    /// `<mac>-boot.log` and `<mac>-app.log`); 405 when unset.
    pub upload_dir: Option<PathBuf>,
    /// Largest upload accepted, bytes (413 beyond it).
    pub upload_max: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 80)),
            upload_dir: None,
            upload_max: 16 * 1024 * 1024,
        }
    }
}

/// `[https]`: HTTPS file serving. Without `cert`/`key` a self-signed pair is generated
/// on first start and kept under the state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpsConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra names and addresses for the generated certificate.
    pub san: Vec<String>,
}

impl Default for HttpsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 443)),
            cert: None,
            key: None,
            san: Vec::new(),
        }
    }
}

/// `[api]`: dashboard, REST, SSE events, `/metrics`, `/healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Bearer token; required when `bind` is not a loopback address.
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
        }
    }
}

/// `[tracker]`: how phone journeys are judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// A phone with no progress for this long is shown as stalled.
    pub stall_after: Duration,
    /// Expected burn time when a model has no entry in `burn_time`.
    pub default_burn_time: Duration,
    /// Expected burn time per model, e.g. `{ "450HD" = "120s" }`.
    pub burn_time: BTreeMap<String, Duration>,
    /// The journal is rotated when it reaches this many bytes.
    pub journal_max_bytes: u64,
    /// Rotated journal files kept.
    pub journal_keep: usize,
    /// A read of a firmware image that stops at or below this many bytes is a header
    /// check (Range, early close, TFTP ERROR after two blocks); past it, a download.
    pub firmware_check_bytes: u64,
    /// Compare a delivered config's `system/type` with the phone's model and show a
    /// mismatch as `config_rejected` (the phone discards such a file).
    pub check_config_model: bool,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(120),
            default_burn_time: Duration::from_secs(120),
            burn_time: BTreeMap::new(),
            journal_max_bytes: 64 * 1024 * 1024,
            journal_keep: 4,
            firmware_check_bytes: 256 * 1024,
            check_config_model: true,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// Parses and validates config text. `file` names it in errors; relative
    /// certificate paths are checked relative to `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let config = Self::deserialize_text(text, file)?;
        validate::validate(&config, text, file, base)?;
        Ok(config)
    }

    /// serde's half of [`Config::parse`]: types and unknown keys, errors with their line.
    fn deserialize_text(text: &str, file: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| validate::line_of(text, s.start))
                .unwrap_or(1);
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                message: e.message().trim().to_string(),
            }
        })
    }

    /// Reads the config file (or the defaults when `path` is `None`), applies the
    /// process's `PROVBOX_<SECTION>_<FIELD>` environment overrides, and validates the
    /// result. `provbox serve` uses this.
    pub fn load_with_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_vars(path, env::process_vars()?)
    }

    /// [`Config::load_with_env`] with the variables given (tests, embedding).
    pub fn load_with_vars(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let base = path.parent().unwrap_or(Path::new("."));
                env::parse_with_env(&text, &path.display().to_string(), base, vars)
            }
            None => env::parse_with_env("", "(built-in defaults)", Path::new("."), vars),
        }
    }

    /// Applies `PROVBOX_<SECTION>_<FIELD>=value` overrides to this config and validates
    /// the result; variables of other shapes are ignored. On error `self` is unchanged.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let text = toml::to_string(self).map_err(|e| ConfigError::Env {
            var: "(all)".to_string(),
            message: format!("cannot serialise the current config to apply overrides: {e}"),
        })?;
        *self = env::parse_with_env(&text, "(current config)", Path::new("."), vars)?;
        Ok(())
    }

    /// The config used when no file is given, validated like any other.
    pub fn defaults() -> Config {
        Config::default()
    }
}

#[cfg(test)]
mod tests;
