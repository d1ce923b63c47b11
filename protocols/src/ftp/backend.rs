//! The FTP storage backend: the store, read-only, seen through libunftp's
//! `StorageBackend`; plus, for users allowed to write, the upload area under `/upload`.
//!
//! Every client path is normalised here (`.` dropped, `..` applied, refused when it
//! would climb above the root) and then goes through the store's resolver
//! (`provbox_storage::resolve`, and `Store::lookup`/`open` for files), which refuses
//! NUL, backslashes, encoded traversal and hidden names. Downloads are served from
//! immutable snapshots (in-memory slices of the mapped blob, written 1 MiB at a time), and each is
//! reported as a [`Transfer`]: started (client address, path, offset, size), progress,
//! then finished with the served file's hash, or aborted when the client closes the
//! data connection early (a header probe) or the server shuts down.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use unftp_core::storage::{
    Error, ErrorKind, FEATURE_RESTART, Fileinfo, Metadata, Result, StorageBackend,
};

use provbox_storage::{Snapshot, Store, StoreError, resolve};

use super::auth::FtpUser;
use super::upload::UploadArea;
use crate::events::{EventBus, EventKind, Proto};
use crate::progress::{CountingReader, Transfer, TransferStart};

/// Bytes read from a snapshot and written to the data connection at a time. Large
/// chunks keep syscalls and task switches per byte low (the stock 8 KiB copy loop is
/// what held libunftp's file backend near 100 MB/s).
const CHUNK: usize = 1 << 20;

/// The virtual directory holding the upload area, for users allowed to write.
pub(crate) const UPLOAD_DIR: &str = "upload";

/// File or directory facts for LIST, MLSD, MLST, SIZE and MDTM.
#[derive(Debug, Clone)]
pub struct Meta {
    dir: bool,
    len: u64,
    mtime: SystemTime,
}

impl Meta {
    pub(crate) fn dir(mtime: SystemTime) -> Meta {
        Meta {
            dir: true,
            len: 0,
            mtime,
        }
    }
    pub(crate) fn file(len: u64, mtime: SystemTime) -> Meta {
        Meta {
            dir: false,
            len,
            mtime,
        }
    }
}

impl Metadata for Meta {
    fn len(&self) -> u64 {
        self.len
    }
    fn is_dir(&self) -> bool {
        self.dir
    }
    fn is_file(&self) -> bool {
        !self.dir
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> Result<SystemTime> {
        Ok(self.mtime)
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
    fn permissions(&self) -> unftp_core::storage::Permissions {
        unftp_core::storage::Permissions(if self.dir { 0o755 } else { 0o644 })
    }
}

/// Why a client path was refused before it reached the store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PathRefusal {
    #[error("path is not UTF-8")]
    NotUtf8,
    #[error("path climbs above the root with `..`")]
    AboveRoot,
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
}

/// Normalises an absolute or cwd-joined client path to a relative store path ("" is
/// the root), or refuses it.
pub(crate) fn normalize(path: &Path) -> std::result::Result<String, PathRefusal> {
    let s = path.to_str().ok_or(PathRefusal::NotUtf8)?;
    let mut parts: Vec<&str> = Vec::new();
    for comp in s.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or(PathRefusal::AboveRoot)?;
            }
            c => parts.push(c),
        }
    }
    Ok(resolve::resolve_dir(&parts.join("/"))?)
}

/// Where a normalised path points.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Store(String),
    Upload(String),
}

/// libunftp builds one of these per session (its generator clones it).
#[derive(Debug, Clone)]
pub(crate) struct StoreBackend {
    store: Store,
    bus: EventBus,
    upload: Option<Arc<UploadArea>>,
    /// Cancelled when the server shuts down: running transfers stop.
    stop: CancellationToken,
}

fn not_found(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::new(ErrorKind::PermanentFileNotAvailable, e)
}

fn denied(why: &'static str) -> Error {
    Error::new(ErrorKind::PermissionDenied, why)
}

