//! Shared helpers for the simulator tests: a temporary store with synthetic images and
//! configs, third-party peer servers (nginx, vsftpd, tftpd-hpa, dnsmasq) started on
//! free ports and stopped by PID, and network namespaces that remove themselves.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use provbox::sim::ImageSpec;

/// A free TCP port on 127.0.0.1 (released before use; the race is acceptable here).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A world-readable temporary directory (peers drop privileges to nobody/ftp/www-data).
pub struct TempStore {
    pub dir: tempfile::TempDir,
}

impl TempStore {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("pbsim-").tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        TempStore { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
    pub fn write(&self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.dir.path().join(rel);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
    pub fn image(
        &self,
        rel: &str,
        model: &str,
        version: &str,
        size: u64,
        corrupt: bool,
    ) -> PathBuf {
        let p = self.dir.path().join(rel);
        let spec = ImageSpec {
            model: model.into(),
            version: version.into(),
            date: "20260101".into(),
            size,
            corrupt,
        };
        spec.write_file(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
}

/// A peer process, stopped by its PID when dropped.
pub struct Peer {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Peer {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM by PID, then SIGKILL if it lingers (bounded wait).
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(name: &'static str, netns: Option<&str>, cmd: &[&str], log: PathBuf) -> Peer {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(cmd);
            c
        }
        None => {
            let mut c = Command::new(cmd[0]);
            c.args(&cmd[1..]);
            c
        }
    };
    let out = fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let child = c
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Peer { name, child, log }
}

/// Waits (bounded, 10 s) until a TCP connect to `addr` succeeds.
pub fn wait_tcp(addr: SocketAddr, peer: &mut Peer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = peer.child.try_wait() {
            panic!("{} exited ({st}) at start:\n{}", peer.name, peer.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} not listening on {addr} after 10 s:\n{}",
        peer.name,
        peer.log_text()
    );
}

/// Waits (bounded, 10 s) until something listens on UDP `port` (in `netns` if given).
pub fn wait_udp(port: u16, netns: Option<&str>, peer: &mut Peer) {
    wait_listen("-lunH", port, netns, peer)
}

/// Waits (bounded, 10 s) until something listens on TCP `port` (in `netns` if given).
pub fn wait_tcp_ns(port: u16, netns: Option<&str>, peer: &mut Peer) {
    wait_listen("-ltnH", port, netns, peer)
}

fn wait_listen(flags: &str, port: u16, netns: Option<&str>, peer: &mut Peer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "ss", flags]);
                c
            }
            None => {
                let mut c = Command::new("ss");
                c.arg(flags);
                c
            }
        };
        let out = c.arg(format!("sport = :{port}")).output().unwrap();
        if !out.stdout.is_empty() {
            return;
        }
        if let Ok(Some(st)) = peer.child.try_wait() {
            panic!("{} exited ({st}) at start:\n{}", peer.name, peer.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} not listening on udp/{port} after 10 s:\n{}",
        peer.name,
        peer.log_text()
    );
}

/// nginx serving `root` over HTTPS on `addr:port` (self-signed certificate made with
/// openssl), logging remote address, User-Agent, request, status and Range.
pub fn start_nginx(
    work: &Path,
    root: &Path,
    addr: Ipv4Addr,
    port: u16,
    netns: Option<&str>,
) -> (Peer, PathBuf) {
    let p = work.join("nginx");
    fs::create_dir_all(p.join("tmp")).unwrap();
    let cert = p.join("cert.pem");
    let key = p.join("key.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            "/CN=pbsim-test",
            "-addext",
            &format!("subjectAltName=IP:{addr},IP:127.0.0.1"),
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req failed");
    let access = p.join("access.log");
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes 1;
user root root;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  log_format pb '$remote_addr "$http_user_agent" "$request" $status $body_bytes_sent "$http_range"';
  access_log {access} pb;
  sendfile on;
  types {{ text/plain cfg; application/octet-stream img; }}
  default_type application/octet-stream;
  client_body_temp_path {p}/tmp/body;
  proxy_temp_path {p}/tmp/proxy;
  fastcgi_temp_path {p}/tmp/fastcgi;
  uwsgi_temp_path {p}/tmp/uwsgi;
  scgi_temp_path {p}/tmp/scgi;
  server {{
    listen {addr}:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {root};
    location /moved/ {{ rewrite ^/moved/(.*)$ /$1 redirect; }}
    location / {{ }}
  }}
}}
"#,
        p = p.display(),
        access = access.display(),
        cert = cert.display(),
        key = key.display(),
        root = root.display(),
    );
    let cf = p.join("nginx.conf");
    fs::write(&cf, conf).unwrap();
    let mut peer = spawn(
        "nginx",
        netns,
        &[
            "/usr/sbin/nginx",
            "-p",
            p.to_str().unwrap(),
            "-c",
            cf.to_str().unwrap(),
            "-e",
            p.join("error.log").to_str().unwrap(),
        ],
        p.join("stdout.log"),
    );
    if netns.is_none() {
        wait_tcp(SocketAddr::from((addr, port)), &mut peer);
    } else {
        wait_tcp_ns(port, netns, &mut peer);
    }
    (peer, access)
}

