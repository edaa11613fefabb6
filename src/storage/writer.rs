//! The writer: one task per shard that turns the journal's batches into segment writes.
//!
//! Loop: take the open batch, write it after the segment's last frame (rewriting the last partial
//! block, since O_DIRECT writes whole blocks), make it durable ([`SegmentFile::sync`]: an
//! `fdatasync`, or nothing for a file whose writes are already durable), mark the batch durable.
//! Appends made meanwhile form the next batch, so one sync acknowledges every request that
//! arrived during the previous one. A segment is closed when the next batch would pass
//! `segment_bytes`; the next one is named after its first frame.
//!
//! Snapshots: once `snapshot_bytes` were logged since the last one, the writer closes the segment
//! and asks the shard for its state as of now ([`Capture`]). The shard writes it to a temporary
//! file while batches go on (the real shard from a forked child process, so that encoding a large
//! state does not stop it); once that file and the frames it covers are durable, the writer
//! renames it into place ([`Disk::publish`]) and removes the segments it covers.
//!
//! A write or sync error is final: the journal fails, nothing more is acknowledged, and
//! [`Writer::run`] returns the error for the shard to stop the process (recovery starts from what
//! is on disk; a failed sync is never retried, since the kernel may have dropped the dirty pages).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;

use super::disk::{segment_name, snapshot_name, Disk, SegmentFile, BLOCK};
use super::journal::{Batch, Failed, Journal, Mode};

/// Sizes that steer the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// A segment is closed when the next batch would make it larger than this.
    pub segment_bytes: u64,
    /// A snapshot is taken once this many bytes were logged since the last one (0: never).
    pub snapshot_bytes: u64,
}

/// A snapshot being taken.
pub struct Capture {
    /// The sequence number the snapshot is as of: its state has every frame up to this one and
    /// none after it.
    pub seq: u64,
    /// Writes the snapshot file of the state as of `seq` ([`super::snapshot::encode`]) durably as
    /// [`snapshot_name`]`(seq)` + `TEMPORARY_SUFFIX`, while the writer goes on.
    pub written: Pin<Box<dyn Future<Output = io::Result<()>>>>,
}

/// Takes a snapshot of the state as of now. It must take the state at once (frames appended
/// after the call must not be in it); only the writing may come later.
pub type StateSource = Box<dyn Fn() -> Capture>;

/// The log files the writer found (from recovery) or wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Closed segments, oldest first, by first sequence number.
    pub segments: Vec<u64>,
    /// Snapshots, oldest first, by sequence number.
    pub snapshots: Vec<u64>,
}

struct Segment<F> {
    file: F,
    first: u64,
    /// Bytes of frames in the file.
    len: u64,
    /// The bytes of the last partial block, rewritten with the next batch.
    tail: Vec<u8>,
}

type SnapshotTask = Pin<Box<dyn Future<Output = io::Result<u64>>>>;

/// One shard's log writer.
pub struct Writer<D: Disk> {
    disk: Rc<D>,
    journal: Rc<Journal>,
    config: WriterConfig,
    files: Files,
    segment: Option<Segment<D::File>>,
    buffer: Vec<u8>,
    since_snapshot: u64,
    state: StateSource,
}

enum Next {
    Batch(Option<Batch>),
    Snapshot(io::Result<u64>),
}

