//! DHCP with real clients in network namespaces (root; CI runs as root): the `dhcpd`
//! example bound to one end of a veth pair (SO_BINDTODEVICE, server_ip taken from the
//! interface), busybox udhcpc and ISC dhclient on the other end, broadcast and unicast
//! replies (ARP entry) both exercised. Model policies, the 66/67 fallback, a
//! reservation, INIT-REBOOT with dhclient's lease file, and a restart after SIGKILL.

mod dhcp_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dhcp_support::dhcpd;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed");
}

/// Two namespaces joined by a veth pair; removed on drop (which removes the veth too).
struct Net {
    srv: String,
    cli: String,
    sif: String,
    cif: String,
}

impl Net {
    fn new(tag: &str) -> Net {
        let pid = std::process::id();
        let n = Net {
            srv: format!("pbdhcp-{pid}-{tag}-s"),
            cli: format!("pbdhcp-{pid}-{tag}-c"),
            // Interface names are at most 15 bytes.
            sif: format!("d{}{tag}s", pid % 100_000),
            cif: format!("d{}{tag}c", pid % 100_000),
        };
        sh(&["ip", "netns", "add", &n.srv]);
        sh(&["ip", "netns", "add", &n.cli]);
        sh(&[
            "ip", "link", "add", &n.sif, "type", "veth", "peer", "name", &n.cif,
        ]);
        sh(&["ip", "link", "set", &n.sif, "netns", &n.srv]);
        sh(&["ip", "link", "set", &n.cif, "netns", &n.cli]);
        sh(&[
            "ip",
            "-n",
            &n.srv,
            "addr",
            "add",
            "198.18.0.1/16",
            "dev",
            &n.sif,
        ]);
        for (ns, ifc) in [(&n.srv, &n.sif), (&n.cli, &n.cif)] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", ifc, "up"]);
        }
        n
    }

    fn set_client_mac(&self, mac: &str) {
        sh(&["ip", "-n", &self.cli, "link", "set", &self.cif, "down"]);
        sh(&[
            "ip", "-n", &self.cli, "link", "set", &self.cif, "address", mac,
        ]);
        sh(&["ip", "-n", &self.cli, "link", "set", &self.cif, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.srv])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.cli])
            .status();
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(net: &Net, dir: &Path) -> Server {
    let config = dir.join("dhcpd.toml");
    // No server_ip: it must come from the bound interface (198.18.0.1).
    std::fs::write(
        &config,
        format!(
            r#"
[state]
dir = "{state}"
[dhcp]
bind = "0.0.0.0:67"
interface = "{sif}"
pool = "198.18.5.10-198.18.5.20"
router = "198.18.0.1"
dns = ["198.18.0.1"]
lease_time = "10m"
provisioning_url = "http://{{server}}/{{model}}.img;<MAC>.cfg"
[[dhcp.policy]]
name = "450HD over HTTPS"
match = {{ vendor_class = "450HD" }}
provisioning_url = "https://{{server}}/450HD.img;<MAC>.cfg"
[[dhcp.policy]]
name = "445HD over TFTP"
match = {{ model = "445HD" }}
tftp_server = "{{server}}"
boot_file = "445HD.img"
[[dhcp.reservation]]
mac = "00:90:8f:aa:bb:cc"
ip = "198.18.5.77"
"#,
            state = dir.join("state").display(),
            sif = net.sif
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.srv])
        .arg(dhcpd())
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start dhcpd: {e}"));
    let out = child.stdout.take().unwrap_or_else(|| panic!("stdout"));
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.starts_with("listening 0.0.0.0:67 server_ip 198.18.0.1"),
        "dhcpd said {line:?}"
    );
    Server(child)
}

/// Runs busybox udhcpc once in the client namespace; returns the env of its `bound` call.
fn udhcpc(net: &Net, dir: &Path, extra: &[&str]) -> HashMap<String, String> {
    let out = dir.join("udhcpc.env");
    let _ = std::fs::remove_file(&out);
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
            out.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    sh(&["chmod", "+x", &script.to_string_lossy()]);
    let st = Command::new("timeout")
        .args([
            "30", "ip", "netns", "exec", &net.cli, "busybox", "udhcpc", "-i", &net.cif, "-f", "-q",
            "-n", "-t", "5", "-T", "1",
        ])
        .args(["-s", &script.to_string_lossy()])
        .args(extra)
        .status()
        .unwrap_or_else(|e| panic!("udhcpc: {e}"));
    assert!(st.success(), "udhcpc got no lease ({extra:?})");
    read_env(&out)
}

