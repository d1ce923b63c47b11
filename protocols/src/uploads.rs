//! Upload areas: the directories phones may write into (their logs: Polycom PUTs
//! `<mac>-boot.log` and `<mac>-app.log`), over TFTP WRQ, FTP STOR and HTTP PUT, and
//! the events that put each stored upload on its phone's timeline.
//!
//! Confinement: names go through the store's resolver (no `..`, NUL, backslash,
//! encoded traversal or hidden names); every directory on the way must be a real
//! directory, not a symlink. An upload is written to a new hidden temporary file
//! (`O_EXCL`, so never through a planted link) that is renamed into place only when
//! complete and within the size cap: a partial or oversized upload never appears
//! under its name. If the area lies inside the store root, the store picks finished
//! uploads up like any other file (it ignores the hidden temporaries).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use provbox_storage::resolve;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::events::{EventBus, EventKind, Proto};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload larger than the {max}-byte limit")]
    TooLarge { max: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One directory uploads may land in, with its size cap.
#[derive(Debug)]
pub struct UploadArea {
    root: PathBuf,
    max: u64,
}

/// A stored upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub bytes: u64,
    /// A file of that name was there before (HTTP answers 204 rather than 201).
    pub replaced: bool,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

impl UploadArea {
    /// Creates the directory if needed.
    pub fn open(dir: &Path, max: u64) -> io::Result<UploadArea> {
        std::fs::create_dir_all(dir)?;
        Ok(UploadArea {
            root: dir.canonicalize()?,
            max,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The absolute path of `rel` ("" is the area itself), after checking that every
    /// directory before the last component is a real directory; with `create`, missing
    /// ones are made.
    pub fn checked(root: &Path, rel: &str, create: bool) -> io::Result<PathBuf> {
        if rel.is_empty() {
            return Ok(root.to_path_buf());
        }
        let clean = resolve::resolve(rel)
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
        let comps: Vec<&str> = clean.split('/').collect();
        let mut p = root.to_path_buf();
        for (i, c) in comps.iter().enumerate() {
            p.push(c);
            if i + 1 < comps.len() {
                let m = match std::fs::symlink_metadata(&p) {
                    Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                        std::fs::create_dir(&p)?;
                        std::fs::symlink_metadata(&p)?
                    }
                    r => r?,
                };
                if !m.file_type().is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} is not a directory", p.display()),
                    ));
                }
            }
        }
        Ok(p)
    }

    /// Stores `input` under `rel`, atomically, within the size cap; `create_dirs` makes
    /// missing directories on the way (TFTP and HTTP have no MKD).
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        rel: &str,
        input: R,
        create_dirs: bool,
    ) -> Result<Stored, UploadError> {
        if rel.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "cannot store over the upload directory",
            )
            .into());
        }
        let (root, r) = (self.root.clone(), rel.to_string());
        let (dest, tmp, file, replaced) = blocking(move || {
            let dest = Self::checked(&root, &r, create_dirs)?;
            let existing = std::fs::symlink_metadata(&dest).ok();
            if existing.as_ref().is_some_and(|m| m.is_dir()) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "a directory has that name",
                ));
            }
            let parent = dest.parent().unwrap_or(&root).to_path_buf();
            let tmp = parent.join(format!(
                ".provbox-upload-{}-{}",
                std::process::id(),
                TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            Ok((dest, tmp, file, existing.is_some()))
        })
        .await?;

        let mut file = tokio::fs::File::from_std(file);
        // Read one byte past the cap to tell "exactly the cap" from "over it".
        let mut limited = input.take(self.max.saturating_add(1));
        let result = match tokio::io::copy(&mut limited, &mut file).await {
            Ok(n) if n > self.max => Err(UploadError::TooLarge { max: self.max }),
            Ok(n) => file.flush().await.map(|_| n).map_err(UploadError::from),
            Err(e) => Err(e.into()),
        };
        drop(file);
        let t = tmp.clone();
        match result {
            Ok(bytes) => {
                blocking(move || {
                    std::fs::rename(&t, &dest).inspect_err(|_| {
                        let _ = std::fs::remove_file(&t);
                    })
                })
                .await?;
                Ok(Stored { bytes, replaced })
            }
            Err(e) => {
                let _ = blocking(move || std::fs::remove_file(&t)).await;
                Err(e)
            }
        }
    }
}

/// Puts an upload's outcome on the bus (and so on the phone's timeline).
pub fn publish(
    bus: &EventBus,
    proto: Proto,
    peer: SocketAddr,
    path: &str,
    user_agent: Option<String>,
    outcome: Result<u64, String>,
) {
    metrics::counter!("provbox_uploads_total", "proto" => proto.as_str(), "result" => if outcome.is_ok() { "stored" } else { "failed" })
        .increment(1);
    bus.publish(match outcome {
        Ok(bytes) => EventKind::UploadStored {
            proto,
            peer,
            path: path.to_string(),
            bytes,
            user_agent,
        },
        Err(reason) => EventKind::UploadFailed {
            proto,
            peer,
            path: path.to_string(),
            reason,
            user_agent,
        },
    });
}
