//! HTTP and HTTPS file serving against real clients: curl for every behaviour of the
//! issue (Range, conditional requests, If-Range, traversal, HEAD), openssl s_client for
//! the TLS versions, and a raw socket for a phone's header probe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use provbox::Appliance;
use provbox_protocols::events::EventKind;
use provbox_tests::{Scratch, pattern, require, run, sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(60);

async fn start(s: &Scratch) -> Appliance {
    Appliance::builder()
        .store(s.store())
        .state(s.state())
        .loopback()
        .configure(|c| {
            c.dhcp.enabled = false;
            c.tftp.enabled = false;
            c.ftp.enabled = false;
            c.api.enabled = false;
        })
        .start()
        .await
        .unwrap()
}

/// Runs curl and returns (status line code, headers, body).
fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    require("curl");
    let dir = tempfile::tempdir().unwrap();
    let (h, b) = (dir.path().join("h"), dir.path().join("b"));
    let out = run(
        Command::new("curl")
            .args(["-s", "-S", "--max-time", "30", "-D"])
            .arg(&h)
            .arg("-o")
            .arg(&b)
            .args(["-w", "%{http_code}"])
            .args(args),
        T,
    );
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let headers = std::fs::read_to_string(&h).unwrap_or_default();
    (code, headers, std::fs::read(&b).unwrap_or_default())
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_head_ranges_and_conditional_requests() {
    let s = Scratch::new();
    let data = pattern(1_000_003, 7);
    s.put("450HD_3.4.8.198.img", &data);
    let app = start(&s).await;
    let a = app.addrs().http.unwrap();
    let u = url(a, "/450HD_3.4.8.198.img");
    let size = data.len();

    let zero_copy = provbox_storage::mapped::zero_copy_bytes();
    let (code, h, body) = curl(&[&u]);
    assert_eq!(code, 200);
    assert_eq!(sha256(&body), sha256(&data));
    // Plain HTTP sent the mapped image with sendfile, not by copying it.
    assert!(
        provbox_storage::mapped::zero_copy_bytes() - zero_copy >= size as u64,
        "the image body did not go out by sendfile"
    );
    let etag = header(&h, "etag").unwrap().to_string();
    assert_eq!(
        etag,
        format!("\"{}\"", sha256(&data)),
        "strong ETag from the content hash"
    );
    let lm = header(&h, "last-modified").unwrap().to_string();
    assert_eq!(header(&h, "accept-ranges"), Some("bytes"));
    assert_eq!(
        header(&h, "content-length"),
        Some(size.to_string().as_str())
    );

    // HEAD: the same headers, no body.
    // (curl -I writes the headers where the body would go: nothing else may be there.)
    let (code, h, body) = curl(&["-I", &u]);
    assert_eq!(code, 200);
    assert_eq!(String::from_utf8_lossy(&body), h, "HEAD returned a body");
    assert_eq!(
        header(&h, "content-length"),
        Some(size.to_string().as_str())
    );

    // Single ranges.
    for (range, start, end) in [
        ("0-99", 0, 99),
        ("1000-1999", 1000, 1999),
        ("-100", size - 100, size - 1),
        ("999990-", 999_990, size - 1),
        ("1000000-2000000", 1_000_000, size - 1),
    ] {
        let (code, h, body) = curl(&["-r", range, &u]);
        assert_eq!(code, 206, "range {range}");
        assert_eq!(body, &data[start..=end], "range {range}");
        assert_eq!(
            header(&h, "content-range").unwrap(),
            format!("bytes {start}-{end}/{size}")
        );
    }
    let (code, h, _) = curl(&["-r", &format!("{size}-"), &u]);
    assert_eq!(code, 416);
    assert_eq!(
        header(&h, "content-range").unwrap(),
        format!("bytes */{size}")
    );
    // Several ranges: the whole file.
    let (code, _, body) = curl(&["-r", "0-9,20-29", &u]);
    assert_eq!((code, body.len()), (200, size));

    // Conditional requests.
    let (code, _, body) = curl(&["-H", &format!("If-None-Match: {etag}"), &u]);
    assert_eq!((code, body.len()), (304, 0));
    let (code, _, _) = curl(&["-H", "If-None-Match: \"other\"", &u]);
    assert_eq!(code, 200);
    let (code, _, _) = curl(&["-H", &format!("If-Modified-Since: {lm}"), &u]);
    assert_eq!(code, 304);
    let (code, _, _) = curl(&["-H", "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT", &u]);
    assert_eq!(code, 200);
    let (code, _, _) = curl(&["-H", "If-Match: \"other\"", &u]);
    assert_eq!(code, 412);

    // If-Range: a stale validator gets the whole (new) file, a current one the range.
    let (code, _, body) = curl(&["-r", "0-99", "-H", "If-Range: \"stale\"", &u]);
    assert_eq!(
        (code, body.len()),
        (200, size),
        "stale If-Range must give the whole file"
    );
    let (code, _, body) = curl(&["-r", "0-99", "-H", &format!("If-Range: {etag}"), &u]);
    assert_eq!((code, body.len()), (206, 100));
    let (code, _, _) = curl(&["-r", "0-99", "-H", &format!("If-Range: {lm}"), &u]);
    assert_eq!(code, 206);
    let (code, _, _) = curl(&[
        "-r",
        "0-99",
        "-H",
        "If-Range: Mon, 01 Jan 2001 00:00:00 GMT",
        &u,
    ]);
    assert_eq!(code, 200);

    // Missing file, wrong method.
    assert_eq!(curl(&[&url(a, "/nope.img")]).0, 404);
    assert_eq!(curl(&["-X", "PUT", "--data", "x", &u]).0, 405);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_in_any_spelling_gets_4xx_and_no_content() {
    let s = Scratch::new();
    std::fs::write(s.dir.path().join("secret.txt"), b"TOP-SECRET").unwrap();
    s.put("ok.cfg", b"fine");
    let app = start(&s).await;
    let a = app.addrs().http.unwrap();
    for p in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/ok/..%2f..%2fsecret.txt",
        "/%252e%252e/secret.txt",
        "/..%5csecret.txt",
        "/ok.cfg%00.img",
        "/.%2e/secret.txt",
    ] {
        let (code, _, body) = curl(&["--path-as-is", &url(a, p)]);
        assert!((400..500).contains(&code), "{p} gave {code}");
        assert!(
            !String::from_utf8_lossy(&body).contains("TOP-SECRET"),
            "{p} leaked content"
        );
    }
    assert_eq!(curl(&[&url(a, "/ok.cfg")]).2, b"fine");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_generated_certificate_and_wire_events() {
    let s = Scratch::new();
    let data = pattern(3 << 20, 3);
    s.put("UC450HD_3.4.8.198.img", &data);
    s.put("00908F123456.cfg", b"system/type=450HD\n");
    let app = start(&s).await;
    let a = app.addrs().https.unwrap();
    let cert = s.state().join("tls/cert.pem");
    let mut events = app.bus().subscribe();
    let ua = "AUDC/3.4.6.604 AUDC-IPPhone-450HD_UC_3.4.6.604/1";
    let (code, _, body) = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "-A",
        ua,
        &format!("https://{a}/450HD.img"),
    ]);
    assert_eq!(code, 200, "curl verified the generated certificate");
    assert_eq!(sha256(&body), sha256(&data));
    let (code, _, body) = curl(&[
        "--cacert",
        cert.to_str().unwrap(),
        "--http2",
        &format!("https://{a}/00:90:8F:12:34:56.cfg"),
    ]);
    assert_eq!((code, body.as_slice()), (200, &b"system/type=450HD\n"[..]));

    let mut started = None;
    let mut finished = None;
    let mut rtts = Vec::new();
    while finished.is_none() {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        match &ev.kind {
            EventKind::TransferStarted {
                id,
                path,
                file,
                size,
                user_agent,
                sha256: sha,
                ..
            } if file.ends_with(".img") => {
                assert_eq!(path, "/450HD.img");
                assert_eq!(file, "UC450HD_3.4.8.198.img");
                assert_eq!(*size, data.len() as u64);
                assert_eq!(user_agent.as_deref(), Some(ua));
                assert_eq!(sha, &sha256(&data));
                started = Some(*id);
            }
            // The connection's live TCP figures ride on the progress events.
            EventKind::TransferProgress { id, rtt_us, .. } if Some(*id) == started => {
                rtts.push(*rtt_us);
            }
            EventKind::TransferFinished {
                id,
                bytes,
                sha256: sha,
                retransmits,
                ..
            } if Some(*id) == started => {
                assert_eq!(*bytes, data.len() as u64);
                assert_eq!(*retransmits, 0, "loopback loses nothing");
                assert_eq!(sha, &sha256(&data));
                finished = Some(*id);
            }
            _ => {}
        }
    }
    assert!(
        !rtts.is_empty() && rtts.iter().all(|r| r.is_some_and(|us| us < 1_000_000)),
        "TCP round trips on progress events: {rtts:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_probe_is_recorded_as_an_abort_after_n_bytes() {
    let s = Scratch::new();
    let data = pattern(8 << 20, 4);
    s.put("450HD.img", &data);
    let app = start(&s).await;
    let a = app.addrs().http.unwrap();
    let mut events = app.bus().subscribe();
    let mut sock = tokio::net::TcpStream::connect(a).await.unwrap();
    sock.write_all(b"GET /450HD.img HTTP/1.1\r\nHost: x\r\nUser-Agent: AUDC-IPPhone/2.2.8.61 (450HD; 00908F602AAC)\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 2048];
    let mut got = 0;
    while got < 1024 {
        let n = sock.read(&mut buf[got..]).await.unwrap();
        assert!(n > 0);
        got += n;
    }
    drop(sock); // the phone has read its header and closes
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no abort event")
            .unwrap();
        match &ev.kind {
            EventKind::TransferFinished { .. } => {
                panic!("a header probe was recorded as a full download")
            }
            EventKind::TransferAborted { bytes, .. } => {
                assert!(*bytes < data.len() as u64, "aborted after {bytes} bytes");
                break;
            }
            _ => {}
        }
    }
    app.shutdown().await;
}

/// A download still running when shutdown starts finishes in the grace period, and the
/// journal records it finished (the tracker stops after the servers, not with them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_finishing_in_the_grace_period_is_journaled() {
    let s = Scratch::new();
    let data = pattern(8 << 20, 5);
    s.put("grace.img", &data);
    let configure = |c: &mut provbox_config::Config| {
        c.dhcp.enabled = false;
        c.tftp.enabled = false;
        c.ftp.enabled = false;
        c.api.enabled = false;
    };
    let app = Appliance::builder()
        .store(s.store())
        .state(s.state())
        .loopback()
        .grace(Duration::from_secs(20))
        .configure(configure)
        .start()
        .await
        .unwrap();
    let a = app.addrs().http.unwrap();
    let mut sock = tokio::net::TcpStream::connect(a).await.unwrap();
    sock.write_all(b"GET /grace.img HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = Vec::new();
    let n = sock.read(&mut buf).await.unwrap();
    got.extend_from_slice(&buf[..n]);
    // Shut down while most of the body is still to come.
    let stopping = tokio::spawn(app.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the download"
    );
    loop {
        let n = tokio::time::timeout(T, sock.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        sha256(&got[body_at..]),
        sha256(&data),
        "the whole file arrived"
    );
    tokio::time::timeout(T, stopping).await.unwrap().unwrap();

    // A restart rebuilds from the journal: the download is there, finished.
    let app = Appliance::builder()
        .store(s.store())
        .state(s.state())
        .loopback()
        .configure(configure)
        .start()
        .await
        .unwrap();
    let files: Vec<_> = app
        .tracker()
        .devices()
        .iter()
        .filter_map(|v| app.tracker().device(&v.key))
        .flat_map(|d| d.files)
        .filter(|f| f.file == "grace.img")
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].result, "finished", "{files:?}");
    assert_eq!(files[0].bytes, data.len() as u64);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_only_and_the_certificate_is_kept_across_restarts() {
    require("openssl");
    let s = Scratch::new();
    s.put("a.cfg", b"x");
    let app = start(&s).await;
    let a = app.addrs().https.unwrap();
    let connect = |flag: &str| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-connect", &a.to_string(), flag]);
        if flag == "-tls1_1" {
            // Make sure the client really offers TLS 1.1, so a failure is the server's refusal.
            cmd.args(["-cipher", "DEFAULT@SECLEVEL=0"]);
        }
        let out = run(&mut cmd, T);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = connect("-tls1_3");
    assert!(ok && text.contains("TLSv1.3"), "TLS 1.3 refused: {text}");
    let (ok, text) = connect("-tls1_2");
    assert!(ok && text.contains("TLSv1.2"), "TLS 1.2 refused: {text}");
    let (ok, text) = connect("-tls1_1");
    assert!(!ok, "TLS 1.1 was accepted: {text}");
    // The server's refusal arrives as an alert (rustls sends handshake_failure, 40).
    assert!(
        text.contains("alert handshake failure") || text.contains("alert protocol version"),
        "{text}"
    );

    let cert = std::fs::read(s.state().join("tls/cert.pem")).unwrap();
    app.shutdown().await;
    let app = start(&s).await;
    assert_eq!(
        std::fs::read(s.state().join("tls/cert.pem")).unwrap(),
        cert,
        "the certificate changed across a restart"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_during_a_download_arrives_whole_in_one_version() {
    let s = Scratch::new();
    let v1 = pattern(6 << 20, 10);
    let v2 = pattern(6 << 20, 11);
    let path = s.put("fw.img", &v1);
    let app = start(&s).await;
    let a = app.addrs().http.unwrap();
    // A slow client (2 MB/s) so the replacement lands mid-download.
    let u = url(a, "/fw.img");
    let dl = std::thread::spawn(move || curl(&["--limit-rate", "2M", &u]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    // In place, the way `cp new.img fw.img` does it.
    std::fs::write(&path, &v2).unwrap();
    let (code, _, body) = tokio::task::spawn_blocking(move || dl.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        sha256(&body),
        sha256(&v1),
        "the in-flight download did not finish with the version it started with"
    );
    // The next request gets the new version once it settled.
    let want = sha256(&v2);
    let mut ok = false;
    for _ in 0..100 {
        if sha256(&curl(&[&url(a, "/fw.img")]).2) == want {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the replaced file was never served");
    app.shutdown().await;
}
