//! `provbox export-dhcp`: every format passes its real server's own config check
//! (`dhcpd -t`, `kea-dhcp4 -t`, `dnsmasq --test`), and the real servers, run in a
//! network namespace with the exported file, give busybox udhcpc clients what provbox's
//! policies say: first match wins, case-insensitive substrings, 160 only when asked,
//! 66/67 always, the defaults only when no policy matched, per-client {mac}/{model}.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use provbox_tests::{Scratch, provbox_bin, require, run};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../provbox.example.toml")
}

/// Every matcher kind, exact and substring, forced 160, per-client templates, extra
/// options of each kind, reservations with and without host names.
const KITCHEN_SINK: &str = r#"
[dhcp]
server_ip = "192.0.2.1"
pool = "192.0.2.100-192.0.2.199"
router = "192.0.2.1"
dns = ["192.0.2.1", "192.0.2.2"]
ntp = ["192.0.2.3"]
domain_name = "lab.example"
lease_time = "2h"
renew_time = "30m"
rebind_time = "90m"
provisioning_url = "http://{server}/{model}.img;{mac}.cfg"
tftp_server = "{server}"
boot_file = "{model}_{mac}.img"

[[dhcp.policy]]
name = "exact 450HD, forced"
match = { vendor_class = "450HD", exact = true }
provisioning_url = "https://{server}/450HD.img;<MAC>.cfg"
force_160 = true
option = [{ code = 2, hex = "00000e10" }, { code = 150, ip = ["192.0.2.9"] }]

[[dhcp.policy]]
name = "user class with \"quotes\", a.b and (parens)"
match = { user_class = "UC \"q\" a.b (x)*" }
boot_file = "{mac}.img"

[[dhcp.policy]]
name = "model + OUI"
match = { model = "445HD", mac_prefix = "00:90:8f" }
tftp_server = "{server}"
boot_file = "{model}.img"

[[dhcp.policy]]
name = "one phone"
match = { mac = "00:90:8f:12:34:56" }
provisioning_url = "tftp://{server}/{mac}/;<MAC>.cfg"
option = [{ code = 43, text = "vendor, with comma" }]

[[dhcp.policy]]
name = "relay ports"
match = { circuit_id = "eth0/1", remote_id = "switch-7" }
provisioning_url = "ftp://{server}/;<MAC>.cfg"

[[dhcp.reservation]]
mac = "00:90:8f:12:34:56"
ip = "192.0.2.50"
hostname = "phone-50"

[[dhcp.reservation]]
mac = "00:90:8f:12:34:57"
ip = "192.0.2.51"

[[dhcp.option]]
code = 42
ip = ["192.0.2.3"]

[[dhcp.option]]
code = 252
text = "http://192.0.2.1/wpad.dat"
"#;

fn export(config: &Path, format: &str, extra: &[&str]) -> std::process::Output {
    run(
        Command::new(provbox_bin())
            .args(["export-dhcp", "--format", format, "--config"])
            .arg(config)
            .args(extra),
        Duration::from_secs(30),
    )
}

fn export_to(config: &Path, format: &str, out: &Path) {
    let o = export(config, format, &["--output", &out.display().to_string()]);
    assert!(o.status.success(), "export {format}: {}", text(&o.stderr));
}

