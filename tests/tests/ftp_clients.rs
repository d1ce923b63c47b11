//! FTP with real clients (curl, lftp) against the real server on loopback: login,
//! listings, RETR checked by sha256, REST, EPSV and PASV, refused writes, traversal and
//! CWD outside the root, the transfer events a download produces.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod ftp_common;

use ftp_common::*;
use provbox_protocols::EventKind;

const IMG: usize = 8 * 1024 * 1024 + 123;

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("450HD_3.4.8.img", content(IMG, 1)),
        ("001122334455.cfg", b"[system]\ntype=450HD\n".to_vec()),
        ("lab/notes.txt", b"inside a directory\n".to_vec()),
    ]
}

async fn start() -> (Ftp, Vec<(&'static str, Vec<u8>)>) {
    let f = files();
    let refs: Vec<(&str, &[u8])> = f.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    (Ftp::start(&refs, |_| {}).await, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_list_retr_rest_epsv_pasv() {
    let (ftp, files) = start().await;
    let img = &files[0].1;
    let mut rx = ftp.bus.subscribe();

    // Anonymous login + LIST of the root.
    let out = curl(&[&ftp.url("/")]).await;
    assert!(ok(&out), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    for name in ["450HD_3.4.8.img", "001122334455.cfg", "lab"] {
        assert!(listing.contains(name), "LIST lacks {name}: {listing}");
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('d') && l.ends_with("lab")),
        "{listing}"
    );
    // NLST.
    let out = curl(&["-l", &ftp.url("/lab/")]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "notes.txt",
        "{}",
        text(&out)
    );

    // RETR over EPSV (curl's default) and over PASV, checked by hash.
    for extra in [&[][..], &["--disable-epsv"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("img");
        let mut args = vec!["-o", dest.to_str().unwrap()];
        args.extend_from_slice(extra);
        let url = ftp.url("/450HD_3.4.8.img");
        args.push(&url);
        let zero_copy = provbox_storage::mapped::zero_copy_bytes();
        let out = curl(&args).await;
        assert!(ok(&out), "{extra:?}: {}", text(&out));
        assert_eq!(sha(&std::fs::read(&dest).unwrap()), sha(img), "{extra:?}");
        // The plain data connection sent the mapped image with sendfile.
        assert!(
            provbox_storage::mapped::zero_copy_bytes() - zero_copy >= IMG as u64,
            "{extra:?}: the image did not go out by sendfile"
        );
    }

    // The first download's events: started with the client's address, finished with
    // the hash of what was served.
    let started = wait_event(&mut rx, |k| matches!(k, EventKind::TransferStarted { .. }))
        .await
        .unwrap();
    let EventKind::TransferStarted {
        id,
        peer,
        path,
        file,
        size,
        offset,
        sha256,
        proto,
        ..
    } = started
    else {
        unreachable!()
    };
    assert_eq!(peer.ip().to_string(), "127.0.0.1");
    assert_eq!(
        (path.as_str(), file.as_str()),
        ("/450HD_3.4.8.img", "450HD_3.4.8.img")
    );
    assert_eq!((size, offset), (IMG as u64, 0));
    assert_eq!(sha256, sha(img));
    assert_eq!(proto.to_string(), "ftp");
    let finished = wait_event(
        &mut rx,
        |k| matches!(k, EventKind::TransferFinished { id: i, .. } if *i == id),
    )
    .await
    .unwrap();
    let EventKind::TransferFinished { bytes, sha256, .. } = finished else {
        unreachable!()
    };
    assert_eq!((bytes, sha256), (IMG as u64, sha(img)));

    // REST: resume from an offset; the tail must match, and the event says where it started.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("part");
    let offset = 1_000_001usize;
    std::fs::write(&dest, &img[..offset]).unwrap();
    let mut rx = ftp.bus.subscribe();
    let out = curl(&[
        "-C",
        "-",
        "-o",
        dest.to_str().unwrap(),
        &ftp.url("/450HD_3.4.8.img"),
    ])
    .await;
    assert!(ok(&out), "{}", text(&out));
    assert_eq!(sha(&std::fs::read(&dest).unwrap()), sha(img));
    let started = wait_event(&mut rx, |k| matches!(k, EventKind::TransferStarted { .. }))
        .await
        .unwrap();
    let EventKind::TransferStarted {
        offset: o, size: s, ..
    } = started
    else {
        unreachable!()
    };
    assert_eq!((o, s), (offset as u64, (IMG - offset) as u64));

    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lftp_login_mlsd_and_get() {
    let (ftp, files) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // lftp lists with MLSD when FEAT offers it, and checks sizes with SIZE/MDTM.
    let out = lftp(&ftp, &format!("set ftp:use-mlsd yes; cls -l; get 450HD_3.4.8.img -o {d}/img; cd lab; get notes.txt -o {d}/notes")).await;
    assert!(ok(&out), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("450HD_3.4.8.img") && listing.contains("lab/"),
        "{listing}"
    );
    assert_eq!(
        sha(&std::fs::read(dir.path().join("img")).unwrap()),
        sha(&files[0].1)
    );
    assert_eq!(std::fs::read(dir.path().join("notes")).unwrap(), files[2].1);
    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_mdtm_mlst_and_model_alias() {
    let (ftp, files) = start().await;
    let mut c = Control::login(ftp.addr, "anonymous", "phone@").await;
    let (code, t) = c.cmd("SIZE /450HD_3.4.8.img").await;
    assert_eq!((code, t.trim()), (213, format!("213 {IMG}").as_str()));
    let (code, t) = c.cmd("MDTM 001122334455.cfg").await;
    assert_eq!(code, 213, "{t}");
    assert_eq!(t.trim().len(), "213 20261125182959".len(), "{t}");
    let (code, t) = c.cmd("MLST /lab/notes.txt").await;
    assert_eq!(code, 250, "{t}");
    assert!(
        t.contains(&format!("size={}", files[2].1.len())) && t.contains("type=file"),
        "{t}"
    );
    // The store's model alias: `450HD.img` is the newest 450HD image.
    let (code, t) = c.cmd("SIZE 450HD.img").await;
    assert_eq!((code, t.trim()), (213, format!("213 {IMG}").as_str()));
    // The MAC file in another spelling.
    let (code, _) = c.cmd("SIZE 00-11-22-33-44-55.cfg").await;
    assert_eq!(code, 213);
    let (code, _) = c.cmd("SIZE missing.img").await;
    assert_eq!(code, 550);
    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_without_an_upload_area() {
    let (ftp, _) = start().await;
    let mut rx = ftp.bus.subscribe();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("evil.img");
    std::fs::write(&src, b"not firmware").unwrap();
    let out = curl(&["-T", src.to_str().unwrap(), &ftp.url("/evil.img")]).await;
    assert!(!ok(&out), "STOR succeeded: {}", text(&out));
    assert!(!ftp.root.join("evil.img").exists());
    let refused = wait_event(&mut rx, |k| matches!(k, EventKind::TransferRefused { .. }))
        .await
        .unwrap();
    let EventKind::TransferRefused { path, peer, .. } = refused else {
        unreachable!()
    };
    assert_eq!(
        (path.as_str(), peer.ip().to_string().as_str()),
        ("/evil.img", "127.0.0.1")
    );

    let mut c = Control::login(ftp.addr, "anonymous", "x").await;
    for cmd in ["DELE 001122334455.cfg", "MKD newdir", "RMD lab"] {
        let (code, t) = c.cmd(cmd).await;
        assert_eq!(code, 550, "{cmd}: {t}");
    }
    // RNFR names an existing file (350); the rename itself is refused.
    assert_eq!(c.cmd("RNFR 001122334455.cfg").await.0, 350);
    assert_eq!(c.cmd("RNTO renamed.cfg").await.0, 550);
    assert!(ftp.root.join("001122334455.cfg").exists() && ftp.root.join("lab").is_dir());
    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_cwd_outside_the_root_are_refused() {
    let (ftp, _) = start().await;
    // A file outside the store that traversal would reach.
    let secret = ftp.root.parent().unwrap().join("secret.txt");
    std::fs::write(&secret, b"secret").unwrap();

    let out = curl(&["--path-as-is", &ftp.url("/../secret.txt")]).await;
    assert!(
        !ok(&out) && !String::from_utf8_lossy(&out.stdout).contains("secret"),
        "{}",
        text(&out)
    );
    let out = curl(&["-Q", "CWD ..", &ftp.url("/")]).await;
    assert!(!ok(&out), "CWD .. at the root succeeded: {}", text(&out));

    let mut c = Control::login(ftp.addr, "anonymous", "x").await;
    for cmd in [
        "CWD ..",
        "CWD /..",
        "CWD /lab/../..",
        "CWD ../state",
        "CWD %2e%2e",
        "CWD /nonexistent",
        "CWD 001122334455.cfg",
    ] {
        let (code, t) = c.cmd(cmd).await;
        assert_eq!(code, 550, "{cmd}: {t}");
    }
    assert!(c.cmd("PWD").await.1.contains("\"/\""));
    for cmd in [
        "SIZE ../secret.txt",
        "SIZE /lab/../../secret.txt",
        "SIZE %2e%2e/secret.txt",
        "SIZE .hidden",
        "MDTM ../secret.txt",
    ] {
        let (code, t) = c.cmd(cmd).await;
        assert_eq!(code, 550, "{cmd}: {t}");
    }
    // Inside the root, `..` is fine.
    assert_eq!(c.cmd("CWD lab").await.0, 250);
    assert_eq!(c.cmd("CWD ..").await.0, 250);
    assert_eq!(c.cmd("SIZE lab/../001122334455.cfg").await.0, 213);

    // RETR with traversal: refused, nothing sent, and said so on the bus.
    let mut rx = ftp.bus.subscribe();
    let data = c.epsv(ftp.addr.ip()).await;
    let mut sock = tokio::net::TcpStream::connect(data).await.unwrap();
    let (code, t) = c.cmd("RETR ../secret.txt").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(
        BOUND,
        tokio::io::AsyncReadExt::read_to_end(&mut sock, &mut got),
    )
    .await;
    // libunftp answers 150 before the backend refuses; the final reply is 550.
    let final_code = if code == 150 { c.reply().await.0 } else { code };
    assert_eq!(final_code, 550, "{t}");
    assert!(got.is_empty());
    let refused = wait_event(&mut rx, |k| matches!(k, EventKind::TransferRefused { .. }))
        .await
        .unwrap();
    assert!(
        matches!(refused, EventKind::TransferRefused { ref path, .. } if path.contains("secret")),
        "{refused:?}"
    );
    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_probe_is_an_abort() {
    let (ftp, _) = start().await;
    let mut rx = ftp.bus.subscribe();
    // curl reads the first KiB and closes the data connection, as a phone checking the
    // image header does.
    let out = curl(&["-r", "0-1023", &ftp.url("/450HD_3.4.8.img")]).await;
    assert_eq!(out.stdout.len(), 1024, "{}", text(&out));
    let started = wait_event(&mut rx, |k| matches!(k, EventKind::TransferStarted { .. }))
        .await
        .unwrap();
    let EventKind::TransferStarted { id, .. } = started else {
        unreachable!()
    };
    let end = wait_event(&mut rx, |k| match k {
        EventKind::TransferAborted { id: i, .. } | EventKind::TransferFinished { id: i, .. } => {
            *i == id
        }
        _ => false,
    })
    .await
    .unwrap();
    let EventKind::TransferAborted { bytes, reason, .. } = end else {
        panic!("expected an abort, got {end:?}")
    };
    assert!(bytes < IMG as u64, "{bytes}");
    assert!(reason.contains("closed the data connection"), "{reason}");
    ftp.stop().await;
}

/// RETR, an early close of the data connection, then ABOR and QUIT in one write (what
/// curl does after a ranged read, only faster): the session answers QUIT every time.
/// libunftp 0.24's QUIT handler waited on the one-slot channel its own control loop
/// drains; with the aborted RETR's result in that slot the session hung for good
/// (vendor/libunftp/PROVBOX-PATCH.md, item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abor_and_quit_after_an_early_close_never_hang() {
    use tokio::io::AsyncReadExt;
    let (ftp, _) = start().await;
    for i in 0..40 {
        let mut c = Control::login(ftp.addr, "anonymous", "ftp@example.com").await;
        assert_eq!(c.cmd("TYPE I").await.0, 200);
        let data_addr = c.epsv(ftp.addr.ip()).await;
        let mut data = tokio::net::TcpStream::connect(data_addr).await.unwrap();
        let (code, text) = c.cmd("RETR 450HD_3.4.8.img").await;
        assert!(code == 150 || code == 125, "{text}");
        let mut head = [0u8; 1024];
        data.read_exact(&mut head).await.unwrap();
        drop(data);
        c.send("ABOR\r\nQUIT").await;
        // The RETR's end, ABOR's reply and QUIT's 221, in whichever order the server
        // produces the first two; `reply` fails the test if one does not come in time.
        let mut codes = Vec::new();
        loop {
            let (code, _) = c.reply().await;
            codes.push(code);
            if code == 221 || code == 0 {
                break;
            }
        }
        assert_eq!(codes.last(), Some(&221), "iteration {i}: replies {codes:?}");
    }
    ftp.stop().await;
}
