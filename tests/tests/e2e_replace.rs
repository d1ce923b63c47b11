//! End-to-end: the firmware image is replaced while phones download it (issue #7
//! item 4) — first overwritten in place (truncated and rewritten in chunks, as `cp`
//! over it does), then replaced by a rename — and every phone still receives one whole
//! version. Simulated phones download over HTTP, HTTPS and TFTP throughout; paced
//! probes (the simulator's HTTP(S) client at 1.5 MiB/s on an image larger than the
//! loopback socket buffers, and the project's TFTP client slowed in its block
//! callback, since no TFTP client paces itself) guarantee that downloads of each
//! protocol are in flight across each replacement; curl fetches alongside.
//!
//! Checks: a download in flight finishes with the version it started with (the probes'
//! own hashes, and the bus's Started/Finished hashes); every image a phone received
//! validates (the simulator checks each section's checksum, so a mixed image is a
//! "CRC Error"); every whole image the bus and the tracker report hashes to one of the
//! versions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e_common;

use std::io::Write as _;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use e2e_common::*;
use provbox::Appliance;
use provbox::sim::Family;
use provbox::sim::fetch;
use provbox::tracker::PhoneState;
use provbox_protocols::events::{Proto, now_ms};
use provbox_protocols::tftp::client::{self, ClientOptions};
use sha2::{Digest as _, Sha256};

const VERSIONS: [&str; 3] = ["3.4.8.1", "3.4.8.2", "3.4.8.3"];
/// Larger than loopback's socket buffering (several MiB): the server is still reading
/// the image while the probes receive it.
const SIZES: [u64; 3] = [8 * MIB, 8 * MIB + 4 * KIB, 8 * MIB + 8 * KIB];
const NAME: &str = "450HD.img";
const PROBE_RATE: &str = "2M";

/// A download the test itself makes, slowly, from 127.0.0.1.
enum Probe {
    Curl(tokio::process::Child, PathBuf),
    Paced(tokio::task::JoinHandle<String>),
    Tftp(std::thread::JoinHandle<Result<client::FetchResult, client::ClientError>>),
}

impl Probe {
    fn curl(proto: Proto, app: &Appliance, ca: &Path, out: PathBuf) -> Probe {
        provbox_tests::require("curl");
        let a = app.addrs();
        let url = match proto {
            Proto::Http => format!("http://{}/{NAME}", a.http.unwrap()),
            _ => format!("https://{}/{NAME}", a.https.unwrap()),
        };
        let child = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--max-time",
                "40",
                "--limit-rate",
                PROBE_RATE,
            ])
            .arg("--cacert")
            .arg(ca)
            .arg("-o")
            .arg(&out)
            .arg(url)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Probe::Curl(child, out)
    }

    /// A plain HTTP/1.1 GET (TLS for HTTPS) over a socket with a 64 KiB receive
    /// buffer (no autotuning), read at 1.5 MiB/s: the server can run at most its send
    /// buffer ahead, so with the image larger than that it is still reading the image
    /// for seconds. (curl cannot shrink its receive buffer, and loopback autotuning
    /// lets a server push ~8 MiB into a slow reader at once.)
    fn paced(proto: Proto, app: &Appliance, ca: &Path) -> Probe {
        let a = app.addrs();
        let addr = match proto {
            Proto::Http => a.http.unwrap(),
            _ => a.https.unwrap(),
        };
        let tls = (proto == Proto::Https).then(|| fetch::tls_config(Some(ca)).unwrap());
        Probe::Paced(tokio::spawn(async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(64 * 1024).unwrap();
            let tcp = sock.connect(addr).await.unwrap();
            match tls {
                None => paced_get(tcp).await,
                Some(cfg) => {
                    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                    let s = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await
                        .unwrap();
                    paced_get(s).await
                }
            }
        }))
    }

    /// The project's TFTP client with each ACK held back ~0.25 ms: seconds for
    /// the image. The sleep blocks only this probe's own thread and runtime.
    fn tftp(server: SocketAddr) -> Probe {
        Probe::Tftp(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let opts = ClientOptions {
                blksize: Some(1428),
                tsize: true,
                retransmit: Duration::from_secs(1),
                retries: 5,
                keep_data: false,
                ..ClientOptions::default()
            };
            rt.block_on(client::fetch(server, NAME, opts, |_| {
                std::thread::sleep(Duration::from_micros(250))
            }))
        }))
    }

    /// The SHA-256 of what the probe received.
    async fn finish(self) -> String {
        match self {
            Probe::Curl(mut child, out) => {
                let st = tokio::time::timeout(Duration::from_secs(45), child.wait())
                    .await
                    .expect("curl overran its own --max-time")
                    .unwrap();
                assert!(st.success(), "curl probe failed: {st}");
                provbox_tests::sha256_file(&out)
            }
            Probe::Paced(h) => h.await.unwrap(),
            Probe::Tftp(h) => {
                let r = tokio::task::spawn_blocking(move || h.join())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                assert!(r.complete);
                r.sha256.expect("hashed by default")
            }
        }
    }
}