fn read_env(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// udhcpc shows options it does not know as `optNNN` in hex.
fn opt_text(env: &HashMap<String, String>, code: u8) -> Option<String> {
    let v = env.get(&format!("opt{code}"))?;
    match hex_decode(v) {
        Some(b) => {
            Some(String::from_utf8(b).unwrap_or_else(|e| panic!("option {code} is not text: {e}")))
        }
        None => Some(v.clone()),
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[test]
fn udhcpc_models_reservation_and_restart() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let net = Net::new("u");
    net.set_client_mac("00:90:8f:00:00:41");
    let mut server = start_server(&net, dir.path());

    // 450HD asking for 160: unicast reply (no broadcast flag; the server adds an ARP entry).
    let env = udhcpc(
        &net,
        dir.path(),
        &["-V", "450HD", "-O", "160", "-O", "66", "-O", "67"],
    );
    let ip = env
        .get("ip")
        .cloned()
        .unwrap_or_else(|| panic!("no ip in {env:?}"));
    assert!(ip.starts_with("198.18.5."), "{ip}");
    assert_eq!(
        opt_text(&env, 160).as_deref(),
        Some("https://198.18.0.1/450HD.img;<MAC>.cfg"),
        "{env:?}"
    );
    assert_eq!(env.get("serverid").map(String::as_str), Some("198.18.0.1"));
    assert_eq!(env.get("router").map(String::as_str), Some("198.18.0.1"));
    assert_eq!(env.get("subnet").map(String::as_str), Some("255.255.0.0"));

    // The same MAC as a 445HD, broadcast flag set: same address, 66/67 and no 160.
    let env = udhcpc(
        &net,
        dir.path(),
        &[
            "-B",
            "-V",
            "AUDC-445HD",
            "-O",
            "160",
            "-O",
            "66",
            "-O",
            "67",
        ],
    );
    assert_eq!(env.get("ip"), Some(&ip), "a MAC keeps its address");
    assert_eq!(
        env.get("tftp").map(String::as_str),
        Some("198.18.0.1"),
        "{env:?}"
    );
    assert_eq!(
        env.get("bootfile").map(String::as_str),
        Some("445HD.img"),
        "{env:?}"
    );
    assert_eq!(opt_text(&env, 160), None);

    // A reserved MAC gets its address.
    net.set_client_mac("00:90:8f:aa:bb:cc");
    let env = udhcpc(&net, dir.path(), &["-V", "450HD", "-O", "160"]);
    assert_eq!(env.get("ip").map(String::as_str), Some("198.18.5.77"));

    // SIGKILL the server, restart it: the reserved MAC and the pool MAC keep their addresses.
    let _ = server.0.kill();
    let _ = server.0.wait();
    drop(server);
    let _server = start_server(&net, dir.path());
    let env = udhcpc(&net, dir.path(), &["-V", "450HD"]);
    assert_eq!(env.get("ip").map(String::as_str), Some("198.18.5.77"));
    net.set_client_mac("00:90:8f:00:00:41");
    let env = udhcpc(&net, dir.path(), &["-V", "450HD"]);
    assert_eq!(
        env.get("ip"),
        Some(&ip),
        "the pool lease survived the SIGKILL"
    );
}

#[test]
fn dhclient_lease_options_and_init_reboot() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for network namespaces (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let net = Net::new("d");
    let _server = start_server(&net, dir.path());
    let conf = dir.path().join("dhclient.conf");
    std::fs::write(
        &conf,
        "option provisioning-url code 160 = text;\nsend vendor-class-identifier \"450HD\";\ntimeout 20;\nretry 1;\n\
         request subnet-mask, routers, domain-name-servers, tftp-server-name, bootfile-name, provisioning-url;\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let env_file = dir.path().join("dhclient.env");
    let script = dir.path().join("dhclient.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv >> {}\necho --- >> {}\nexit 0\n",
            env_file.display(),
            env_file.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    sh(&["chmod", "+x", &script.to_string_lossy()]);
    let lease_file = dir.path().join("dhclient.leases");
    let run = |want: &str| -> HashMap<String, String> {
        let _ = std::fs::remove_file(&env_file);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &net.cli, "dhclient", "-4", "-d", "-1"])
            .arg("-cf")
            .arg(&conf)
            .arg("-sf")
            .arg(&script)
            .arg("-lf")
            .arg(&lease_file)
            .arg("-pf")
            .arg(dir.path().join("dhclient.pid"))
            .arg(&net.cif)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("dhclient: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut found = None;
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&env_file)
                && let Some(block) = text
                    .split("---")
                    .find(|b| b.contains(&format!("reason={want}\n")))
            {
                found = Some(block.to_string());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        let block = found.unwrap_or_else(|| {
            panic!(
                "dhclient never reported {want}: {}",
                std::fs::read_to_string(&env_file).unwrap_or_default()
            )
        });
        block
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    };
    let env = run("BOUND");
    let ip = env
        .get("new_ip_address")
        .cloned()
        .unwrap_or_else(|| panic!("{env:?}"));
    assert!(ip.starts_with("198.18.5."), "{ip}");
    assert_eq!(
        env.get("new_provisioning_url").map(String::as_str),
        Some("https://198.18.0.1/450HD.img;<MAC>.cfg"),
        "{env:?}"
    );
    assert_eq!(
        env.get("new_dhcp_server_identifier").map(String::as_str),
        Some("198.18.0.1")
    );
    assert_eq!(
        env.get("new_dhcp_lease_time").map(String::as_str),
        Some("600")
    );
    // Second run with the lease file: INIT-REBOOT (REQUEST with option 50, no server id).
    let env = run("REBOOT");
    assert_eq!(env.get("new_ip_address"), Some(&ip));
}
