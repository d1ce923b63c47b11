//! Explicit FTPS (AUTH TLS) with curl and lftp, including the 200-of-200 reliability
//! check for the libunftp AUTH TLS race, a deterministic form of that race (AUTH TLS and
//! the ClientHello in one write), and a failed data-channel handshake that must not
//! break the session.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod ftp_common;

use std::io::{Read, Write};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;

use ftp_common::*;

const SMALL: usize = 64 * 1024;

async fn start() -> (Ftp, Vec<u8>, Vec<u8>) {
    let small = content(SMALL, 7);
    let big = content(3 * 1024 * 1024 + 17, 8);
    let ftp = Ftp::start(&[("cfg/small.cfg", &small), ("big.img", &big)], |c| {
        c.ftps = true
    })
    .await;
    (ftp, small, big)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_ssl_reqd_200_of_200() {
    let (ftp, small, big) = start().await;
    let cacert = ftp.cert_pem.clone().unwrap();
    let cacert = cacert.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let dest = dest.to_str().unwrap();
    let url = ftp.url("/cfg/small.cfg");
    let mut failures = Vec::new();
    for i in 0..200 {
        let _ = std::fs::remove_file(dest);
        // --ssl-reqd: AUTH TLS, then PBSZ 0 / PROT P, so the data channel is TLS too.
        let out = curl(&["--ssl-reqd", "--cacert", cacert, "-o", dest, &url]).await;
        let good = ok(&out) && std::fs::read(dest).map(|b| b == small).unwrap_or(false);
        if !good {
            failures.push(format!("run {i}: {}", text(&out)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 FTPS downloads failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // A larger file over a protected data channel, checked by hash.
    let out = curl(&[
        "--ssl-reqd",
        "--cacert",
        cacert,
        "-o",
        dest,
        &ftp.url("/big.img"),
    ])
    .await;
    assert!(ok(&out), "{}", text(&out));
    assert_eq!(sha(&std::fs::read(dest).unwrap()), sha(&big));
    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lftp_ftps_with_protected_data() {
    let (ftp, _, big) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = lftp(
        &ftp,
        &format!(
            "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ftp:ssl-protect-list true; set ssl:verify-certificate no; \
             ls; get big.img -o {}/big",
            dir.path().display()
        ),
    )
    .await;
    assert!(ok(&out), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("big.img"),
        "{}",
        text(&out)
    );
    assert_eq!(
        sha(&std::fs::read(dir.path().join("big")).unwrap()),
        sha(&big)
    );
    ftp.stop().await;
}

fn read_line(s: &mut impl Read) -> String {
    // Byte by byte: nothing after the line (TLS records) may be consumed here.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        let n = s.read(&mut b).unwrap();
        assert_eq!(
            n,
            1,
            "connection closed after {:?}",
            String::from_utf8_lossy(&line)
        );
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// The client sends `AUTH TLS` and its ClientHello in one write, before the 234 reply:
/// the race's worst case. Unpatched libunftp 0.24.0 fails this every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tls_with_the_client_hello_in_the_same_write() {
    let (ftp, _, _) = start().await;
    let addr = ftp.addr;
    let cert = ftp.cert_pem.clone().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        for round in 0..20 {
            let mut conn = rustls::ClientConnection::new(
                Arc::new(cfg.clone()),
                "localhost".try_into().unwrap(),
            )
            .unwrap();
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(BOUND)).unwrap();
            assert!(read_line(&mut tcp).starts_with("220"));
            let mut first = b"AUTH TLS\r\n".to_vec();
            conn.write_tls(&mut first).unwrap();
            tcp.write_all(&first).unwrap();
            let reply = read_line(&mut tcp);
            assert!(reply.starts_with("234"), "round {round}: {reply}");
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            tls.write_all(b"USER anonymous\r\n").unwrap();
            assert!(read_line(&mut tls).starts_with("331"), "round {round}");
            tls.write_all(b"PASS phone@\r\n").unwrap();
            assert!(read_line(&mut tls).starts_with("230"), "round {round}");
            // A second AUTH TLS inside TLS is refused, and the session goes on.
            tls.write_all(b"AUTH TLS\r\n").unwrap();
            assert!(read_line(&mut tls).starts_with("503"), "round {round}");
            tls.write_all(b"SIZE /big.img\r\n").unwrap();
            assert_eq!(
                read_line(&mut tls).trim(),
                format!("213 {}", 3 * 1024 * 1024 + 17)
            );
        }
    })
    .await
    .unwrap();
    ftp.stop().await;
}

/// PROT P, then a data connection that does not speak TLS: the transfer fails with a
/// reply and the session goes on (unpatched libunftp panicked in the data task and
/// never replied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_data_channel_handshake_does_not_break_the_session() {
    let (ftp, _, _) = start().await;
    let mut c = Control::login(ftp.addr, "anonymous", "x").await;
    assert_eq!(c.cmd("PBSZ 0").await.0, 200);
    assert_eq!(c.cmd("PROT P").await.0, 200);
    let data = c.epsv(ftp.addr.ip()).await;
    let mut sock = tokio::net::TcpStream::connect(data).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut sock, b"this is not a TLS ClientHello\r\n\r\n")
        .await
        .unwrap();
    let (code, t) = c.cmd("RETR /big.img").await;
    let final_code = if code == 150 { c.reply().await.0 } else { code };
    assert!(
        (400..600).contains(&final_code),
        "{code} {t} then {final_code}"
    );
    drop(sock);
    assert_eq!(c.cmd("NOOP").await.0, 200);
    assert_eq!(c.cmd("SIZE /cfg/small.cfg").await.0, 213);
    ftp.stop().await;
}