/// The server's own check of `file`: (passed, what it said).
fn check(format: &str, file: &Path) -> (bool, String) {
    let mut cmd = match format {
        "isc" => {
            let mut c = Command::new("dhcpd");
            c.args(["-t", "-cf"]).arg(file);
            c
        }
        "kea" => {
            let mut c = Command::new("kea-dhcp4");
            c.arg("-t").arg(file);
            c
        }
        _ => {
            let mut c = Command::new("dnsmasq");
            c.arg("--test")
                .arg(format!("--conf-file={}", file.display()));
            c
        }
    };
    let out = run(&mut cmd, Duration::from_secs(60));
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn require_checkers() {
    for tool in ["dhcpd", "kea-dhcp4", "dnsmasq"] {
        require(tool);
    }
}

#[test]
fn every_format_passes_its_servers_own_config_check() {
    require_checkers();
    let s = Scratch::new();
    let sink = s.dir.path().join("sink.toml");
    std::fs::write(&sink, KITCHEN_SINK).unwrap();
    for (name, config) in [("example", example()), ("sink", sink)] {
        for format in ["isc", "kea", "dnsmasq"] {
            let out = s.dir.path().join(format!("{name}.{format}"));
            export_to(&config, format, &out);
            let (ok, said) = check(format, &out);
            assert!(
                ok,
                "{format} rejects the export of {name}:\n{said}\n---\n{}",
                std::fs::read_to_string(&out).unwrap()
            );
            // The check can fail: the same file with one broken line is refused.
            let broken = s.dir.path().join(format!("{name}.broken.{format}"));
            let mut body = std::fs::read_to_string(&out).unwrap();
            match format {
                "kea" => body = body.replacen("\"client-classes\"", "\"client-clases\"", 1),
                "isc" => body.push_str("class \"x\" { match if ; }\n"),
                _ => body.push_str("dhcp-range=not-an-address\n"),
            }
            std::fs::write(&broken, body).unwrap();
            let (ok, _) = check(format, &broken);
            assert!(!ok, "{format}'s check accepted a broken file");
        }
    }
}

#[test]
fn exports_keep_policy_order_and_say_how_they_approximate() {
    let s = Scratch::new();
    let sink = s.dir.path().join("sink.toml");
    std::fs::write(&sink, KITCHEN_SINK).unwrap();
    let get = |format: &str| {
        let o = export(&sink, format, &[]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let isc = get("isc");
    let pos = |hay: &str, needle: &str| {
        hay.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{hay}"))
    };
    assert!(pos(&isc, "class \"provbox-1\"") < pos(&isc, "class \"provbox-2\""));
    assert!(pos(&isc, "class \"provbox-5\"") < pos(&isc, "class \"provbox-default\""));
    // Exact match anchors; regex metacharacters and quotes are escaped.
    assert!(
        isc.contains(r#"~~ "^[[:space:]]*450HD[[:space:]]*$""#),
        "{isc}"
    );
    assert!(isc.contains(r#"UC \"q\" a\\.b \\(x\\)\\*"#), "{isc}");
    // Forced 160 and the always-sent 66/67 join the client's request list.
    assert!(isc.contains("concat(pick-first-value(option dhcp-parameter-request-list, \"\"), a0)"));
    assert!(isc.contains("host provbox-reservation-1 {"));

    let kea: serde_json::Value = serde_json::from_str(&get("kea")).unwrap();
    let classes = kea["Dhcp4"]["client-classes"].as_array().unwrap();
    let names: Vec<&str> = classes
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "provbox-1",
            "provbox-2",
            "provbox-3",
            "provbox-4",
            "provbox-5",
            "provbox-default"
        ]
    );
    assert!(
        classes[2]["test"]
            .as_str()
            .unwrap()
            .contains("not member('provbox-1') and not member('provbox-2')")
    );
    let forced = &classes[0]["option-data"][0];
    assert_eq!(forced["name"], "provbox-160");
    assert_eq!(forced["always-send"], true);
    // {mac}/{model} need Kea's flex_option hook.
    let hooks = kea["Dhcp4"]["hooks-libraries"][0]["library"]
        .as_str()
        .unwrap();
    assert!(hooks.ends_with("libdhcp_flex_option.so"), "{hooks}");

    let dm = get("dnsmasq");
    assert!(
        dm.contains("tag-if=set:pb3,tag:pb3m,tag:!pb1m,tag:!pb2m"),
        "{dm}"
    );
    assert!(dm.contains("dhcp-option-force=tag:pb1,160,"), "{dm}");
    assert!(dm.contains("`exact = true` cannot be expressed"), "{dm}");
    assert!(
        dm.contains("dhcp-host=00:90:8f:12:34:56,192.0.2.50,phone-50"),
        "{dm}"
    );
}

#[test]
fn a_template_naming_server_needs_an_address_and_the_error_says_how_to_give_one() {
    let s = Scratch::new();
    let cfg = s.dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[dhcp]\npool = \"192.0.2.100-192.0.2.199\"\n[[dhcp.policy]]\nmatch = { model = \"450HD\" }\nprovisioning_url = \"http://{server}/x.img\"\n",
    )
    .unwrap();
    let o = export(&cfg, "dnsmasq", &[]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("`dhcp.policy[0].provisioning_url`") && err.contains("--server"),
        "{err}"
    );
    let o = export(&cfg, "dnsmasq", &["--server", "provbox.lab.example"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("\"http://provbox.lab.example/x.img\""));
    // A bad provbox config exits 64, like serve.
    std::fs::write(&cfg, "[dhcp]\nbogus = 1\n").unwrap();
    assert_eq!(export(&cfg, "isc", &[]).status.code(), Some(64));
}

// ------------------------------------------------------------------ behaviour

/// Two network namespaces joined by a veth pair: the server's side has 198.18.0.1/24.
struct Lab {
    server: String,
    client: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            server: format!("pbx-ex{tag}-s-{pid}"),
            client: format!("pbx-ex{tag}-c-{pid}"),
        };
        for ns in [&lab.server, &lab.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
        }
        ip(&[
            "link",
            "add",
            "vs",
            "netns",
            &lab.server,
            "type",
            "veth",
            "peer",
            "name",
            "vc",
            "netns",
            &lab.client,
        ]);
        ip(&[
            "-n",
            &lab.server,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "vs",
        ]);
        for (ns, dev) in [
            (&lab.server, "vs"),
            (&lab.server, "lo"),
            (&lab.client, "vc"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        lab
    }
    fn in_server(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.server, program]);
        c
    }
    /// A DHCP exchange by busybox udhcpc with this MAC and option 60; the options it
    /// got, as udhcpc's script sees them (`opt160` decoded to text).
    fn lease(
        &self,
        dir: &Path,
        mac: &str,
        vendor: &str,
        ask_160: bool,
    ) -> BTreeMap<String, String> {
        ip(&["-n", &self.client, "link", "set", "vc", "down"]);
        ip(&["-n", &self.client, "link", "set", "vc", "address", mac]);
        ip(&["-n", &self.client, "link", "set", "vc", "up"]);
        let out_file = dir.join(format!("lease-{}.env", mac.replace(':', "")));
        let _ = std::fs::remove_file(&out_file);
        let script = dir.join("udhcpc.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
                out_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut args: Vec<String> = [
            "udhcpc", "-i", "vc", "-f", "-q", "-n", "-t", "8", "-T", "1", "-s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(script.display().to_string());
        args.extend([
            "-V".to_string(),
            vendor.to_string(),
            "-O".into(),
            "66".into(),
            "-O".into(),
            "67".into(),
        ]);
        if ask_160 {
            args.extend(["-O".to_string(), "160".to_string()]);
        }
        let out = run(
            Command::new("ip")
                .args(["netns", "exec", &self.client, "busybox"])
                .args(&args),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success() && out_file.is_file(),
            "no lease for {mac} / {vendor}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        std::fs::read_to_string(&out_file)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| ["opt160", "tftp", "bootfile", "ip"].contains(k))
            .map(|(k, v)| {
                let v = if k == "opt160" {
                    text(&hex::decode(v).unwrap())
                } else {
                    v.to_string()
                };
                (k.to_string(), v)
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args), Duration::from_secs(10));
    assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
}

/// A server process, killed by PID on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Server {
    let log = std::fs::File::create(log).unwrap();
    Server(
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
    )
}

/// The policies the behaviour tests export.
const LAB: &str = r#"
[dhcp]
interface = "vs"
server_ip = "198.18.0.1"
pool = "198.18.0.100-198.18.0.150"
router = "198.18.0.1"
provisioning_url = "http://{server}/{model}.img;{mac}.cfg"

[[dhcp.policy]]
name = "450HD over HTTPS"
match = { vendor_class = "450HD" }
provisioning_url = "https://{server}/450HD.img;<MAC>.cfg"

[[dhcp.policy]]
name = "445HD over TFTP"
match = { model = "445HD" }
tftp_server = "{server}"
boot_file = "{model}.img"

[[dhcp.policy]]
name = "AudioCodes OUI"
match = { mac_prefix = "02:90:8f" }
provisioning_url = "ftp://{server}/;<MAC>.cfg"
"#;

/// The cases every server must get right; `per_client` is what the defaults' URL
/// becomes for MAC 02:00:00:00:00:04 with option 60 "Other".
fn behaves_like_provbox(lab: &Lab, dir: &Path, server: &str, per_client: &str) {
    let get = |mac: &str, vendor: &str, ask: bool| {
        let l = lab.lease(dir, mac, vendor, ask);
        assert!(
            l.get("ip").is_some_and(|ip| ip.starts_with("198.18.0.")),
            "{server}: {l:?}"
        );
        l
    };
    // Policy 1 wins over policy 3 (same client matches both): first match wins.
    let l = get("02:90:8f:00:00:01", "450HD", true);
    assert_eq!(
        l.get("opt160").map(String::as_str),
        Some("https://198.18.0.1/450HD.img;<MAC>.cfg"),
        "{server}: {l:?}"
    );
    assert!(
        !l.contains_key("tftp") && !l.contains_key("bootfile"),
        "{server}: {l:?}"
    );
    // The same phone not asking for 160 does not get it.
    let l = get("02:90:8f:00:00:01", "450HD", false);
    assert!(
        !l.contains_key("opt160"),
        "{server}: 160 sent unasked: {l:?}"
    );
    // Case-insensitive substring in option 60; 66/67 instead of 160; {model} pinned.
    let l = get("02:00:00:00:00:02", "audc-ipphone-445hd", true);
    assert_eq!(
        l.get("tftp").map(String::as_str),
        Some("198.18.0.1"),
        "{server}: {l:?}"
    );
    assert_eq!(
        l.get("bootfile").map(String::as_str),
        Some("445HD.img"),
        "{server}: {l:?}"
    );
    assert!(
        !l.contains_key("opt160"),
        "{server}: a 66/67 policy also sent 160: {l:?}"
    );
    // The OUI policy.
    let l = get("02:90:8f:00:00:03", "SomethingElse", true);
    assert_eq!(
        l.get("opt160").map(String::as_str),
        Some("ftp://198.18.0.1/;<MAC>.cfg"),
        "{server}: {l:?}"
    );
    // No policy: the defaults, with the per-client parts as this server can do them.
    let l = get("02:00:00:00:00:04", "Other", true);
    assert_eq!(
        l.get("opt160").map(String::as_str),
        Some(per_client),
        "{server}: {l:?}"
    );
}

fn lab_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("lab.toml");
    std::fs::write(&cfg, LAB).unwrap();
    cfg
}

#[test]
fn dnsmasq_with_the_export_serves_the_policies() {
    for tool in ["dnsmasq", "busybox", "ip"] {
        require(tool);
    }
    let s = Scratch::new();
    let conf = s.dir.path().join("provbox.dnsmasq");
    export_to(&lab_config(s.dir.path()), "dnsmasq", &conf);
    let lab = Lab::new("dm");
    let d = s.dir.path();
    let _server = spawn(
        lab.in_server("dnsmasq")
            .arg("--keep-in-foreground")
            .arg("--port=0")
            .arg(format!("--conf-file={}", conf.display()))
            .args([
                "--interface=vs",
                "--bind-interfaces",
                "--no-ping",
                "--user=root",
            ])
            .arg(format!("--dhcp-leasefile={}", d.join("leases").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg("--log-dhcp")
            .arg(format!(
                "--log-facility={}",
                d.join("dnsmasq.log").display()
            )),
        &d.join("dnsmasq.out"),
    );
    // dnsmasq has no per-client expression: the phone's own placeholders are sent.
    behaves_like_provbox(
        &lab,
        d,
        "dnsmasq",
        "http://198.18.0.1/<MODEL>.img;<MAC>.cfg",
    );
}

#[test]
fn isc_dhcpd_with_the_export_serves_the_policies() {
    for tool in ["dhcpd", "busybox", "ip"] {
        require(tool);
    }
    let s = Scratch::new();
    let d = s.dir.path();
    let conf = d.join("dhcpd.conf");
    export_to(&lab_config(d), "isc", &conf);
    // The lab's own settings around the export: no ping before offering (speed).
    let body = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("ping-check false;\n{body}")).unwrap();
    std::fs::write(d.join("dhcpd.leases"), "").unwrap();
    let lab = Lab::new("isc");
    let _server = spawn(
        lab.in_server("dhcpd")
            .args(["-f", "-d", "-4", "-cf"])
            .arg(&conf)
            .arg("-lf")
            .arg(d.join("dhcpd.leases"))
            .arg("-pf")
            .arg(d.join("dhcpd.pid"))
            .arg("vs"),
        &d.join("dhcpd.log"),
    );
    behaves_like_provbox(
        &lab,
        d,
        "dhcpd",
        "http://198.18.0.1/Other.img;020000000004.cfg",
    );
}

#[test]
fn kea_with_the_export_serves_the_policies() {
    for tool in ["kea-dhcp4", "busybox", "ip"] {
        require(tool);
    }
    let s = Scratch::new();
    let d = s.dir.path();
    let conf = d.join("kea-dhcp4.conf");
    export_to(&lab_config(d), "kea", &conf);
    // The lab's own settings around the export: leases in memory only.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    v["Dhcp4"]["lease-database"] = serde_json::json!({"type": "memfile", "persist": false});
    std::fs::write(&conf, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let lab = Lab::new("kea");
    let _server = spawn(
        lab.in_server("kea-dhcp4")
            .arg("-c")
            .arg(&conf)
            .env("KEA_LOCKFILE_DIR", d)
            .env("KEA_PIDFILE_DIR", d),
        &d.join("kea.log"),
    );
    behaves_like_provbox(
        &lab,
        d,
        "kea",
        "http://198.18.0.1/Other.img;020000000004.cfg",
    );
}