impl<D: Disk + 'static> Writer<D> {
    /// A writer appending to a new segment after the `files` of a recovered log.
    pub fn new(
        disk: D,
        journal: Rc<Journal>,
        config: WriterConfig,
        files: Files,
        state: StateSource,
    ) -> Self {
        Writer {
            disk: Rc::new(disk),
            journal,
            config,
            files,
            segment: None,
            buffer: Vec::new(),
            since_snapshot: 0,
            state,
        }
    }

    /// Writes batches until storage fails (the error) or the journal is failed by someone else.
    pub async fn run(mut self) -> Failed {
        let mut snapshotting: Option<SnapshotTask> = None;
        loop {
            let next = match &mut snapshotting {
                Some(task) => {
                    let journal = self.journal.clone();
                    futures_lite::future::or(async { Next::Snapshot(task.await) }, async move {
                        Next::Batch(journal.next_batch().await)
                    })
                    .await
                }
                None => Next::Batch(self.journal.next_batch().await),
            };
            let outcome = match next {
                Next::Batch(None) => {
                    return self
                        .journal
                        .failed()
                        .unwrap_or_else(|| Failed("the journal stopped".into()))
                }
                Next::Batch(Some(batch)) => self.write(batch).await,
                Next::Snapshot(done) => {
                    snapshotting = None;
                    match done {
                        Ok(seq) => self.snapshot_done(seq).await,
                        Err(error) => Err(error),
                    }
                }
            };
            if let Err(error) = outcome {
                let failed = Failed(error.to_string());
                self.journal.fail(failed.clone());
                return failed;
            }
            if snapshotting.is_none()
                && self.config.snapshot_bytes > 0
                && self.since_snapshot >= self.config.snapshot_bytes
            {
                snapshotting = Some(self.start_snapshot());
            }
        }
    }

    async fn write(&mut self, batch: Batch) -> io::Result<()> {
        let needs_new = match &self.segment {
            None => true,
            Some(segment) => {
                segment.len > 0 && segment.len + batch.bytes.len() as u64 > self.config.segment_bytes
            }
        };
        if needs_new {
            self.close_segment();
            let size = self
                .config
                .segment_bytes
                .max(batch.bytes.len() as u64)
                .next_multiple_of(BLOCK as u64);
            let file = self.disk.create(&segment_name(batch.first), size).await?;
            self.segment = Some(Segment {
                file,
                first: batch.first,
                len: 0,
                tail: Vec::new(),
            });
        }
        let segment = self.segment.as_mut().expect("a segment is open");
        let start = segment.len - segment.tail.len() as u64;
        self.buffer.clear();
        self.buffer.extend_from_slice(&segment.tail);
        self.buffer.extend_from_slice(&batch.bytes);
        let filled = self.buffer.len();
        self.buffer.resize(filled.next_multiple_of(BLOCK), 0);
        segment.file.write_at(&self.buffer, start).await?;
        if self.journal.mode() == Mode::Fsync {
            segment.file.sync().await?;
        }
        segment.len += batch.bytes.len() as u64;
        let keep = (segment.len % BLOCK as u64) as usize;
        segment.tail.clear();
        segment
            .tail
            .extend_from_slice(&self.buffer[filled - keep..filled]);
        self.since_snapshot += batch.bytes.len() as u64;
        self.journal.stored(batch.last, batch.bytes);
        Ok(())
    }

    fn close_segment(&mut self) {
        if let Some(segment) = self.segment.take() {
            self.files.segments.push(segment.first);
        }
    }

    /// Closes the segment (so every older segment holds only frames the snapshot covers) and
    /// takes the state; its file is published once it and the frames it covers are durable.
    fn start_snapshot(&mut self) -> SnapshotTask {
        self.close_segment();
        self.since_snapshot = 0;
        let Capture { seq, written } = (self.state)();
        let disk = self.disk.clone();
        let journal = self.journal.clone();
        Box::pin(async move {
            written.await?;
            journal
                .durable(seq)
                .await
                .map_err(|failed| io::Error::other(failed.0))?;
            disk.publish(&snapshot_name(seq)).await?;
            Ok(seq)
        })
    }

    /// A snapshot as of `seq` is durable: remove the older snapshots and the segments it covers.
    async fn snapshot_done(&mut self, seq: u64) -> io::Result<()> {
        let open_first = self.segment.as_ref().map(|segment| segment.first);
        // A closed segment is covered when the next segment starts at or before seq + 1.
        let mut starts: Vec<u64> = self.files.segments.clone();
        starts.extend(open_first);
        let mut kept = Vec::new();
        let mut removed = 0;
        for (i, &first) in self.files.segments.iter().enumerate() {
            let next_first = starts.get(i + 1).copied();
            match next_first {
                Some(next) if next <= seq + 1 => {
                    self.disk.remove(&segment_name(first)).await?;
                    removed += 1;
                }
                _ => kept.push(first),
            }
        }
        self.files.segments = kept;
        for old in std::mem::take(&mut self.files.snapshots) {
            if old < seq {
                self.disk.remove(&snapshot_name(old)).await?;
            }
        }
        self.files.snapshots.push(seq);
        tracing::info!(
            seq,
            segments_removed = removed,
            "snapshot in place; the older snapshot and the segments it covers are removed"
        );
        Ok(())
    }
}
