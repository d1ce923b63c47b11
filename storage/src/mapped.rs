//! Memory-mapped blobs, and zero-copy sends from them.
//!
//! A large blob is served as `Bytes` over a read-only mapping ([`map_blob`]). Writing
//! such a slice to a plain TCP socket with `write(2)` copies it from the page cache
//! into socket buffers, which was the server's largest single cost in the 500-phone
//! fleet benchmark. [`send_mapped`] recognises a slice that lies inside a mapped blob
//! and sends it with `sendfile(2)` from the blob's file instead, so the kernel passes
//! page references and nothing is copied on the sending side.
//!
//! Protocols keep using plain `Bytes` slices (hyper, TLS, TFTP and FTP need nothing
//! else); only a socket wrapper asks [`send_mapped`] first. The lookup is by address:
//! a process-wide table maps each live mapping's address range to its file, and an
//! entry lives exactly as long as its mapping (the owner removes it on drop), so a
//! slice that is alive is always found with the file it came from. The bytes are the
//! same either way, because a blob file is never written after it is renamed into
//! place; an unlinked blob stays readable through the descriptor held here.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// Live mappings: start address → (length, file).
static MAPPED: RwLock<BTreeMap<usize, (usize, Arc<File>)>> = RwLock::new(BTreeMap::new());

/// Bytes sent by [`send_mapped`] since the process started.
static SENT: AtomicU64 = AtomicU64::new(0);

/// Bytes this process has sent without copying them (by [`send_mapped`]).
pub fn zero_copy_bytes() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// Owns one mapping and its table entry.
struct MappedBlob {
    map: memmap2::Mmap,
    start: usize,
}

impl AsRef<[u8]> for MappedBlob {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for MappedBlob {
    fn drop(&mut self) {
        let mut t = MAPPED.write().unwrap_or_else(|p| p.into_inner());
        t.remove(&self.start);
    }
}

/// Maps `file` read-only and populated, and registers it for [`send_mapped`].
pub(crate) fn map_blob(file: File) -> std::io::Result<Bytes> {
    // SAFETY: blobs are the store's own read-only files, written once and never
    // modified afterwards (see the store's module docs), so the mapped bytes cannot
    // change under the mapping.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    let start = map.as_ptr() as usize;
    let len = map.len();
    if len > 0 {
        let mut t = MAPPED.write().unwrap_or_else(|p| p.into_inner());
        t.insert(start, (len, Arc::new(file)));
    }
    Ok(Bytes::from_owner(MappedBlob { map, start }))
}

/// A slice found inside a live mapping: where its bytes are in the blob file.
#[derive(Debug)]
pub struct MappedSlice {
    file: Arc<File>,
    offset: i64,
    len: usize,
}

impl MappedSlice {
    /// Sends the slice to `socket` with one `sendfile(2)` call: bytes sent, possibly
    /// fewer than the slice (`WouldBlock` on a full non-blocking socket).
    pub fn send(&self, socket: impl AsFd) -> std::io::Result<usize> {
        let mut off = self.offset;
        let n = nix::sys::sendfile::sendfile(socket, self.file.as_fd(), Some(&mut off), self.len)
            .map_err(std::io::Error::from)?;
        SENT.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The blob file behind `slice`, when the slice lies wholly inside a live mapping.
pub fn lookup(slice: &[u8]) -> Option<MappedSlice> {
    if slice.is_empty() {
        return None;
    }
    let addr = slice.as_ptr() as usize;
    let t = MAPPED.read().unwrap_or_else(|p| p.into_inner());
    let (&start, (len, file)) = t.range(..=addr).next_back()?;
    let inside = addr
        .checked_add(slice.len())
        .is_some_and(|end| end <= start + len);
    if !inside {
        return None;
    }
    Some(MappedSlice {
        file: file.clone(),
        offset: i64::try_from(addr - start).ok()?,
        len: slice.len(),
    })
}

/// True when `slice` lies inside a mapped blob (and can be sent without a copy).
pub fn is_mapped(slice: &[u8]) -> bool {
    lookup(slice).is_some()
}

/// Sends `slice` to `socket` with `sendfile(2)` when it lies inside a mapped blob:
/// `None` when it does not (write it the usual way), else [`MappedSlice::send`]'s result.
pub fn send_mapped(socket: impl AsFd, slice: &[u8]) -> Option<std::io::Result<usize>> {
    Some(lookup(slice)?.send(socket))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn blob(bytes: &[u8]) -> (tempfile::TempDir, Bytes) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        std::fs::write(&p, bytes).unwrap();
        let b = map_blob(File::open(&p).unwrap()).unwrap();
        (dir, b)
    }

    #[test]
    fn a_mapped_slice_is_sent_from_its_file_and_others_are_not() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (_d, b) = blob(&data);
        let (mut a, mut z) = std::os::unix::net::UnixStream::pair().unwrap();
        let part = b.slice(1000..5000);
        assert!(is_mapped(&part));
        let n = send_mapped(&a, &part).unwrap().unwrap();
        assert_eq!(n, 4000);
        let mut got = vec![0u8; 4000];
        z.read_exact(&mut got).unwrap();
        assert_eq!(got, &data[1000..5000]);
        // A heap slice, an empty slice, and a slice running past the mapping's end.
        assert!(send_mapped(&a, &data[..10]).is_none());
        assert!(send_mapped(&a, &b[..0]).is_none());
        let whole: &[u8] = &b;
        assert!(is_mapped(whole));
        // A slice that only starts inside: a neighbouring heap buffer is not mapped.
        let heap = vec![1u8; 4096];
        assert!(!is_mapped(&heap));
        a.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        z.read_exact(&mut one).unwrap();
    }

    #[test]
    fn the_entry_goes_with_the_last_reference() {
        let (_d, b) = blob(&[7u8; 100_000]);
        let file = Arc::downgrade(&lookup(&b).unwrap().file);
        let part = b.slice(10..20);
        drop(b);
        assert!(is_mapped(&part), "a live slice keeps the mapping");
        drop(part);
        // The table held the only other reference to the file: it is closed now.
        assert!(file.upgrade().is_none());
    }
}
