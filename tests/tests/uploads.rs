//! Phone log uploads over every protocol that takes them, with curl: HTTP PUT (as
//! Polycom phones do, `<mac>-app.log`), TFTP WRQ and FTP STOR. Each stored upload is an
//! event and an entry on the phone's timeline (the MAC in the file name ties it to the
//! phone); HTTP answers 201/204/413/403 as a web server would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use provbox::Appliance;
use provbox_config::FtpUser;
use provbox_protocols::events::{EventKind, Proto};
use provbox_tests::{Scratch, pattern, require, run};

/// sha256("secret").
const SECRET_HASH: &str = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
const MAX: u64 = 100_000;
const POLY_UA: &str = "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application";

async fn curl(args: Vec<String>) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .args(args);
    tokio::task::spawn_blocking(move || run(&mut cmd, Duration::from_secs(30)))
        .await
        .unwrap()
}

fn code(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_logs_are_stored_and_shown_on_the_phones_timeline() {
    require("curl");
    let s = Scratch::new();
    let up = s.state().join("uploads");
    let (http_up, tftp_up, ftp_up) = (up.join("http"), up.join("tftp"), up.join("ftp"));
    let app = Appliance::builder()
        .store(s.store())
        .state(s.state())
        .loopback()
        .configure(|c| {
            c.dhcp.enabled = false;
            c.http.upload_dir = Some(http_up.clone());
            c.http.upload_max = MAX;
            c.tftp.upload_dir = Some(tftp_up.clone());
            c.tftp.upload_max = MAX;
            c.ftp.upload_dir = Some(ftp_up.clone());
            c.ftp.upload_max = MAX;
            c.ftp.users.push(FtpUser {
                name: "phones".into(),
                password_hash: SECRET_HASH.into(),
                upload: true,
            });
        })
        .start()
        .await
        .unwrap();
    let mut events = app.bus().subscribe();
    let a = app.addrs().clone();
    let port = |x: Option<SocketAddr>| x.unwrap().port();
    let http = format!("http://127.0.0.1:{}", port(a.http));
    let https = format!("https://127.0.0.1:{}", port(a.https));

    let log = s.state().join("app.log");
    std::fs::write(&log, pattern(60_000, 1)).unwrap();
    let big = s.state().join("big.log");
    std::fs::write(&big, pattern(MAX as usize + 1, 2)).unwrap();
    let put = |file: &std::path::Path, url: String| {
        vec![
            "-A".to_string(),
            POLY_UA.to_string(),
            "-k".to_string(),
            "-T".to_string(),
            file.display().to_string(),
            url,
        ]
    };

    // HTTP PUT: 201 new, 204 replaced (HTTPS, same area), 413 over the cap, 403 out of the area.
    let o = curl(put(&log, format!("{http}/0004f2a0b1c2-app.log"))).await;
    assert_eq!(code(&o), "201", "{o:?}");
    let o = curl(put(&log, format!("{https}/0004f2a0b1c2-app.log"))).await;
    assert_eq!(code(&o), "204", "{o:?}");
    let o = curl(put(&big, format!("{http}/0004f2a0b1c2-boot.log"))).await;
    assert_eq!(code(&o), "413", "{o:?}");
    let mut esc = put(&log, format!("{http}/../escape.log"));
    esc.insert(0, "--path-as-is".into());
    let o = curl(esc).await;
    assert_eq!(code(&o), "403", "{o:?}");
    assert_eq!(
        std::fs::read(http_up.join("0004f2a0b1c2-app.log")).unwrap(),
        pattern(60_000, 1)
    );
    // Other methods: 405, and Allow names PUT.
    let o = curl(vec![
        "-X".into(),
        "DELETE".into(),
        "-D".into(),
        "-".into(),
        format!("{http}/0004f2a0b1c2-app.log"),
    ])
    .await;
    let head = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(
        head.contains("allow: get, head, put") && head.ends_with("405"),
        "{head}"
    );
    // TFTP WRQ (a subdirectory is made) and FTP STOR.
    let o = curl(vec![
        "-T".into(),
        log.display().to_string(),
        format!(
            "tftp://127.0.0.1:{}/logs/0004f2a0b1c2-boot.log",
            port(a.tftp)
        ),
    ])
    .await;
    assert!(o.status.success(), "{o:?}");
    let o = curl(vec![
        "-T".into(),
        log.display().to_string(),
        format!(
            "ftp://phones:secret@127.0.0.1:{}/upload/0004f2a0b1c2-phone.cfg",
            port(a.ftp)
        ),
    ])
    .await;
    assert!(o.status.success(), "{o:?}");
    for (dir, name) in [
        (&tftp_up, "logs/0004f2a0b1c2-boot.log"),
        (&ftp_up, "0004f2a0b1c2-phone.cfg"),
    ] {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            pattern(60_000, 1),
            "{name}"
        );
    }
    // Only whole uploads under their names; no temporaries left.
    let names = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&http_up), ["0004f2a0b1c2-app.log"]);

    // The bus: four stored, two failed, in protocol order.
    let (mut stored, mut failed) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored.len() < 4 || failed.len() < 2 {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("stored {stored:?}, failed {failed:?}"))
            .unwrap();
        match &ev.kind {
            EventKind::UploadStored {
                proto,
                path,
                bytes,
                user_agent,
                ..
            } => {
                assert_eq!(*bytes, 60_000, "{path}");
                if matches!(proto, Proto::Http | Proto::Https) {
                    assert_eq!(user_agent.as_deref(), Some(POLY_UA));
                }
                stored.push((*proto, path.clone()));
            }
            EventKind::UploadFailed {
                proto,
                path,
                reason,
                ..
            } => {
                failed.push((*proto, path.clone(), reason.clone()));
            }
            _ => {}
        }
    }
    assert_eq!(
        stored,
        [
            (Proto::Http, "0004f2a0b1c2-app.log".to_string()),
            (Proto::Https, "0004f2a0b1c2-app.log".to_string()),
            (Proto::Tftp, "logs/0004f2a0b1c2-boot.log".to_string()),
            (Proto::Ftp, "0004f2a0b1c2-phone.cfg".to_string()),
        ]
    );
    assert!(failed[0].2.contains("100000-byte limit"), "{failed:?}");
    assert!(failed[1].2.contains("refused"), "{failed:?}");

    // The tracker: the uploads are on the phone's timeline, found by the MAC in the name.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = app.tracker().device("00:04:f2:a0:b1:c2");
        let uploads: Vec<String> = d
            .iter()
            .flat_map(|d| d.timeline.iter())
            .filter(|t| t.kind == "upload" || t.kind == "upload_failed")
            .map(|t| t.text.clone())
            .collect();
        if uploads.len() == 5 {
            assert!(
                uploads
                    .iter()
                    .any(|t| t.contains("HTTP upload 0004f2a0b1c2-app.log stored (58.6 KiB)")),
                "{uploads:#?}"
            );
            assert!(
                uploads
                    .iter()
                    .any(|t| t.contains("not stored: upload larger than the 100000-byte limit")),
                "{uploads:#?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timeline uploads: {uploads:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}
