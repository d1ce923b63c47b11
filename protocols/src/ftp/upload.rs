//! The upload area: one directory (`ftp.upload_dir`) that users with `upload = true`
//! see as `/upload` and may write in. Everything else stays read-only.
//!
//! Confinement and atomic writes are [`crate::uploads`]'s (shared with TFTP and
//! HTTP); this module adds what FTP does beyond storing: listing, reading back
//! (`O_NOFOLLOW`), deleting, MKD/RMD and renames, all confined the same way.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use unftp_core::storage::{Error, ErrorKind, Fileinfo, Result};

use super::FtpError;
use super::auth::FtpUser;
use super::backend::Meta;
use crate::uploads::{self, UploadError};
use provbox_storage::names;

/// Copy buffer for uploads and for reading uploaded files back.
const BUF: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) struct UploadArea {
    area: uploads::UploadArea,
    root: PathBuf,
}

fn refused(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::new(ErrorKind::FileNameNotAllowedError, e)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Error::from),
        Err(e) => Err(Error::new(ErrorKind::LocalError, e)),
    }
}

impl UploadArea {
    /// Creates the directory if needed.
    pub(crate) fn open(dir: &Path, max: u64) -> std::result::Result<UploadArea, FtpError> {
        let area = uploads::UploadArea::open(dir, max).map_err(|source| FtpError::UploadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(UploadArea {
            root: area.root().to_path_buf(),
            area,
        })
    }

    /// The absolute path of `rel` ("" is the area itself), confined; FTP makes
    /// directories with MKD, so none are created here.
    fn checked(root: &Path, rel: &str) -> io::Result<PathBuf> {
        uploads::UploadArea::checked(root, rel, false)
    }

    fn meta_of(m: &std::fs::Metadata) -> Option<Meta> {
        let mtime = m.modified().unwrap_or(std::time::UNIX_EPOCH);
        let ft = m.file_type();
        if ft.is_dir() {
            Some(Meta::dir(mtime))
        } else if ft.is_file() {
            Some(Meta::file(m.len(), mtime))
        } else {
            None
        }
    }

    pub(crate) async fn metadata(&self, rel: &str) -> Result<Meta> {
        let (root, rel) = (self.root.clone(), rel.to_string());
        blocking(move || {
            let p = Self::checked(&root, &rel)?;
            let m = std::fs::symlink_metadata(&p)?;
            Self::meta_of(&m)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not a file or directory"))
        })
        .await
    }

    pub(crate) async fn list(&self, rel: &str) -> Result<Vec<Fileinfo<PathBuf, Meta>>> {
        let (root, rel) = (self.root.clone(), rel.to_string());
        blocking(move || {
            let dir = Self::checked(&root, &rel)?;
            let mut out = Vec::new();
            for e in std::fs::read_dir(&dir)?.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if names::is_hidden(name) {
                    continue;
                }
                // `DirEntry::metadata` does not follow symlinks; they are not listed.
                if let Some(meta) = e.metadata().ok().as_ref().and_then(Self::meta_of) {
                    out.push(Fileinfo {
                        path: PathBuf::from(name),
                        metadata: meta,
                    });
                }
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
        .await
    }

    /// Sends an uploaded file back (`RETR` in the upload area). No transfer events:
    /// these are not store files.
    pub(crate) async fn send<W: AsyncWrite + Unpin + ?Sized>(
        &self,
        rel: &str,
        start: u64,
        output: &mut W,
    ) -> Result<u64> {
        let (root, rel) = (self.root.clone(), rel.to_string());
        let file = blocking(move || {
            let p = Self::checked(&root, &rel)?;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
        })
        .await?;
        let mut file = tokio::fs::File::from_std(file);
        file.seek(io::SeekFrom::Start(start)).await?;
        let mut reader = tokio::io::BufReader::with_capacity(BUF, file);
        let n = tokio::io::copy_buf(&mut reader, output).await?;
        output.flush().await?;
        Ok(n)
    }

    /// Stores an upload under `rel`, atomically, within the size cap.
    pub(crate) async fn put<R: AsyncRead + Unpin>(
        &self,
        user: &FtpUser,
        rel: &str,
        input: R,
        start: u64,
    ) -> Result<u64> {
        if start != 0 {
            return Err(Error::new(
                ErrorKind::CommandNotImplemented,
                "resumed or appended uploads are not supported",
            ));
        }
        match self.area.put(rel, input, false).await {
            Ok(stored) => {
                tracing::info!(user = %user, path = %rel, bytes = stored.bytes, "ftp upload stored");
                Ok(stored.bytes)
            }
            Err(e) => {
                crate::warn_limited!(user = %user, path = %rel, error = %e, "ftp upload discarded");
                Err(match e {
                    UploadError::TooLarge { max } => Error::new(
                        ErrorKind::ExceededStorageAllocationError,
                        format!("upload larger than ftp.upload_max ({max} bytes)"),
                    ),
                    UploadError::Io(e) => Error::from(e),
                })
            }
        }
    }

    pub(crate) async fn del(&self, rel: &str) -> Result<()> {
        let (root, rel) = (self.root.clone(), rel.to_string());
        blocking(move || {
            let p = Self::checked(&root, &rel)?;
            if std::fs::symlink_metadata(&p)?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "is a directory; use RMD",
                ));
            }
            std::fs::remove_file(p)
        })
        .await
    }

    pub(crate) async fn mkd(&self, rel: &str) -> Result<()> {
        if rel.is_empty() {
            return Err(refused("the upload directory exists"));
        }
        let (root, rel) = (self.root.clone(), rel.to_string());
        blocking(move || std::fs::create_dir(Self::checked(&root, &rel)?)).await
    }

    pub(crate) async fn rmd(&self, rel: &str) -> Result<()> {
        if rel.is_empty() {
            return Err(refused("cannot remove the upload directory"));
        }
        let (root, rel) = (self.root.clone(), rel.to_string());
        blocking(move || {
            let p = Self::checked(&root, &rel)?;
            if !std::fs::symlink_metadata(&p)?.file_type().is_dir() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "not a directory"));
            }
            std::fs::remove_dir(p)
        })
        .await
    }

    pub(crate) async fn rename(&self, from: &str, to: &str) -> Result<()> {
        if from.is_empty() || to.is_empty() {
            return Err(refused("cannot rename the upload directory"));
        }
        let (root, from, to) = (self.root.clone(), from.to_string(), to.to_string());
        blocking(move || {
            let f = Self::checked(&root, &from)?;
            let t = Self::checked(&root, &to)?;
            std::fs::symlink_metadata(&f)?;
            std::fs::rename(f, t)
        })
        .await
    }
}
