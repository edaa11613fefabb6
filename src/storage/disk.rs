//! The file interface the log is written through: the real one is glommio's DMA files
//! (`shard::disk`), the test one a simulated disk that loses, reorders and tears unsynced writes.
//! Everything the writer does to a shard's directory goes through [`Disk`].

#![allow(async_fn_in_trait)] // Shard-local: the futures never cross threads.

use std::io::{self, Write};

/// Writes go to disk in whole blocks at block-aligned offsets (O_DIRECT).
pub const BLOCK: usize = 4096;

/// One shard's directory.
pub trait Disk {
    /// An open segment file.
    type File: SegmentFile;

    /// Creates segment file `name` with `size` bytes preallocated (reading as zeroes), and makes
    /// the file and its directory entry durable before returning.
    async fn create(&self, name: &str, size: u64) -> io::Result<Self::File>;

    /// Renames `name` + [`TEMPORARY_SUFFIX`], already written durably (see
    /// [`write_temporary_std`]), to `name`, and makes that durable: after a crash `name` is
    /// either absent or complete.
    async fn publish(&self, name: &str) -> io::Result<()>;

    /// Removes file `name` (a missing file is not an error).
    async fn remove(&self, name: &str) -> io::Result<()>;
}

/// A segment file open for writing.
pub trait SegmentFile {
    /// Writes `bytes` at `offset`; both are multiples of [`BLOCK`].
    async fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()>;

    /// Every completed write is durable when this returns (`fdatasync`; nothing to do for a file
    /// whose writes are durable on completion, opened `O_DSYNC`).
    async fn sync(&self) -> io::Result<()>;
}

/// Name of the segment whose first frame is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

/// The first sequence number in a segment's name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok()
}

/// Name of the snapshot that covers frames up to `seq`.
pub fn snapshot_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.snap")
}

/// The sequence number in a snapshot's name.
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok()
}

/// Suffix of files being written by [`write_temporary_std`]; left-overs are removed at start-up.
pub const TEMPORARY_SUFFIX: &str = ".tmp";

/// Stores `bytes` as file `name` in `dir`, atomically and durably: [`write_temporary_std`], then
/// [`publish_std`]. After a crash the file is either absent or complete.
pub fn write_atomic_std(dir: &std::path::Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_temporary_std(dir, name, |out| out.write_all(bytes))?;
    publish_std(dir, name)
}

/// Writes file `name` + [`TEMPORARY_SUFFIX`] in `dir` (replacing one left over) with what
/// `write` writes, and makes it durable.
///
/// The file is made durable as it goes: it is written [`SYNC_EVERY_BYTES`] at a time, each
/// followed by an `fdatasync`, so that the log's own writes to the same disk (which payments
/// wait for) never queue behind more than that. Written whole and synced once, an 800 MB
/// snapshot held payments up for 0.5–0.8 s on this machine (`scripts/bench-snapshot.sh`).
pub fn write_temporary_std(
    dir: &std::path::Path,
    name: &str,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let temporary = dir.join(format!("{name}{TEMPORARY_SUFFIX}"));
    let file = SyncEvery {
        file: std::fs::File::create(&temporary)?,
        unsynced: 0,
    };
    let mut out = io::BufWriter::with_capacity(SYNC_EVERY_BYTES, file);
    write(&mut out)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.file.sync_all()
}

/// How much of a file [`write_temporary_std`] writes between two `fdatasync`s.
pub const SYNC_EVERY_BYTES: usize = 1 << 20;

/// A file written at most [`SYNC_EVERY_BYTES`] at a time, with an `fdatasync` after each.
struct SyncEvery {
    file: std::fs::File,
    unsynced: usize,
}

impl Write for SyncEvery {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // No further than the next sync: a large buffer is written a MiB at a time.
        let room = SYNC_EVERY_BYTES - self.unsynced;
        let written = self.file.write(&bytes[..bytes.len().min(room)])?;
        self.unsynced += written;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Renames `name` + [`TEMPORARY_SUFFIX`] in `dir` to `name` and `fsync`s the directory.
pub fn publish_std(dir: &std::path::Path, name: &str) -> io::Result<()> {
    std::fs::rename(dir.join(format!("{name}{TEMPORARY_SUFFIX}")), dir.join(name))?;
    sync_dir(dir)
}

/// `fsync` of a directory, so that created, renamed and removed entries are durable.
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_write_goes_a_sync_interval_at_a_time() {
        let path = std::env::temp_dir().join(format!("shardpay-disk-chunks-{}", std::process::id()));
        let mut file = SyncEvery {
            file: std::fs::File::create(&path).unwrap(),
            unsynced: 0,
        };
        assert_eq!(
            file.write(&vec![7; 3 * SYNC_EVERY_BYTES]).unwrap(),
            SYNC_EVERY_BYTES
        );
        assert_eq!(file.unsynced, 0, "synced after a full interval");
        assert_eq!(file.write(&[7; 100]).unwrap(), 100);
        assert_eq!(
            file.write(&vec![7; SYNC_EVERY_BYTES]).unwrap(),
            SYNC_EVERY_BYTES - 100
        );
        assert_eq!(file.unsynced, 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn temporary_files_are_written_whole_then_published() {
        let dir = std::env::temp_dir().join(format!("shardpay-disk-temporary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes: Vec<u8> = (0..5 * SYNC_EVERY_BYTES + 123).map(|i| (i % 251) as u8).collect();
        // One large write, as a snapshot's body is.
        write_temporary_std(&dir, "whole", |out| out.write_all(&bytes)).unwrap();
        assert!(!dir.join("whole").exists());
        assert_eq!(
            std::fs::read(dir.join(format!("whole{TEMPORARY_SUFFIX}"))).unwrap(),
            bytes
        );
        publish_std(&dir, "whole").unwrap();
        assert_eq!(std::fs::read(dir.join("whole")).unwrap(), bytes);
        assert!(!dir.join(format!("whole{TEMPORARY_SUFFIX}")).exists());
        // A file written again replaces the left-over temporary file.
        write_temporary_std(&dir, "whole", |out| out.write_all(b"short")).unwrap();
        assert_eq!(
            std::fs::read(dir.join(format!("whole{TEMPORARY_SUFFIX}"))).unwrap(),
            b"short"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_round_trip_and_sort_by_sequence() {
        assert_eq!(parse_segment_name(&segment_name(17)), Some(17));
        assert_eq!(parse_snapshot_name(&snapshot_name(u64::MAX)), Some(u64::MAX));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name("wal-1.log"), None);
        assert_eq!(parse_segment_name(&format!("{}.tmp", segment_name(3))), None);
    }
}
