//! The append-only JSONL event journal under the state directory.
//!
//! One record per line, on a file opened for append. Appends are batched in memory and
//! written with one `write` per batch when the caller calls [`Journal::flush`] (the
//! tracker does at most every few tens of milliseconds while records keep coming, and
//! at once when a batch reaches [`BATCH_BYTES`]): at tens of thousands of events a
//! second, one system call per record, or even per drained batch, was a large share of
//! the server's CPU. A `kill -9` loses at most the unflushed batch and never corrupts
//! earlier lines (a torn last line is skipped on reading). The journal is generic over the record type:
//! the appliance's tracker decides what a record is (wire events, state changes,
//! snapshots); this module only owns the files.
//!
//! Files: `<dir>/journal.jsonl` is current; rotation renames it to `journal.1.jsonl`
//! (newest) … `journal.<keep>.jsonl` (oldest) and drops what falls off the end. Because
//! rotation forgets old lines, [`Journal::rotate_with`] starts the new file with a
//! caller-supplied first record: the tracker writes a snapshot of its whole state there,
//! so a rebuild never needs a dropped file.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Journal I/O errors, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "journal I/O error on {path}: {source} (check that the state directory is writable and not full)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode a journal record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How the journal rotates. Mirrors `[tracker] journal_max_bytes` and `journal_keep`.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// Rotate once the current file has grown by this many bytes past its first record.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

/// The current file, open for appending.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    /// Whole lines appended but not yet written.
    pending: Vec<u8>,
    size: u64,
    /// Size of the file's first record written by `rotate_with` (not counted against
    /// `max_bytes`, so a large snapshot cannot make every append rotate).
    base: u64,
    opts: JournalOptions,
}

const CURRENT: &str = "journal.jsonl";

/// An append batch is written out once it reaches this size, flush or not.
pub const BATCH_BYTES: usize = 64 * 1024;

fn rotated_name(n: usize) -> String {
    format!("journal.{n}.jsonl")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`read_all`] found.
#[derive(Debug)]
pub struct ReadOutcome<T> {
    /// Records, oldest first.
    pub records: Vec<T>,
    /// Lines that could not be decoded (a torn last line after a crash, or a record
    /// from an incompatible version); skipped.
    pub skipped: usize,
}

impl Journal {
    /// Opens (creating) `<dir>/journal.jsonl` for appending.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(CURRENT);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let size = file.metadata().map_err(io(&path))?.len();
        let mut j = Journal {
            dir: dir.to_path_buf(),
            file,
            pending: Vec::new(),
            size,
            base: 0,
            opts,
        };
        // A crash may have left a torn line without its newline: terminate it so the
        // next record starts on a line of its own (the torn one is skipped on reading).
        if size > 0 && !ends_with_newline(&path)? {
            j.write_raw(b"\n")?;
        }
        Ok(j)
    }

    /// The directory holding the journal files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when appended records wait for [`Journal::flush`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes in the current file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one record as one line (batched: see [`Journal::flush`]).
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), JournalError> {
        let mark = self.pending.len();
        if let Err(e) = serde_json::to_writer(&mut self.pending, record) {
            self.pending.truncate(mark);
            return Err(e.into());
        }
        self.pending.push(b'\n');
        self.size += (self.pending.len() - mark) as u64;
        if self.pending.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the appended lines out in one `write`. A failed write drops the batch
    /// (the error says so); the journal goes on with the next one.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let r = self.file.write_all(&self.pending);
        self.pending.clear();
        r.map_err(io(&self.dir.join(CURRENT)))
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), JournalError> {
        self.flush()?;
        let path = self.dir.join(CURRENT);
        self.file.write_all(bytes).map_err(io(&path))?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// True when the current file has outgrown `max_bytes`.
    pub fn should_rotate(&self) -> bool {
        self.size.saturating_sub(self.base) >= self.opts.max_bytes
    }

    /// Rotates, then writes `first` as the new file's first record.
    pub fn rotate_with<T: Serialize>(&mut self, first: &T) -> Result<(), JournalError> {
        // Encode before touching any file, so an encoding error leaves everything as it was.
        let mut line = serde_json::to_vec(first)?;
        line.push(b'\n');
        self.flush()?;
        // The finished file is made durable off this thread: a synchronous fsync of
        // tens of MiB stalled the tracker (and the async worker it runs on) for as long
        // as the disk took. Until it completes the file is as safe as any journal write:
        // in the page cache, which a `kill -9` does not lose.
        if let Ok(f) = self.file.try_clone() {
            std::thread::spawn(move || {
                let _ = f.sync_all();
            });
        }
        let keep = self.opts.keep;
        if keep == 0 {
            let path = self.dir.join(CURRENT);
            std::fs::remove_file(&path).map_err(io(&path))?;
        } else {
            let oldest = self.dir.join(rotated_name(keep));
            if oldest.exists() {
                std::fs::remove_file(&oldest).map_err(io(&oldest))?;
            }
            for n in (1..keep).rev() {
                let from = self.dir.join(rotated_name(n));
                if from.exists() {
                    let to = self.dir.join(rotated_name(n + 1));
                    std::fs::rename(&from, &to).map_err(io(&from))?;
                }
            }
            let cur = self.dir.join(CURRENT);
            std::fs::rename(&cur, self.dir.join(rotated_name(1))).map_err(io(&cur))?;
        }
        let path = self.dir.join(CURRENT);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        self.size = 0;
        self.write_raw(&line)?;
        self.base = self.size;
        Ok(())
    }

    /// Flushes to disk (called at shutdown; a `kill -9` keeps what the kernel has anyway).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.flush()?;
        let path = self.dir.join(CURRENT);
        self.file.sync_all().map_err(io(&path))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn ends_with_newline(path: &Path) -> Result<bool, JournalError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).map_err(io(path))?;
    f.seek(SeekFrom::End(-1)).map_err(io(path))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b).map_err(io(path))?;
    Ok(b[0] == b'\n')
}