/// GET /NAME on `s`, reading the body at 1.5 MiB/s; returns the body's SHA-256.
async fn paced_get(mut s: impl AsyncRead + AsyncWrite + Unpin) -> String {
    s.write_all(
        format!("GET /{NAME} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: provbox-e2e-probe\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    let body_start = loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed before the headers");
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let len: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut h = Sha256::new();
    h.update(&head[body_start..]);
    let mut got = (head.len() - body_start) as u64;
    let start = tokio::time::Instant::now();
    let rate = 1.5 * MIB as f64;
    while got < len {
        let due = start + Duration::from_secs_f64(got as f64 / rate);
        tokio::time::sleep_until(due).await;
        let want = buf.len().min((len - got) as usize);
        let n = s.read(&mut buf[..want]).await.unwrap();
        assert!(n > 0, "the server closed after {got} of {len} bytes");
        h.update(&buf[..n]);
        got += n as u64;
    }
    hex::encode(h.finalize())
}

/// Waits (bounded) until a probe of each protocol, started at or after `since_ms` from
/// 127.0.0.1, has delivered some bytes and is still running.
async fn probes_in_flight(log: &EventLog, since_ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let xs = log.transfers();
        let running = |p: Proto| {
            xs.iter().any(|x| {
                x.proto == p
                    && x.peer_ip == std::net::Ipv4Addr::LOCALHOST
                    && x.started_ms >= since_ms
                    && x.progress >= 128 * KIB
                    && x.end.is_none()
            })
        };
        if [Proto::Http, Proto::Https, Proto::Tftp]
            .into_iter()
            .all(running)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probes did not get going: {xs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until the store serves `sha` under [`NAME`].
async fn store_serves(app: &Appliance, sha: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while app.store().index().find(NAME).map(|e| e.sha256.clone()) != Some(sha.to_string()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never switched {NAME} to {sha}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rewrites `path` in place: truncate, then 256 KiB chunks a few milliseconds apart,
/// so the file is visibly half-written for a while. Returns (start, end) in ms.
fn overwrite_in_place(path: &Path, bytes: &[u8]) -> (u64, u64) {
    let start = now_ms();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    for chunk in bytes.chunks(256 * 1024) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    drop(f);
    (start, now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_replaced_during_downloads() {
    let lab = Lab::new();
    let path = lab.store().join(NAME);
    let images: Vec<Vec<u8>> = (0..3)
        .map(|i| image_bytes("450HD", VERSIONS[i], SIZES[i]))
        .collect();
    let shas: Vec<String> = images.iter().map(|b| provbox_tests::sha256(b)).collect();
    std::fs::write(&path, &images[0]).unwrap();

    // Phones of one model; their MAC picks the protocol (policies on MAC prefixes).
    let groups = [
        ("00:90:8f:e3:01", Proto::Http, 3),
        ("00:90:8f:e3:02", Proto::Https, 3),
        ("00:90:8f:e3:03", Proto::Tftp, 4),
    ];
    let mut fleet = provbox::sim::Fleet::new();
    let mut i = 0;
    for (prefix, proto, n) in groups {
        let g = provbox::sim::Fleet::generate(
            n,
            &["450HD"],
            Family::Uc,
            format!("{prefix}:01").parse().unwrap(),
        );
        for mut p in g.specs {
            fast(&mut p, i, 2500);
            p.max_boots = 12;
            if proto != Proto::Tftp {
                // ~1 s per image: HTTP(S) downloads overlap the replacements.
                p.faults.slow = Some(8 * MIB);
            }
            lab.config_file(p.mac, "450HD");
            fleet = fleet.phone(p);
            i += 1;
        }
    }
    let specs = fleet.specs.clone();
    let app = lab
        .start(|c| {
            c.dhcp.policies = groups
                .iter()
                .map(|(prefix, proto, _)| {
                    mac_policy(&proto.to_string(), prefix, &url_for(*proto, NAME))
                })
                .collect();
        })
        .await;
    store_serves(&app, &shas[0]).await;
    let log = EventLog::start(&app);
    let target = lab.target(&app);
    let run = tokio::spawn(fleet.run(target, None));
    let ca = lab.state().join("tls/cert.pem");
    let tftp_addr = app.addrs().tftp.unwrap();

    // Round 1: probes on version 1, then overwrite in place with version 2.
    let t1 = now_ms();
    let batch1 = vec![
        (Proto::Http, Probe::paced(Proto::Http, &app, &ca)),
        (Proto::Https, Probe::paced(Proto::Https, &app, &ca)),
        (
            Proto::Https,
            Probe::curl(Proto::Https, &app, &ca, lab.dir.path().join("p1-curl")),
        ),
        (Proto::Tftp, Probe::tftp(tftp_addr)),
    ];
    probes_in_flight(&log, t1).await;
    let img2 = images[1].clone();
    let p2 = path.clone();
    let w1 = tokio::task::spawn_blocking(move || overwrite_in_place(&p2, &img2))
        .await
        .unwrap();
    store_serves(&app, &shas[1]).await;

    // Round 2: probes on version 2, then replace by rename with version 3.
    let t2 = now_ms();
    let batch2 = vec![
        (Proto::Http, Probe::paced(Proto::Http, &app, &ca)),
        (Proto::Https, Probe::paced(Proto::Https, &app, &ca)),
        (
            Proto::Http,
            Probe::curl(Proto::Http, &app, &ca, lab.dir.path().join("p2-curl")),
        ),
        (Proto::Tftp, Probe::tftp(tftp_addr)),
    ];
    probes_in_flight(&log, t2).await;
    let w2_start = now_ms();
    let tmp = lab.store().join("incoming.part");
    std::fs::write(&tmp, &images[2]).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let w2 = (w2_start, now_ms());
    store_serves(&app, &shas[2]).await;

    // New downloads get the new version at once.
    let after = vec![
        Probe::curl(Proto::Https, &app, &ca, lab.dir.path().join("p3-https")),
        Probe::tftp(tftp_addr),
    ];
    for probe in after {
        assert_eq!(
            probe.finish().await,
            shas[2],
            "a download started after the rename"
        );
    }

    // Downloads in flight finish with the version they started with.
    for (round, batch, sha, w) in [(1, batch1, &shas[0], w1), (2, batch2, &shas[1], w2)] {
        for (proto, probe) in batch {
            let got = probe.finish().await;
            assert_eq!(
                &got, sha,
                "round {round}: the {proto} probe started on version {round} but received something else"
            );
        }
        // The bus agrees, and shows the probes straddling the replacement.
        let xs = log.transfers();
        for proto in [Proto::Http, Proto::Https, Proto::Tftp] {
            let x = xs
                .iter()
                .find(|x| {
                    x.proto == proto
                        && x.peer_ip == std::net::Ipv4Addr::LOCALHOST
                        && x.started_ms < w.0
                        && x.finished_ms().is_some_and(|f| f > w.1)
                        && x.sha_started == *sha
                })
                .unwrap_or_else(|| {
                    panic!(
                        "round {round}: no {proto} download across the replacement {w:?}: {xs:#?}"
                    )
                });
            assert_eq!(x.whole(), Some(sha.as_str()), "{x:?}");
        }
    }

    let report = run.await.unwrap().unwrap();
    eprintln!("fleet: {} ms", report.elapsed_ms);
    assert!(report.all_provisioned(), "{}", report.table());

    // Every whole image on the bus is one version, the one it started with, at that
    // version's size.
    let xs = log.transfers();
    let images_sent: Vec<&Xfer> = xs
        .iter()
        .filter(|x| x.file == NAME && x.whole().is_some())
        .collect();
    for x in &images_sent {
        let k = shas
            .iter()
            .position(|s| Some(s.as_str()) == x.whole())
            .unwrap_or_else(|| panic!("a whole image with an unknown hash: {x:?}"));
        assert_eq!(x.sha_started, shas[k], "{x:?}");
        assert_eq!(x.file_size, SIZES[k] + (8 - SIZES[k] % 8) % 8, "{x:?}");
    }
    for x in &xs {
        if let Some(End::Finished { sha256, .. }) = &x.end {
            assert_eq!(&x.sha_started, sha256, "{x:?}");
        }
    }

    // Every phone: provisioned, no image failed its checksums, running one of the
    // versions; the tracker agrees on every image it sent the phone.
    for spec in &specs {
        let mac = spec.mac.to_string();
        let p = phone(&report, &mac);
        assert!(p.provisioned, "{mac}: {:?}", p.errors);
        assert_eq!(p.crc_errors, 0, "{mac}: a mixed image? {:?}", p.errors);
        assert!(p.burns >= 1, "{mac}");
        assert!(
            VERSIONS.contains(&p.final_version.as_str()),
            "{mac}: {}",
            p.final_version
        );
        let d = settled(&app, &mac, PhoneState::Provisioned).await;
        assert_journey(&d, &UPGRADE_JOURNEY);
        let ip = p.ip.unwrap();
        let sent: Vec<&&Xfer> = images_sent.iter().filter(|x| x.peer_ip == ip).collect();
        assert!(!sent.is_empty(), "{mac}: no whole image on the bus");
        let whole_files: Vec<_> = d
            .files
            .iter()
            .filter(|f| f.file == NAME && f.result == "finished" && f.bytes == f.file_size)
            .collect();
        assert_eq!(whole_files.len(), sent.len(), "{mac}: {:#?}", d.files);
        assert!(whole_files.iter().all(|f| shas.contains(&f.sha256)));
        // The version the phone runs is the one in the last whole image it was sent.
        let last = sent.iter().max_by_key(|x| x.id).unwrap();
        let k = shas
            .iter()
            .position(|s| Some(s.as_str()) == last.whole())
            .unwrap();
        assert_eq!(p.final_version, VERSIONS[k], "{mac}");
    }
    app.shutdown().await;
}
