//! Helpers for the black-box integration tests: hashing, running third-party clients
//! with a deadline, and a loopback appliance in a temporary directory.
//!
//! Tests never skip for a missing client: a missing tool fails the test with the
//! command that installs it, because a test skipped in CI is a test that does not exist.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(p: &Path) -> String {
    sha256(&std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Panics with an install hint when a client program is missing.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: run `sudo scripts/install-test-deps.sh` (the README's test command does)"
    );
}

/// Runs a command with a deadline, killing it (by PID) when it overruns. Output is
/// read while the command runs, so a chatty command cannot fill a pipe and hang.
pub fn run(cmd: &mut Command, deadline: Duration) -> Output {
    use std::io::Read;
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let (o, e) = (
                    out.join().unwrap_or_default(),
                    err.join().unwrap_or_default(),
                );
                panic!(
                    "{desc} did not finish within {deadline:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&o),
                    String::from_utf8_lossy(&e)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{desc}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The `provbox` binary built alongside the tests (target/<profile>/provbox).
pub fn provbox_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test path {}", exe.display()));
    let bin = profile_dir.join("provbox");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p provbox`",
        bin.display()
    );
    bin
}

/// A temporary directory with `store/` and `state/`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::create_dir_all(dir.path().join("store")).unwrap_or_else(|e| panic!("mkdir: {e}"));
        Scratch { dir }
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// Writes a file into the store atomically (temp name, then rename).
    pub fn put(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.store().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ));
        std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename: {e}"));
        path
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `provbox import-leases --config CFG --from FROM FILE`: its exit code and its
/// stdout and stderr together.
pub fn import_leases(cfg: &Path, from: &str, file: &Path) -> (Option<i32>, String) {
    let o = run(
        Command::new(provbox_bin())
            .args(["import-leases", "--config"])
            .arg(cfg)
            .args(["--from", from])
            .arg(file),
        Duration::from_secs(30),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}