/// vsftpd: anonymous, read-only, passive only (ports `pasv..pasv+19`), with a transfer log.
pub fn start_vsftpd(work: &Path, root: &Path, port: u16, pasv: u16) -> (Peer, PathBuf) {
    let p = work.join("vsftpd");
    fs::create_dir_all(&p).unwrap();
    fs::create_dir_all("/var/run/vsftpd/empty").unwrap();
    let xfer = p.join("xfer.log");
    let ftpuser = if Command::new("getent")
        .args(["passwd", "ftp"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        "ftp"
    } else {
        "nobody"
    };
    let conf = format!(
        "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n\
         anonymous_enable=YES\nno_anon_password=YES\nftp_username={ftpuser}\nanon_root={root}\nlocal_enable=NO\n\
         write_enable=NO\npasv_enable=YES\npasv_min_port={pasv}\npasv_max_port={pmax}\nport_enable=NO\n\
         connect_from_port_20=NO\nmax_clients=0\nmax_per_ip=0\nxferlog_enable=YES\nxferlog_std_format=YES\n\
         xferlog_file={xfer}\ndirmessage_enable=NO\nhide_ids=YES\nseccomp_sandbox=NO\n\
         secure_chroot_dir=/var/run/vsftpd/empty\npasv_promiscuous=NO\n",
        root = root.display(),
        pmax = pasv + 19,
        xfer = xfer.display(),
    );
    let cf = p.join("vsftpd.conf");
    fs::write(&cf, conf).unwrap();
    fs::set_permissions(&cf, fs::Permissions::from_mode(0o600)).unwrap();
    let mut peer = spawn(
        "vsftpd",
        None,
        &["/usr/sbin/vsftpd", cf.to_str().unwrap()],
        p.join("stdout.log"),
    );
    wait_tcp(SocketAddr::from(([127, 0, 0, 1], port)), &mut peer);
    (peer, xfer)
}

/// tftp-hpa serving `root` read-only on `addr:port`, verbose logging to stdout.
pub fn start_tftpd(work: &Path, root: &Path, addr: Ipv4Addr, port: u16) -> Peer {
    let p = work.join("tftpd");
    fs::create_dir_all(&p).unwrap();
    let mut peer = spawn(
        "tftpd-hpa",
        None,
        &[
            "/usr/sbin/in.tftpd",
            "-L",
            "-4",
            "-vvv",
            "-a",
            &format!("{addr}:{port}"),
            "-s",
            root.to_str().unwrap(),
            "-u",
            "nobody",
            "-B",
            "65464",
        ],
        p.join("stdout.log"),
    );
    wait_udp(port, None, &mut peer);
    peer
}

static NS_SEQ: AtomicU32 = AtomicU32::new(0);

/// Two network namespaces joined by a veth pair: `srv` (198.18.0.1/16 on `srv_if`)
/// and `cli` (198.18.0.2/16 on `cli_if`). Names carry the process id; removed on drop.
pub struct NetnsPair {
    pub srv: String,
    pub cli: String,
    pub srv_if: String,
    pub cli_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetnsPair {
    pub fn new() -> Self {
        let n = NS_SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let pair = NetnsPair {
            srv: format!("pbsim-s-{id}"),
            cli: format!("pbsim-c-{id}"),
            // Interface names are at most 15 bytes.
            srv_if: format!("pbs{}", short(&id)),
            cli_if: format!("pbc{}", short(&id)),
        };
        ip(&["netns", "add", &pair.srv]);
        ip(&["netns", "add", &pair.cli]);
        ip(&[
            "link",
            "add",
            &pair.srv_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.cli_if,
        ]);
        ip(&["link", "set", &pair.srv_if, "netns", &pair.srv]);
        ip(&["link", "set", &pair.cli_if, "netns", &pair.cli]);
        ip(&[
            "-n",
            &pair.srv,
            "addr",
            "add",
            "198.18.0.1/16",
            "dev",
            &pair.srv_if,
        ]);
        ip(&[
            "-n",
            &pair.cli,
            "addr",
            "add",
            "198.18.0.2/16",
            "dev",
            &pair.cli_if,
        ]);
        for (ns, dev) in [(&pair.srv, &pair.srv_if), (&pair.cli, &pair.cli_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }
}

fn short(id: &str) -> String {
    let h = id
        .bytes()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("{:08x}", h)[..8].to_string()
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the peer.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.srv])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.cli])
            .status();
    }
}

/// Lines of a log that mention `needle`.
pub fn lines_with(text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Is this process root (for namespace tests)?
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// One network namespace with only its loopback up; removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let n = NS_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("pbsim-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
