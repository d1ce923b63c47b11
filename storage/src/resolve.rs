//! The one safe path resolver every protocol uses.
//!
//! It turns what a client asked for into a relative store path, or refuses. It refuses
//! `..` in any position, NUL, backslashes (a protocol that accepts Windows-style paths,
//! like TFTP, converts them first, deliberately), empty components after the leading
//! slash, and percent-encoded traversal that survived the protocol's own decoding
//! (`%2e%2e`, `%2f`, `%5c`, `%00`: a double-encoded attack). Symlinks that leave the
//! root never reach a client at all: the indexer does not index them, and clients are
//! only ever served indexed snapshots.

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path climbs out of the store with `..`")]
    Traversal,
    #[error("path contains percent-encoded separators or dots (double encoding)")]
    Encoded,
    #[error("path is empty")]
    Empty,
    #[error("path names a hidden or temporary file")]
    Hidden,
}

/// Resolves a client path to a clean relative path (`dir/file.cfg`, no leading `/`).
/// `.` components and repeated slashes are dropped.
pub fn resolve(requested: &str) -> Result<String, ResolveError> {
    if requested.contains('\0') {
        return Err(ResolveError::Nul);
    }
    if requested.contains('\\') {
        return Err(ResolveError::Backslash);
    }
    if has_encoded_danger(requested) {
        return Err(ResolveError::Encoded);
    }
    // One pass checks every component; `.` and empty ones are dropped. The usual
    // spelling (`/dir/file.cfg`) drops none after its leading slashes, so it is already
    // clean: one copy, no collecting and joining.
    let trimmed = requested.trim_start_matches('/');
    let mut kept = 0usize;
    let mut dropped = false;
    for comp in trimmed.split('/') {
        match comp {
            "" | "." => dropped = true,
            ".." => return Err(ResolveError::Traversal),
            c if crate::names::is_hidden(c) => return Err(ResolveError::Hidden),
            _ => kept += 1,
        }
    }
    if kept == 0 {
        return Err(ResolveError::Empty);
    }
    if !dropped {
        return Ok(trimmed.to_string());
    }
    let parts: Vec<&str> = trimmed
        .split('/')
        .filter(|c| !matches!(*c, "" | "."))
        .collect();
    Ok(parts.join("/"))
}

/// Resolves a directory path; the empty path is the root.
pub fn resolve_dir(requested: &str) -> Result<String, ResolveError> {
    match resolve(requested) {
        Err(ResolveError::Empty) => Ok(String::new()),
        other => other,
    }
}

fn has_encoded_danger(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(3).any(|w| {
        w[0] == b'%' && {
            let hex = [w[1].to_ascii_lowercase(), w[2].to_ascii_lowercase()];
            matches!(&hex, b"2e" | b"2f" | b"5c" | b"00" | b"25")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_clean_paths() {
        assert_eq!(resolve("/450HD.img").as_deref(), Ok("450HD.img"));
        assert_eq!(resolve("a//b/./c.cfg").as_deref(), Ok("a/b/c.cfg"));
        assert_eq!(resolve_dir("/").as_deref(), Ok(""));
        // The fast path (already clean) and the general one agree.
        assert_eq!(resolve("//dir/x.cfg").as_deref(), Ok("dir/x.cfg"));
        assert_eq!(resolve("dir/x.cfg/").as_deref(), Ok("dir/x.cfg"));
        assert_eq!(resolve("./x.cfg").as_deref(), Ok("x.cfg"));
        assert_eq!(resolve("/dir/.x.cfg"), Err(ResolveError::Hidden));
        assert_eq!(resolve("/dir/x.cfg.part"), Err(ResolveError::Hidden));
        assert_eq!(resolve("/a/../x.cfg"), Err(ResolveError::Traversal));
    }

    #[test]
    fn refuses_every_traversal_spelling() {
        for p in [
            "../etc/passwd",
            "/../../etc/passwd",
            "a/../../x",
            "a/..",
            "..",
            "%2e%2e/etc/passwd",
            "%2E%2E%2Fetc",
            "a%2f..%2fb",
            "..%5cwindows",
            "x%00.img",
            "%252e%252e/x",
            "a\\..\\b",
            "a\0b",
            ".ssh/id_rsa",
        ] {
            assert!(resolve(p).is_err(), "{p:?} was accepted");
        }
    }
}