/// The journal files in `dir`, oldest first.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name
                .strip_prefix("journal.")?
                .strip_suffix(".jsonl")?
                .parse::<usize>()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let cur = dir.join(CURRENT);
    if cur.is_file() {
        out.push(cur);
    }
    out
}

/// Reads every record of every journal file in `dir`, oldest first. Undecodable lines
/// are skipped and counted; a missing directory is an empty journal.
pub fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<ReadOutcome<T>, JournalError> {
    read_since(dir, |_| false)
}

/// Reads the records from the newest line that `is_start` accepts (a restart point,
/// such as the tracker's snapshot) to the end, oldest first; everything when no line
/// is accepted. Files are scanned newest first and only the lines from the restart
/// point on are decoded and kept, so start-up after a long run reads one file's tail,
/// not every rotated file (which held 300 MB of JSON and took seconds to decode).
pub fn read_since<T: DeserializeOwned>(
    dir: &Path,
    is_start: impl Fn(&[u8]) -> bool,
) -> Result<ReadOutcome<T>, JournalError> {
    // Raw lines per file, newest file first; each file's lines in order.
    let mut tails: Vec<Vec<Vec<u8>>> = Vec::new();
    for path in files(dir).into_iter().rev() {
        let f = File::open(&path).map_err(io(&path))?;
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut found = false;
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(io(&path))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if is_start(&line) {
                lines.clear();
                found = true;
            }
            lines.push(line);
        }
        tails.push(lines);
        if found {
            break;
        }
    }
    let mut out = ReadOutcome {
        records: Vec::new(),
        skipped: 0,
    };
    for line in tails.into_iter().rev().flatten() {
        match serde_json::from_slice::<T>(&line) {
            Ok(r) => out.records.push(r),
            Err(_) => out.skipped += 1,
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Rec {
        n: u32,
        text: String,
    }

    fn rec(n: u32) -> Rec {
        Rec {
            n,
            text: "x".repeat(50),
        }
    }

    #[test]
    fn append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(
            dir.path(),
            JournalOptions {
                max_bytes: 1 << 20,
                keep: 2,
            },
        )
        .unwrap();
        for n in 0..10 {
            j.append(&rec(n)).unwrap();
        }
        drop(j);
        let got = read_all::<Rec>(dir.path()).unwrap();
        assert_eq!(got.records.len(), 10);
        assert_eq!(got.records[3], rec(3));
        assert_eq!(got.skipped, 0);
    }

    #[test]
    fn torn_last_line_is_skipped_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(
            dir.path(),
            JournalOptions {
                max_bytes: 1 << 20,
                keep: 2,
            },
        )
        .unwrap();
        j.append(&rec(1)).unwrap();
        drop(j);
        // Simulate a crash in the middle of a write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(CURRENT))
            .unwrap();
        f.write_all(b"{\"n\":2,\"te").unwrap();
        drop(f);
        let mut j = Journal::open(
            dir.path(),
            JournalOptions {
                max_bytes: 1 << 20,
                keep: 2,
            },
        )
        .unwrap();
        j.append(&rec(3)).unwrap();
        // Appends are batched until a flush.
        assert_eq!(read_all::<Rec>(dir.path()).unwrap().records, vec![rec(1)]);
        j.flush().unwrap();
        let got = read_all::<Rec>(dir.path()).unwrap();
        assert_eq!(got.records, vec![rec(1), rec(3)]);
        assert_eq!(got.skipped, 1);
    }

    #[test]
    fn rotation_keeps_n_files_and_starts_with_the_given_record() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions {
            max_bytes: 300,
            keep: 2,
        };
        let mut j = Journal::open(dir.path(), opts).unwrap();
        let mut rotations = 0;
        for n in 0..40 {
            if j.should_rotate() {
                j.rotate_with(&Rec {
                    n: 1000 + n,
                    text: "snapshot".into(),
                })
                .unwrap();
                rotations += 1;
            }
            j.append(&rec(n)).unwrap();
        }
        j.flush().unwrap();
        assert!(rotations >= 3, "{rotations}");
        let names = files(dir.path());
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[0].ends_with("journal.2.jsonl"));
        assert!(names[2].ends_with("journal.jsonl"));
        let got = read_all::<Rec>(dir.path()).unwrap();
        // The newest file starts with the snapshot record and ends with the last append.
        let cur: Vec<Rec> = std::fs::read_to_string(dir.path().join(CURRENT))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(cur[0].n >= 1000);
        assert_eq!(got.records.last(), Some(&rec(39)));
        // Older lines were dropped: the total is bounded.
        assert!(got.records.len() < 40);
    }

    #[test]
    fn read_since_starts_at_the_newest_restart_point() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions {
            max_bytes: 300,
            keep: 3,
        };
        let mut j = Journal::open(dir.path(), opts).unwrap();
        for n in 0..30 {
            if j.should_rotate() {
                j.rotate_with(&Rec {
                    n: 1000 + n,
                    text: "snapshot".into(),
                })
                .unwrap();
            }
            j.append(&rec(n)).unwrap();
        }
        // A restart point in the middle of the current file wins over the file's first.
        j.append(&Rec {
            n: 2000,
            text: "snapshot".into(),
        })
        .unwrap();
        j.append(&rec(31)).unwrap();
        j.flush().unwrap();
        let is_snap = |l: &[u8]| l.windows(10).any(|w| w == b"\"snapshot\"");
        let got = read_since::<Rec>(dir.path(), is_snap).unwrap();
        assert_eq!(
            got.records,
            vec![
                Rec {
                    n: 2000,
                    text: "snapshot".into()
                },
                rec(31)
            ]
        );
        // No restart point anywhere: everything, oldest first, across files.
        let all = read_since::<Rec>(dir.path(), |_| false).unwrap();
        assert_eq!(all.records, read_all::<Rec>(dir.path()).unwrap().records);
        assert!(all.records.len() > 2);
        assert_eq!(all.records.last(), Some(&rec(31)));
        // A restart point only in an older file: that file's tail plus every newer file.
        let first_of_oldest = |l: &[u8]| l.starts_with(b"{\"n\":10");
        let got = read_since::<Rec>(dir.path(), first_of_oldest).unwrap();
        assert!(
            got.records[0].n >= 1000 && got.records[0].n < 2000,
            "{:?}",
            got.records[0]
        );
        assert_eq!(got.records.last(), Some(&rec(31)));
    }

    #[test]
    fn missing_dir_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let got = read_all::<Rec>(&dir.path().join("nope")).unwrap();
        assert!(got.records.is_empty());
    }
}
