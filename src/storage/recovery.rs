//! Recovery: rebuild a shard from its directory — the newest valid snapshot, then every frame
//! after it, in order.
//!
//! The end of the log is the first place with no valid frame. What follows decides what it is:
//! - nothing but zeroes, or damage with no valid frame of a *later batch* after it: a torn or
//!   corrupt tail — the last batch, whose write was cut off before its `fdatasync` returned, so
//!   none of it was acknowledged. It is truncated, with a log line saying how much.
//! - a valid frame of a later batch after it: the damaged batch had been made durable (the writer
//!   starts a batch only after the previous one's `fdatasync`), so acknowledged data is damaged.
//!   Recovery refuses to start and names the file and offset; `repair` truncates there instead.
//!
//! Synchronous (standard library files): it runs before the shard serves anything.

use std::io;
use std::path::{Path, PathBuf};

use super::disk::{parse_segment_name, parse_snapshot_name, segment_name, TEMPORARY_SUFFIX};
use super::frame::{self, HEADER_BYTES, PAYLOAD_BYTES_MAX};
use super::snapshot;
use super::writer::Files;
use super::Record;

/// Why a shard's directory cannot be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A file could not be read, listed or truncated.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// Acknowledged frames are damaged.
    #[error(
        "{}: the log is damaged at byte {offset} (frame {expected_seq} expected), and a later \
         batch follows at byte {later_offset} (frame {later_seq}), so acknowledged data is lost; \
         refusing to start. Restore the directory from a backup, or start with --repair to \
         truncate the log at byte {offset} (dropping every frame from {expected_seq} on)",
        path.display()
    )]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// The frame that should have been there.
        expected_seq: u64,
        /// Where the later valid frame is (in `path` or a later segment).
        later_offset: u64,
        /// Its sequence number.
        later_seq: u64,
    },
    /// A frame with a valid checksum does not decode: written by an incompatible version.
    #[error("{}: frame {seq} at byte {offset} does not decode (written by another version?)", path.display())]
    Undecodable {
        /// The segment.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// Sequence number.
        seq: u64,
    },
    /// The snapshot's state could not be restored.
    #[error("{}: {message}", path.display())]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Sequence number of the snapshot restored (0: none).
    pub snapshot_seq: u64,
    /// Last frame replayed (or the snapshot's): the next frame is this + 1.
    pub last_seq: u64,
    /// Frames replayed after the snapshot.
    pub frames: u64,
    /// Bytes of a torn tail that were cut off, and where.
    pub truncated: Option<(PathBuf, u64, u64)>,
    /// Log files kept, for the writer.
    pub files: Files,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RecoveryError + '_ {
    move |error| RecoveryError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What recovery rebuilds: a shard's state.
pub trait Sink {
    /// Replaces the state with a snapshot's body.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
    /// Applies one frame's records.
    fn replay(&mut self, records: Vec<Record>);
}