impl StoreBackend {
    pub(crate) fn new(
        store: Store,
        bus: EventBus,
        upload: Option<Arc<UploadArea>>,
        stop: CancellationToken,
    ) -> Self {
        StoreBackend {
            store,
            bus,
            upload,
            stop,
        }
    }

    fn target(&self, user: &FtpUser, path: &Path) -> Result<Target> {
        let rel = normalize(path).map_err(|e| {
            metrics::counter!("provbox_ftp_refused_total", "reason" => "path").increment(1);
            crate::warn_limited!(peer = %user.peer, path = %path.display(), reason = %e, "ftp: path refused");
            not_found(e)
        })?;
        if user.upload && self.upload.is_some() {
            if rel == UPLOAD_DIR {
                return Ok(Target::Upload(String::new()));
            }
            if let Some(rest) = rel
                .strip_prefix(UPLOAD_DIR)
                .and_then(|r| r.strip_prefix('/'))
            {
                return Ok(Target::Upload(rest.to_string()));
            }
        }
        Ok(Target::Store(rel))
    }

    fn upload_area(&self) -> Result<&UploadArea> {
        self.upload
            .as_deref()
            .ok_or_else(|| denied("no upload area"))
    }

    /// A write outside the upload area: refused, and said so on the bus.
    fn refuse_write(&self, user: &FtpUser, path: &Path, what: &str) -> Error {
        metrics::counter!("provbox_ftp_refused_total", "reason" => "read_only").increment(1);
        self.bus.publish(EventKind::TransferRefused {
            proto: Proto::Ftp,
            peer: user.peer,
            path: path.to_string_lossy().into_owned(),
            reason: format!("{what} refused: the FTP server is read-only for this user"),
            user_agent: None,
        });
        denied("read-only")
    }

    fn store_dir_meta(&self, rel: &str) -> Option<Meta> {
        let index = self.store.index();
        if !index.is_dir(rel) {
            return None;
        }
        // A directory is as new as its newest file; the root of an empty store is "now".
        let newest = index.list(rel).iter().map(|i| i.mtime_ms).max();
        let mtime = newest.map_or_else(SystemTime::now, |ms| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
        });
        Some(Meta::dir(mtime))
    }

    async fn open_store(&self, user: &FtpUser, requested: &str, rel: &str) -> Result<Snapshot> {
        match self.store.open(rel).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let kind = if e.is_refusal() { "path" } else { "not_found" };
                metrics::counter!("provbox_ftp_refused_total", "reason" => kind).increment(1);
                self.bus.publish(EventKind::TransferRefused {
                    proto: Proto::Ftp,
                    peer: user.peer,
                    path: requested.to_string(),
                    reason: e.to_string(),
                    user_agent: None,
                });
                Err(match e {
                    StoreError::Io { .. } => Error::new(ErrorKind::LocalError, e),
                    _ => not_found(e),
                })
            }
        }
    }

    /// Sends a snapshot from `offset` to `output`, chunk by chunk.
    async fn send_snapshot<W>(
        &self,
        snap: &Snapshot,
        offset: u64,
        output: &mut W,
        transfer: &mut Transfer,
    ) -> std::result::Result<u64, (Error, String)>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let size = snap.entry.size;
        let total = size - offset;
        let mut sent = 0u64;
        let mut off = offset;
        while off < size {
            // The snapshot is in memory (mapped): a chunk is a slice, not a read.
            let chunk = snap.slice(off, CHUNK);
            if chunk.is_empty() {
                let e = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "snapshot {} is shorter than its index entry",
                        snap.entry.sha256
                    ),
                );
                let why = format!("reading the snapshot failed after {sent} bytes: {e}");
                return Err((Error::new(ErrorKind::LocalError, e), why));
            }
            let n = chunk.len() as u64;
            off += n;
            tokio::select! {
                r = output.write_all(&chunk) => {
                    if let Err(e) = r {
                        let why = format!("the client closed the data connection after {sent} of {total} bytes");
                        return Err((Error::new(ErrorKind::ConnectionClosed, e), why));
                    }
                }
                _ = self.stop.cancelled() => {
                    return Err((Error::new(ErrorKind::ConnectionClosed, "server shutting down"), "the server shut down".to_string()));
                }
            }
            sent += n;
            transfer.progress(sent);
        }
        if let Err(e) = output.flush().await {
            let why =
                format!("the client closed the data connection after {sent} of {total} bytes");
            return Err((Error::new(ErrorKind::ConnectionClosed, e), why));
        }
        Ok(sent)
    }
}

