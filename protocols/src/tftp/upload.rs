//! WRQ: refused unless `[tftp] upload_dir` is set (phones that push their logs).
//!
//! An upload is confined to that directory (the path goes through the store's
//! resolver, and the directory it lands in must still be inside `upload_dir` once
//! symlinks are resolved), capped at `upload_max` bytes (announced tsize or bytes
//! received, whichever shows it first), held in memory and written to a hidden
//! temporary file renamed into place only once complete: a reader never sees half
//! an upload. An existing file of that name is replaced.

use std::path::{Path, PathBuf};
use std::time::Duration;

use provbox_storage::resolve;

use super::netascii;
use super::packet::{self, ErrorCode, MIN_BLKSIZE, Mode, Options, Packet, ack_packet};
use super::server::{Job, Shared};
use super::transfer::{self, RecvEnd, RecvParams, Sink};

/// Longest wait for a repeated final DATA after the last ACK.
const DALLY_MAX: Duration = Duration::from_secs(2);

pub(super) async fn serve(sh: &Shared, job: Job) {
    let Job { peer, req, rx, .. } = job;
    let cfg = sh.cfg();
    let Some(dir) = cfg.upload_dir.clone() else {
        return sh.refuse(
            peer,
            &req.filename,
            ErrorCode::AccessViolation,
            "uploads are disabled",
            "write request refused: uploads are disabled".into(),
        );
    };
    let rel = match resolve::resolve(&req.filename.replace('\\', "/")) {
        Ok(r) => r,
        Err(reason) => {
            return sh.refuse(
                peer,
                &req.filename,
                ErrorCode::AccessViolation,
                "access violation",
                format!("upload path refused: {reason}"),
            );
        }
    };
    let asked = req.known_options();
    let max = cfg.upload_max;
    if asked.tsize.is_some_and(|t| t > max) {
        let msg = format!("upload larger than the {max}-byte limit");
        return sh.refuse(peer, &req.filename, ErrorCode::DiskFull, &msg, msg.clone());
    }
    let mut g = Options::default();
    if let Some(b) = asked.blksize {
        g.blksize = Some(b.min(cfg.max_blksize.max(MIN_BLKSIZE)));
    }
    g.timeout = asked.timeout;
    g.tsize = asked.tsize;
    if let Some(w) = asked.windowsize {
        g.windowsize = Some(w.min(cfg.max_windowsize.max(1)));
    }
    let params = RecvParams {
        blksize: g.blksize.unwrap_or(packet::DEFAULT_BLKSIZE),
        windowsize: g.windowsize.unwrap_or(1),
        timeout: g
            .timeout
            .map_or(cfg.timeout.get(), |t| Duration::from_secs(u64::from(t))),
        retries: cfg.retries,
    };
    let opening = if g.is_empty() {
        ack_packet(0).to_vec()
    } else {
        Packet::Oack(g.to_pairs()).encode()
    };
    let mut link = match sh.link(peer, rx).await {
        Ok(l) => l,
        Err(e) => {
            return sh.refuse(
                peer,
                &req.filename,
                ErrorCode::NotDefined,
                "server busy, try again",
                format!("no transfer socket: {e}"),
            );
        }
    };
    let netascii = req.mode != Mode::Octet;
    let mut decoder = netascii::Decoder::new();
    let mut data: Vec<u8> = Vec::new();
    let mut wire_bytes: u64 = 0;
    let mut sink = |block: &[u8]| {
        wire_bytes += block.len() as u64;
        if wire_bytes > max {
            return Sink::Stop(
                ErrorCode::DiskFull,
                format!("upload larger than the {max}-byte limit"),
            );
        }
        if netascii {
            decoder.decode(block, &mut data);
        } else {
            data.extend_from_slice(block);
        }
        Sink::Continue
    };
    let end = transfer::receive(
        &mut link,
        &params,
        opening,
        true,
        None,
        &mut sink,
        sh.cancel(),
    )
    .await;
    match end {
        RecvEnd::Done { last, .. } => {
            decoder.finish(&mut data);
            match store_upload(&dir, &rel, data).await {
                Ok(path) => {
                    tracing::info!(%peer, path = %path.display(), bytes = wire_bytes, "TFTP upload stored");
                    metrics::counter!("provbox_tftp_uploads_total", "result" => "stored")
                        .increment(1);
                }
                Err(e) => {
                    tracing::error!(%peer, dir = %dir.display(), file = %rel, error = %e, "TFTP: cannot store an upload (check [tftp] upload_dir)");
                    metrics::counter!("provbox_tftp_uploads_total", "result" => "failed")
                        .increment(1);
                }
            }
            transfer::dally(&mut link, last, params.timeout.min(DALLY_MAX)).await;
        }
        other => {
            tracing::info!(%peer, file = %rel, end = ?other, "TFTP upload not completed");
            metrics::counter!("provbox_tftp_uploads_total", "result" => "aborted").increment(1);
        }
    }
}

/// Writes an upload to `dir/rel` through a temporary file and a rename.
async fn store_upload(dir: &Path, rel: &str, data: Vec<u8>) -> std::io::Result<PathBuf> {
    let (dir, rel) = (dir.to_path_buf(), rel.to_string());
    tokio::task::spawn_blocking(move || {
        let target = dir.join(&rel);
        let parent = target.parent().unwrap_or(&dir).to_path_buf();
        std::fs::create_dir_all(&parent)?;
        // Confinement: a symlinked directory inside upload_dir must not lead out of it.
        if !parent.canonicalize()?.starts_with(dir.canonicalize()?) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "upload path leaves the upload directory",
            ));
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".upload-{}-{name}", rand::random::<u64>()));
        std::fs::write(&tmp, &data)?;
        std::fs::rename(&tmp, &target).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(target)
    })
    .await
    .map_err(std::io::Error::other)?
}