/// Recovers the shard in `dir` into `sink`: the newest valid snapshot, then every later frame's
/// records in order. `repair` truncates damage instead of refusing to start.
pub fn recover(dir: &Path, repair: bool, sink: &mut impl Sink) -> Result<Recovered, RecoveryError> {
    let mut segments = Vec::new();
    let mut snapshots = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(TEMPORARY_SUFFIX) {
            // A snapshot whose write did not finish.
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        } else if let Some(seq) = parse_segment_name(&name) {
            segments.push(seq);
        } else if let Some(seq) = parse_snapshot_name(&name) {
            snapshots.push(seq);
        }
    }
    segments.sort_unstable();
    snapshots.sort_unstable();

    // The newest snapshot that reads back whole; a damaged one falls back to the one before.
    let mut snapshot_seq = 0;
    let mut restored = None;
    for &seq in snapshots.iter().rev() {
        let path = dir.join(super::disk::snapshot_name(seq));
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        match snapshot::decode(&bytes) {
            Ok((stored, body)) if stored == seq => {
                sink.restore(body).map_err(|message| RecoveryError::Snapshot {
                    path: path.clone(),
                    message,
                })?;
                snapshot_seq = seq;
                restored = Some(seq);
                break;
            }
            Ok(_) | Err(_) => {
                tracing::warn!(path = %path.display(), "snapshot is damaged; using an older one");
            }
        }
    }
    let kept_snapshots: Vec<u64> = snapshots
        .into_iter()
        .filter(|&s| restored.is_some_and(|r| s <= r))
        .collect();

    let mut last_seq = snapshot_seq;
    let mut frames = 0;
    let mut truncated = None;
    let mut kept_segments = Vec::new();
    let mut index = 0;
    while index < segments.len() {
        let first = segments[index];
        let path = dir.join(segment_name(first));
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        let mut pos = 0;
        let mut contributed = false;
        let end = loop {
            let Some(found) = frame::decode(&bytes[pos..]) else {
                break pos;
            };
            if found.seq <= snapshot_seq {
                pos += found.size();
                continue;
            }
            if found.seq != last_seq + 1 {
                break pos;
            }
            let Some(records) = found.records() else {
                return Err(RecoveryError::Undecodable {
                    path,
                    offset: pos as u64,
                    seq: found.seq,
                });
            };
            sink.replay(records);
            frames += 1;
            contributed = true;
            last_seq = found.seq;
            pos += found.size();
        };
        let rest = &bytes[end..];
        if rest.iter().all(|&b| b == 0) {
            // The clean end of this segment.
            if contributed {
                kept_segments.push(first);
            } else {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
            index += 1;
            continue;
        }
        // Damage: is a later batch behind it, here or in a later segment?
        let later = later_batch(&bytes, end, last_seq).map(|(offset, seq)| (path.clone(), offset, seq));
        let later = match later {
            Some(found) => Some(found),
            None => {
                let mut found = None;
                for &next in &segments[index + 1..] {
                    let next_path = dir.join(segment_name(next));
                    let next_bytes = std::fs::read(&next_path).map_err(io_error(&next_path))?;
                    if let Some((offset, seq)) = later_batch(&next_bytes, 0, last_seq) {
                        found = Some((next_path, offset, seq));
                        break;
                    }
                }
                found
            }
        };
        if let Some((_, later_offset, later_seq)) = later {
            if !repair {
                return Err(RecoveryError::Damaged {
                    path,
                    offset: end as u64,
                    expected_seq: last_seq + 1,
                    later_offset,
                    later_seq,
                });
            }
            tracing::error!(
                path = %path.display(),
                offset = end,
                from_seq = last_seq + 1,
                "--repair: truncating the damaged log, dropping every later frame"
            );
        }
        let nonzero = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
        tracing::warn!(
            path = %path.display(),
            offset = end,
            bytes = nonzero,
            "the log's tail is torn or corrupt: truncating it (none of it was acknowledged)"
        );
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.set_len(end as u64).map_err(io_error(&path))?;
        file.sync_all().map_err(io_error(&path))?;
        truncated = Some((path.clone(), end as u64, nonzero));
        if contributed {
            kept_segments.push(first);
        } else {
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
        // Everything after the end goes: later segments hold no later batch (or --repair).
        for &next in &segments[index + 1..] {
            let next_path = dir.join(segment_name(next));
            std::fs::remove_file(&next_path).map_err(io_error(&next_path))?;
        }
        break;
    }
    super::disk::sync_dir(dir).map_err(io_error(dir))?;
    Ok(Recovered {
        snapshot_seq,
        last_seq,
        frames,
        truncated,
        files: Files {
            segments: kept_segments,
            snapshots: kept_snapshots,
        },
    })
}

/// The first valid frame at or after `from` that belongs to a batch started after frame
/// `last_seq + 1` — proof that the batch holding `last_seq + 1` had been synced.
fn later_batch(bytes: &[u8], from: usize, last_seq: u64) -> Option<(u64, u64)> {
    let mut pos = from;
    while pos + HEADER_BYTES <= bytes.len() {
        // Cheap plausibility checks before the checksum, so scanning garbage stays linear.
        let header = &bytes[pos..pos + HEADER_BYTES];
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
        let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let batch = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
        let plausible = len > 0
            && len <= PAYLOAD_BYTES_MAX
            && batch > last_seq + 1
            && seq >= batch
            && seq - last_seq < 1 << 40;
        if plausible {
            if let Some(found) = frame::decode(&bytes[pos..]) {
                return Some((pos as u64, found.seq));
            }
        }
        pos += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::idempotency::{Change, Scope};
    use crate::storage::disk::snapshot_name;

    fn record(seq: u64) -> Record {
        Record::Idempotency(Change::Released {
            scope: Scope::Admin,
            key: format!("frame-{seq}"),
        })
    }

    /// Frames 1..=10 in batches [1-3] [4-6] [7-8] [9-10]; returns the bytes and each frame's start.
    fn log() -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for (first, last) in [(1, 3), (4, 6), (7, 8), (9, 10)] {
            for seq in first..=last {
                starts.push(bytes.len());
                // Frames of different sizes, so offsets do not repeat a pattern.
                let records: Vec<Record> = (0..seq % 3 + 1).map(|_| record(seq)).collect();
                frame::encode(&mut bytes, seq, first, &records).unwrap();
            }
        }
        (bytes, starts)
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("shardpay-recovery-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        fn write(&self, name: &str, bytes: &[u8]) {
            std::fs::write(self.0.join(name), bytes).unwrap();
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Collects what recovery hands over.
    #[derive(Default)]
    struct Seen {
        snapshot: Vec<u8>,
        frames: Vec<u64>,
    }

    impl Sink for Seen {
        fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
            self.snapshot = snapshot.to_vec();
            Ok(())
        }

        fn replay(&mut self, records: Vec<Record>) {
            let Record::Idempotency(Change::Released { key, .. }) = &records[0] else {
                panic!("unexpected record")
            };
            self.frames
                .push(key.trim_start_matches("frame-").parse().unwrap());
        }
    }

    /// Recovers `dir`; the sequence numbers of the frames replayed.
    fn replayed(dir: &Path, repair: bool) -> Result<(Vec<u64>, Recovered), RecoveryError> {
        let mut seen = Seen::default();
        let recovered = recover(dir, repair, &mut seen)?;
        Ok((seen.frames, recovered))
    }

    /// The frames wholly inside `bytes[..end]`.
    fn prefix(starts: &[usize], total: usize, end: usize) -> Vec<u64> {
        (0..starts.len())
            .filter(|&i| starts.get(i + 1).copied().unwrap_or(total) <= end)
            .map(|i| i as u64 + 1)
            .collect()
    }

    fn padded(bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out.resize(bytes.len().next_multiple_of(4096) + 4096, 0);
        out
    }

    #[test]
    fn a_clean_log_replays_every_frame_and_is_kept() {
        let (bytes, _) = log();
        let dir = Dir::new();
        dir.write(&segment_name(1), &padded(&bytes));
        let (seen, recovered) = replayed(&dir.0, false).unwrap();
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        assert_eq!(recovered.last_seq, 10);
        assert_eq!(recovered.truncated, None);
        assert_eq!(recovered.files.segments, vec![1]);
    }

    #[test]
    fn truncation_or_zeroes_at_every_offset_of_the_last_two_frames_leave_the_longest_valid_prefix() {
        let (bytes, starts) = log();
        for cut in starts[8]..=bytes.len() {
            let expected = prefix(&starts, bytes.len(), cut);
            for zero_fill in [false, true] {
                let dir = Dir::new();
                let image = if zero_fill {
                    let mut image = padded(&bytes);
                    image[cut..bytes.len()].fill(0);
                    image
                } else {
                    bytes[..cut].to_vec()
                };
                dir.write(&segment_name(1), &image);
                let (seen, recovered) = replayed(&dir.0, false)
                    .unwrap_or_else(|error| panic!("cut {cut} zero_fill {zero_fill}: {error}"));
                assert_eq!(seen, expected, "cut {cut} zero_fill {zero_fill}");
                assert_eq!(recovered.last_seq, *expected.last().unwrap());
                // Recovery made the tail clean: a second recovery agrees and truncates nothing.
                let (again, second) = replayed(&dir.0, false).unwrap();
                assert_eq!(again, expected);
                assert_eq!(second.truncated, None, "cut {cut}");
            }
        }
    }

    #[test]
    fn any_flipped_bit_in_the_last_batch_truncates_before_the_damaged_frame() {
        let (bytes, starts) = log();
        for bit in starts[8] * 8..bytes.len() * 8 {
            let byte = bit / 8;
            let damaged_frame = starts.iter().rposition(|&start| start <= byte).unwrap();
            let mut image = padded(&bytes);
            image[byte] ^= 1 << (bit % 8);
            let dir = Dir::new();
            dir.write(&segment_name(1), &image);
            let (seen, recovered) =
                replayed(&dir.0, false).unwrap_or_else(|error| panic!("bit {bit}: {error}"));
            assert_eq!(seen, (1..=damaged_frame as u64).collect::<Vec<_>>(), "bit {bit}");
            let (path, offset, _) = recovered.truncated.expect("the tail was cut");
            assert_eq!(path, dir.0.join(segment_name(1)));
            assert_eq!(offset, starts[damaged_frame] as u64);
        }
    }

    #[test]
    fn damage_before_a_later_batch_refuses_to_start_naming_file_and_offset() {
        let (bytes, starts) = log();
        // Frame 5 is in batch [4-6]; batches [7-8] and [9-10] follow it.
        for byte in [starts[4], starts[4] + 10, starts[5] - 1] {
            let mut image = padded(&bytes);
            image[byte] ^= 0x40;
            let dir = Dir::new();
            dir.write(&segment_name(1), &image);
            match replayed(&dir.0, false) {
                Err(RecoveryError::Damaged {
                    path,
                    offset,
                    expected_seq,
                    later_seq,
                    ..
                }) => {
                    assert_eq!(path, dir.0.join(segment_name(1)));
                    assert_eq!(offset, starts[4] as u64);
                    assert_eq!(expected_seq, 5);
                    assert_eq!(later_seq, 7);
                }
                other => panic!("byte {byte}: expected damage, got {other:?}"),
            }
            let message = replayed(&dir.0, false).unwrap_err().to_string();
            assert!(
                message.contains("wal-00000000000000000001.log") && message.contains("--repair"),
                "{message}"
            );
            // The files were left alone; --repair truncates at the damage.
            let (seen, recovered) = replayed(&dir.0, true).unwrap();
            assert_eq!(seen, vec![1, 2, 3, 4]);
            assert_eq!(recovered.last_seq, 4);
            assert_eq!(replayed(&dir.0, false).unwrap().0, vec![1, 2, 3, 4]);
        }
    }

    #[test]
    fn damage_followed_by_a_later_segment_is_reported_and_repair_drops_that_segment() {
        let (bytes, starts) = log();
        let dir = Dir::new();
        let mut first = padded(&bytes[..starts[6]]);
        first[starts[2] + 3] ^= 1; // frame 3, batch [1-3]
        dir.write(&segment_name(1), &first);
        dir.write(&segment_name(7), &padded(&bytes[starts[6]..]));
        let error = replayed(&dir.0, false).unwrap_err();
        assert!(
            matches!(
                error,
                RecoveryError::Damaged {
                    expected_seq: 3,
                    later_seq: 4,
                    ..
                }
            ),
            "{error}"
        );
        let (seen, recovered) = replayed(&dir.0, true).unwrap();
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(recovered.files.segments, vec![1]);
        assert!(!dir.0.join(segment_name(7)).exists());
    }

    #[test]
    fn a_snapshot_covers_the_frames_before_it_and_a_damaged_one_falls_back() {
        let (bytes, _) = log();
        let dir = Dir::new();
        dir.write(&segment_name(1), &padded(&bytes));
        dir.write(&snapshot_name(6), &snapshot::encode(6, b"state at 6"));
        let mut damaged = snapshot::encode(8, b"state at 8");
        damaged[40] ^= 1;
        dir.write(&snapshot_name(8), &damaged);
        dir.write("snapshot-00000000000000000009.snap.tmp", b"half-written");
        let mut seen = Seen::default();
        let recovered = recover(&dir.0, false, &mut seen).unwrap();
        assert_eq!(seen.snapshot, b"state at 6");
        assert_eq!(seen.frames, vec![7, 8, 9, 10]);
        assert_eq!(recovered.snapshot_seq, 6);
        assert_eq!(recovered.frames, 4, "frames 7..=10 replayed");
        assert_eq!(recovered.last_seq, 10);
        assert!(!dir.0.join("snapshot-00000000000000000009.snap.tmp").exists());
    }

    #[test]
    fn a_gap_in_sequence_numbers_is_not_replayed_past() {
        let mut bytes = Vec::new();
        frame::encode(&mut bytes, 1, 1, &[record(1)]).unwrap();
        frame::encode(&mut bytes, 3, 3, &[record(3)]).unwrap();
        let dir = Dir::new();
        dir.write(&segment_name(1), &padded(&bytes));
        // Frame 3 is a later batch than the missing frame 2: acknowledged data is missing.
        assert!(matches!(
            replayed(&dir.0, false),
            Err(RecoveryError::Damaged { expected_seq: 2, .. })
        ));
    }
}