#[async_trait]
impl StorageBackend<FtpUser> for StoreBackend {
    type Metadata = Meta;

    fn name(&self) -> &str {
        "provbox-store"
    }

    fn supported_features(&self) -> u32 {
        FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Meta> {
        match self.target(user, path.as_ref())? {
            Target::Upload(rel) => self.upload_area()?.metadata(&rel).await,
            Target::Store(rel) => {
                if rel.is_empty() {
                    return self.store_dir_meta("").ok_or_else(|| not_found("no root"));
                }
                match self.store.lookup(&rel) {
                    Ok(e) => Ok(Meta::file(e.size, e.mtime())),
                    Err(StoreError::NotFound(_)) => self
                        .store_dir_meta(&rel)
                        .ok_or_else(|| not_found(format!("no such file or directory: /{rel}"))),
                    Err(e) => Err(not_found(e)),
                }
            }
        }
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, Meta>>> {
        let rel = match self.target(user, path.as_ref())? {
            Target::Upload(rel) => return self.upload_area()?.list(&rel).await,
            Target::Store(rel) => rel,
        };
        let index = self.store.index();
        if !index.is_dir(&rel) {
            // `LIST file` lists that one file.
            let e = self.store.lookup(&rel).map_err(not_found)?;
            return Ok(vec![Fileinfo {
                path: PathBuf::from(e.name()),
                metadata: Meta::file(e.size, e.mtime()),
            }]);
        }
        let mut out: Vec<Fileinfo<PathBuf, Meta>> = Vec::new();
        if rel.is_empty() && user.upload && self.upload.is_some() {
            out.push(Fileinfo {
                path: PathBuf::from(UPLOAD_DIR),
                metadata: Meta::dir(SystemTime::now()),
            });
        }
        for item in index.list(&rel) {
            let mtime = SystemTime::UNIX_EPOCH + Duration::from_millis(item.mtime_ms);
            let metadata = match &item.entry {
                Some(e) => Meta::file(e.size, mtime),
                None => Meta::dir(mtime),
            };
            out.push(Fileinfo {
                path: PathBuf::from(item.name),
                metadata,
            });
        }
        Ok(out)
    }

    async fn get_into<'a, P, W: ?Sized>(
        &self,
        user: &FtpUser,
        path: P,
        start_pos: u64,
        output: &'a mut W,
    ) -> Result<u64>
    where
        W: AsyncWrite + Unpin + Sync + Send,
        P: AsRef<Path> + Send + Debug,
    {
        let requested = path.as_ref().to_string_lossy().into_owned();
        let rel = match self.target(user, path.as_ref()) {
            Ok(Target::Store(rel)) => rel,
            Ok(Target::Upload(rel)) => {
                return self.upload_area()?.send(&rel, start_pos, output).await;
            }
            Err(e) => {
                self.bus.publish(EventKind::TransferRefused {
                    proto: Proto::Ftp,
                    peer: user.peer,
                    path: requested,
                    reason: e.to_string(),
                    user_agent: None,
                });
                return Err(e);
            }
        };
        let snap = self.open_store(user, &requested, &rel).await?;
        let size = snap.entry.size;
        // REST beyond the end sends nothing, like vsftpd.
        let offset = start_pos.min(size);
        let mut transfer = Transfer::start(
            &self.bus,
            TransferStart {
                proto: Proto::Ftp,
                peer: user.peer,
                path: &requested,
                entry: &snap.entry,
                offset,
                size: size - offset,
                user_agent: None,
                tftp: None,
            },
        );
        match self
            .send_snapshot(&snap, offset, output, &mut transfer)
            .await
        {
            Ok(sent) => {
                transfer.finish();
                Ok(sent)
            }
            Err((err, why)) => {
                transfer.abort(why);
                Err(err)
            }
        }
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
        start_pos: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        // libunftp only reads through `get_into`; this is the plain-reader form of the
        // same thing (used by SITE MD5, which is off).
        let requested = path.as_ref().to_string_lossy().into_owned();
        let rel = match self.target(user, path.as_ref())? {
            Target::Store(rel) => rel,
            Target::Upload(_) => return Err(denied("upload area files are not read this way")),
        };
        let snap = self.open_store(user, &requested, &rel).await?;
        let size = snap.entry.size;
        let offset = start_pos.min(size);
        let file = snap.reader(offset);
        let transfer = Transfer::start(
            &self.bus,
            TransferStart {
                proto: Proto::Ftp,
                peer: user.peer,
                path: &requested,
                entry: &snap.entry,
                offset,
                size: size - offset,
                user_agent: None,
                tftp: None,
            },
        );
        Ok(Box::new(CountingReader::new(
            tokio::io::BufReader::with_capacity(CHUNK, file),
            transfer,
        )))
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        user: &FtpUser,
        input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        match self.target(user, path.as_ref())? {
            Target::Upload(rel) => {
                let r = self.upload_area()?.put(user, &rel, input, start_pos).await;
                let outcome = r.as_ref().map(|n| *n).map_err(|e| e.to_string());
                crate::uploads::publish(&self.bus, Proto::Ftp, user.peer, &rel, None, outcome);
                r
            }
            Target::Store(_) => Err(self.refuse_write(user, path.as_ref(), "STOR")),
        }
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        match self.target(user, path.as_ref())? {
            Target::Upload(rel) => self.upload_area()?.del(&rel).await,
            Target::Store(_) => Err(self.refuse_write(user, path.as_ref(), "DELE")),
        }
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        match self.target(user, path.as_ref())? {
            Target::Upload(rel) => self.upload_area()?.mkd(&rel).await,
            Target::Store(_) => Err(self.refuse_write(user, path.as_ref(), "MKD")),
        }
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        from: P,
        to: P,
    ) -> Result<()> {
        match (
            self.target(user, from.as_ref())?,
            self.target(user, to.as_ref())?,
        ) {
            (Target::Upload(f), Target::Upload(t)) => self.upload_area()?.rename(&f, &t).await,
            _ => Err(self.refuse_write(user, from.as_ref(), "RNFR/RNTO")),
        }
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        match self.target(user, path.as_ref())? {
            Target::Upload(rel) => self.upload_area()?.rmd(&rel).await,
            Target::Store(_) => Err(self.refuse_write(user, path.as_ref(), "RMD")),
        }
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let ok = match self.target(user, path.as_ref())? {
            Target::Upload(rel) => self.upload_area()?.metadata(&rel).await?.is_dir(),
            Target::Store(rel) => self.store.index().is_dir(&rel),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::PermanentDirectoryNotAvailable,
                format!("no such directory: {}", path.as_ref().display()),
            ))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn normalises_inside_the_root_only() {
        let ok = |p: &str| normalize(Path::new(p)).unwrap();
        assert_eq!(ok("/"), "");
        assert_eq!(ok("/a/./b//c.cfg"), "a/b/c.cfg");
        assert_eq!(ok("/a/../b.img"), "b.img");
        assert_eq!(ok("rel/x"), "rel/x");
        for bad in [
            "/..",
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/a\\b",
            "/.hidden",
            "/a/\0b",
        ] {
            assert!(normalize(Path::new(bad)).is_err(), "{bad:?} accepted");
        }
    }
}
