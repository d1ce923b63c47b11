//! Packaging: the Dockerfile (hadolint, its dependency layer), the systemd unit
//! (`systemd-analyze verify` and `security`), `provbox install-systemd`, the image's
//! privilege model (a non-root user whose only power is the binary's file capability,
//! proved in a network namespace), `provbox healthcheck`, and `PROVBOX_*` overrides
//! reaching `serve`. The full runtime stage in a debootstrap chroot is
//! packaging/verify-image.sh (it needs Debian's mirror, which tests must not reach).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use provbox_tests::{Scratch, provbox_bin, require, run, sha256};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A spawned process killed (by PID) on drop, with its stderr lines on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }
    /// Waits (bounded) for a stderr line containing every needle.
    fn wait_for(&mut self, needles: &[&str], deadline: Duration) -> String {
        let start = Instant::now();
        while start.elapsed() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let hit = needles.iter().all(|n| line.contains(n));
                    self.seen.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "exited ({status}) before logging {needles:?}:\n{}",
                            self.seen.join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "exited ({status:?}) before logging {needles:?}:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
        panic!(
            "no line with {needles:?} within {deadline:?}:\n{}",
            self.seen.join("\n")
        );
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("pbx-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = run(
            Command::new("ip").args(["netns", "add", &name]),
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            text(&out.stderr)
        );
        let out = run(
            Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        Netns(name)
    }
    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A free loopback TCP port (bound and released: good enough for one test process).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_dockerfile_passes_hadolint_and_hadolint_catches_a_bad_one() {
    require("hadolint");
    let dockerfile = repo().join("Dockerfile");
    let out = run(
        Command::new("hadolint").arg(&dockerfile),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "hadolint Dockerfile:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The same file without its one justified exception must fail: the linter really ran.
    let s = Scratch::new();
    let bad = s.dir.path().join("Dockerfile");
    let original = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(original.contains("# hadolint ignore=DL3008"));
    std::fs::write(&bad, original.replace("# hadolint ignore=DL3008\n", "")).unwrap();
    let out = run(Command::new("hadolint").arg(&bad), Duration::from_secs(60));
    assert!(
        !out.status.success(),
        "hadolint passed a Dockerfile with unpinned apt packages"
    );
    assert!(
        text(&out.stdout).contains("DL3008"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn the_packaging_scripts_pass_shellcheck() {
    require("shellcheck");
    let scripts: Vec<PathBuf> = [
        "verify-image.sh",
        "stub-workspace.sh",
        "install-test-deps.sh",
    ]
    .iter()
    .map(|s| repo().join("packaging").join(s))
    .collect();
    let out = run(
        Command::new("shellcheck").args(&scripts),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// The benchmark scripts too, at warning level: the notes shellcheck gives at info
/// level are about files they source from `../shared/bench`, outside this repository.
#[test]
fn the_bench_scripts_pass_shellcheck() {
    require("shellcheck");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(repo().join("bench"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 8, "bench scripts: {scripts:?}");
    let out = run(
        Command::new("shellcheck")
            .args(["-S", "warning"])
            .args(&scripts),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// The build stage's first layer copies every member's manifest, and the stand-in
/// workspace it builds resolves against Cargo.lock exactly as `--locked` demands.
#[test]
fn the_dependency_layer_copies_every_member_and_resolves_locked() {
    let root = repo();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members_line = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("members = [...] in Cargo.toml");
    let members: Vec<String> = members_line
        .split('[')
        .nth(1)
        .unwrap()
        .trim_end_matches(']')
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for m in &members {
        assert!(
            dockerfile.contains(&format!("COPY {m}/Cargo.toml {m}/")),
            "the Dockerfile's dependency layer does not copy {m}/Cargo.toml"
        );
    }
    // Patched crates ([patch.crates-io] paths, e.g. vendor/libunftp) are dependencies
    // too: the layer must copy them, or its `cargo build` cannot resolve.
    let patched: Vec<String> = manifest
        .lines()
        .skip_while(|l| !l.starts_with("[patch."))
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split("path = \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .filter_map(|p| p.split('/').next())
        .map(str::to_string)
        .collect();
    for top in &patched {
        assert!(
            dockerfile.contains(&format!("COPY {top}/ {top}/")),
            "the Dockerfile's dependency layer does not copy {top}/ (a [patch] path)"
        );
    }
    let s = Scratch::new();
    let w = s.dir.path().join("ws");
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::create_dir_all(&w).unwrap();
        std::fs::copy(root.join(f), w.join(f)).unwrap();
    }
    for m in &members {
        std::fs::create_dir_all(w.join(m)).unwrap();
        std::fs::copy(
            root.join(m).join("Cargo.toml"),
            w.join(m).join("Cargo.toml"),
        )
        .unwrap();
    }
    for top in &patched {
        let out = run(
            Command::new("cp")
                .arg("-a")
                .arg(root.join(top))
                .arg(w.join(top)),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "cp {top}: {}", text(&out.stderr));
    }
    let out = run(
        Command::new("sh")
            .arg(root.join("packaging/stub-workspace.sh"))
            .current_dir(&w),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(w.join("appliance/src/main.rs").is_file());
    // The whole graph against the lock file, as `cargo build --locked` resolves it.
    let out = run(
        Command::new(env!("CARGO"))
            .args([
                "tree",
                "--locked",
                "--offline",
                "-p",
                "provbox",
                "--depth",
                "1",
            ])
            .args(["--prefix", "none", "--edges", "normal"])
            .current_dir(&w),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "cargo tree --locked on the stand-in workspace: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("tokio v"),
        "{}",
        text(&out.stdout)
    );
}

/// Installs into a scratch root and returns (root, unit path).
fn install(s: &Scratch, extra: &[&str]) -> (PathBuf, PathBuf) {
    let root = s.dir.path().join("root");
    let out = run(
        Command::new(provbox_bin())
            .args(["install-systemd", "--prefix"])
            .arg(&root)
            .args(extra),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "install-systemd: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let unit = root.join("etc/systemd/system/provbox.service");
    (root, unit)
}

/// `systemd-analyze verify` of a unit (ExecStart pointed at the built binary, which
/// verify requires to exist); its complaints, empty when clean.
fn verify(unit_text: &str, dir: &Path) -> (bool, String) {
    let unit = dir.join("provbox.service");
    let bin = provbox_bin();
    std::fs::write(
        &unit,
        unit_text.replace("/usr/local/bin/provbox", &bin.display().to_string()),
    )
    .unwrap();
    let out = run(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit),
        Duration::from_secs(60),
    );
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    require("systemd-analyze");
    let s = Scratch::new();
    let (_, unit) = install(&s, &[]);
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "StateDirectory=provbox",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/local/bin/provbox serve --config /etc/provbox/provbox.toml",
        "RestartPreventExitStatus=64",
    ] {
        assert!(
            unit_text.lines().any(|l| l == line),
            "unit lacks {line}:\n{unit_text}"
        );
    }
    let (ok, complaints) = verify(&unit_text, s.dir.path());
    assert!(
        ok && complaints.trim().is_empty(),
        "systemd-analyze verify:\n{complaints}"
    );

    // systemd's own exposure score (0 = locked down, 10 = unprotected).
    let out = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(&unit),
        Duration::from_secs(60),
    );
    let report = text(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for provbox.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}{}", text(&out.stderr)));
    assert!(
        score <= 2.5,
        "exposure {score} (was 1.9 when written):\n{report}"
    );

    // A static user instead of DynamicUser verifies too.
    let s2 = Scratch::new();
    let (_, unit2) = install(&s2, &["--user", "provbox"]);
    let unit2_text = std::fs::read_to_string(unit2).unwrap();
    assert!(unit2_text.contains("User=provbox\nGroup=provbox\n"));
    assert!(!unit2_text.contains("DynamicUser"));
    let (ok, complaints) = verify(&unit2_text, s2.dir.path());
    assert!(
        ok && complaints.trim().is_empty(),
        "--user variant:\n{complaints}"
    );

    // The check can fail: a misspelt hardening key is reported.
    let (_, complaints) = verify(
        &unit_text.replace("ProtectClock=yes", "ProtectClok=yes"),
        s.dir.path(),
    );
    assert!(
        complaints.contains("ProtectClok"),
        "verify missed a bad key: {complaints}"
    );
}

#[test]
fn install_systemd_writes_binary_unit_config_and_store_and_keeps_an_edited_config() {
    let s = Scratch::new();
    let (root, _) = install(&s, &[]);
    let bin = root.join("usr/local/bin/provbox");
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // Byte for byte (a debug binary is ~130 MB: too slow to hash in a debug test build).
    assert!(std::fs::read(&bin).unwrap() == std::fs::read(provbox_bin()).unwrap());
    let store = root.join("srv/provbox/store");
    assert!(store.is_dir());
    let config = root.join("etc/provbox/provbox.toml");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("root = \"/srv/provbox/store\""),
        "{written}"
    );
    assert!(root.join("etc/provbox/provbox.example.toml").is_file());
    // The written config is valid (pointed at the scratch store for the survey).
    let check_cfg = s.dir.path().join("check.toml");
    std::fs::write(
        &check_cfg,
        written.replace("/srv/provbox/store", &store.display().to_string()),
    )
    .unwrap();
    let out = run(
        Command::new(provbox_bin())
            .args(["check", "--config"])
            .arg(&check_cfg),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("config: OK"));

    // An operator's edit survives a reinstall; --force-config replaces it.
    std::fs::write(&config, "# edited\n").unwrap();
    install(&s, &[]);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited\n");
    install(&s, &["--force-config"]);
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("[store]")
    );

    // Bad arguments are refused before anything is written.
    let out = run(
        Command::new(provbox_bin())
            .args(["install-systemd", "--prefix"])
            .arg(s.dir.path().join("other"))
            .args(["--user", "Bad User"]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a valid system user name"),
        "{}",
        text(&out.stderr)
    );
    assert!(!s.dir.path().join("other").exists());
}

/// The image's privilege model without the image: a copy of the binary with
/// `cap_net_bind_service=+ep` (as the Dockerfile sets it), run as uid 10001 in a
/// network namespace, binds ports 80 and 443 and serves a file; the same binary
/// without the capability cannot bind them.
#[test]
fn a_non_root_user_binds_privileged_ports_through_the_file_capability() {
    for tool in ["setcap", "setpriv", "ip", "curl"] {
        require(tool);
    }
    let s = Scratch::new();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = s.dir.path().join("usr-local-bin");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o755)).unwrap();
    let with_cap = image.join("provbox");
    let without_cap = image.join("provbox-nocap");
    for b in [&with_cap, &without_cap] {
        std::fs::copy(provbox_bin(), b).unwrap();
        std::fs::set_permissions(b, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = run(
        Command::new("setcap")
            .arg("cap_net_bind_service=+ep")
            .arg(&with_cap),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "setcap: {}", text(&out.stderr));
    let body = provbox_tests::pattern(300_000, 7);
    let file = s.put("450HD_3.4.8.198.img", &body);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(s.store(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(s.state()).unwrap();
    std::os::unix::fs::chown(s.state(), Some(10001), Some(10001)).unwrap();

    let ns = Netns::new("cap");
    let serve = |bin: &Path| {
        let mut c = ns.exec();
        c.args([
            "setpriv",
            "--reuid=10001",
            "--regid=10001",
            "--clear-groups",
            "--",
        ])
        .arg(bin)
        .arg("serve")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("PROVBOX_STORE_ROOT", s.store())
        .env("PROVBOX_STATE_DIR", s.state())
        .env("PROVBOX_API_ENABLED", "false")
        // DHCP too, so that port 67 is bound (a pool on this namespace's loopback).
        .env("PROVBOX_DHCP_SERVER_IP", "127.0.0.1")
        .env("PROVBOX_DHCP_POOL", "127.0.0.100-127.0.0.150")
        .current_dir(s.state());
        c
    };

    // Without the capability: refused, and the error says which port.
    let out = run(&mut serve(&without_cap), Duration::from_secs(30));
    assert!(
        !out.status.success(),
        "bound port 80 without the capability"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("ermission denied")
            && [":67", ":69", ":21", ":80", ":443"]
                .iter()
                .any(|p| err.contains(p)),
        "{err}"
    );

    let mut p = Proc::spawn(&mut serve(&with_cap));
    p.wait_for(
        &["listening", "http", "0.0.0.0:80"],
        Duration::from_secs(20),
    );
    p.wait_for(
        &["listening", "https", "0.0.0.0:443"],
        Duration::from_secs(20),
    );
    let out = run(
        ns.exec().args(["ss", "-H", "-lntup"]),
        Duration::from_secs(10),
    );
    let sockets = text(&out.stdout);
    // Every privileged port a server logged (the addresses are logged in order, https
    // after dhcp, tftp and ftp), bound by the uid-10001 process itself.
    let logged: Vec<String> = p
        .seen
        .iter()
        .filter(|l| l.contains("listening service="))
        .filter_map(|l| l.split("addr=0.0.0.0:").nth(1))
        .map(|rest| {
            let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
            format!(":{port} ")
        })
        .collect();
    for needed in [":67 ", ":69 ", ":80 ", ":443 "] {
        assert!(
            logged.iter().any(|l| l == needed),
            "{needed}not logged: {logged:?}"
        );
    }
    for port in &logged {
        assert!(
            sockets
                .lines()
                .any(|l| l.contains(port) && l.contains(&format!("pid={},", p.pid()))),
            "port{port}not bound by provbox (uid 10001):\n{sockets}\n{}",
            p.seen.join("\n")
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:")[..2], ["10001", "10001"], "{status}");
    assert_eq!(
        field("CapEff:"),
        ["0000000000000400"],
        "only CAP_NET_BIND_SERVICE"
    );
    // To a file: `run` reads the pipes only once the child has exited.
    let got = s.dir.path().join("got.img");
    let out = run(
        ns.exec()
            .args(["curl", "-sS", "-f", "--max-time", "20", "-o"])
            .arg(&got)
            .arg("http://127.0.0.1/450HD_3.4.8.198.img"),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    assert_eq!(provbox_tests::sha256_file(&got), sha256(&body));
}

/// The environment `serve` and `healthcheck` share in these tests: everything on
/// loopback, DHCP off.
fn loopback_env(cmd: &mut Command, s: &Scratch, http: u16) {
    cmd.env("PROVBOX_STORE_ROOT", s.store())
        .env("PROVBOX_STATE_DIR", s.state())
        .env("PROVBOX_HTTP_BIND", format!("127.0.0.1:{http}"))
        .env("PROVBOX_HTTPS_BIND", "127.0.0.1:0")
        .env("PROVBOX_TFTP_BIND", "127.0.0.1:0")
        .env("PROVBOX_FTP_BIND", "127.0.0.1:0")
        .env("PROVBOX_DHCP_ENABLED", "false")
        .env("PROVBOX_API_ENABLED", "false")
        .env_remove("PROVBOX_CONFIG");
}

#[test]
fn healthcheck_reports_a_serving_appliance_healthy_and_a_stopped_one_unhealthy() {
    let s = Scratch::new();
    let (http, api) = (free_port(), free_port());
    let mut serve = Command::new(provbox_bin());
    serve.arg("serve");
    loopback_env(&mut serve, &s, http);
    serve
        .env("PROVBOX_API_ENABLED", "true")
        .env("PROVBOX_API_BIND", format!("127.0.0.1:{api}"));
    let mut p = Proc::spawn(&mut serve);
    // The overrides reached serve: it listens where the variables say.
    p.wait_for(
        &["listening", &format!("127.0.0.1:{http}")],
        Duration::from_secs(20),
    );
    p.wait_for(
        &["listening", &format!("127.0.0.1:{api}")],
        Duration::from_secs(20),
    );

    let health = |api: Option<u16>| {
        let mut c = Command::new(provbox_bin());
        c.arg("healthcheck");
        loopback_env(&mut c, &s, http);
        if let Some(port) = api {
            c.env("PROVBOX_API_ENABLED", "true")
                .env("PROVBOX_API_BIND", format!("127.0.0.1:{port}"));
        }
        run(&mut c, Duration::from_secs(30))
    };
    // The API's /healthz, as the container's HEALTHCHECK asks it.
    let out = health(Some(api));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).starts_with("healthy:") && text(&out.stdout).contains("/healthz: 200"),
        "{}",
        text(&out.stdout)
    );
    // With the API disabled, the HTTP file server is asked instead.
    let out = health(None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("the API is disabled"),
        "{}",
        text(&out.stdout)
    );
    // Nothing answers on another port.
    let out = health(Some(free_port()));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("unhealthy:"),
        "{}",
        text(&out.stdout)
    );

    drop(p);
    let out = health(Some(api));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("unhealthy:"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_bad_environment_override_exits_64_naming_the_variable() {
    let s = Scratch::new();
    for sub in ["serve", "healthcheck"] {
        let mut c = Command::new(provbox_bin());
        c.arg(sub);
        loopback_env(&mut c, &s, free_port());
        c.env("PROVBOX_TFTP_RETRIES", "several");
        let out = run(&mut c, Duration::from_secs(30));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{sub}: {err}");
        assert!(
            err.contains("environment variable PROVBOX_TFTP_RETRIES")
                && err.contains("tftp.retries"),
            "{sub}: {err}"
        );
    }
}
