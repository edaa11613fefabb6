//! The journal: a shard's side of group commit.
//!
//! [`Journal::append`] encodes records into the open batch and returns at once; the shard then
//! applies them. The writer ([`super::writer`]) takes the open batch whenever its previous write
//! has finished, writes it durably (one O_DSYNC write, or a write and an `fdatasync`), and marks
//! it durable; every append made meanwhile joins the next batch. A response must not leave before what it observed is
//! durable: the shard awaits [`Journal::durable`] of [`Journal::written`] before answering.
//! Shard-local (`Rc`, no locks).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::{frame, Log, Record};

/// When an append counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// After its batch's write is durable.
    Fsync,
    /// At once; the writer still writes, without syncing (benchmarks: a crash loses data).
    NoSync,
    /// At once, and nothing is written (the in-memory backend).
    Memory,
    /// After the writer says so; records are not encoded (a store of rows, which reads what to
    /// write from the state: ScyllaDB). Batches are ranges of sequence numbers.
    External,
}

/// Why nothing more can be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage failed: {0}")]
pub struct Failed(pub String);

/// A batch handed to the writer.
#[derive(Debug)]
pub struct Batch {
    /// The encoded frames.
    pub bytes: Vec<u8>,
    /// Sequence number of its first frame.
    pub first: u64,
    /// Sequence number of its last frame.
    pub last: u64,
}

/// Counters, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames appended.
    pub frames: u64,
    /// Batches made durable.
    pub batches: u64,
    /// Bytes appended.
    pub bytes: u64,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// Frames of the open batch.
    open: Vec<u8>,
    /// A buffer to reuse for the next open batch.
    spare: Vec<u8>,
    /// Sequence number of the open batch's first frame (when it is not empty).
    open_first: u64,
    /// Last sequence number appended.
    written: u64,
    /// Last sequence number durable.
    durable: u64,
    failed: Option<Failed>,
    writer: Option<Waker>,
    waiters: Vec<(u64, Waker)>,
    stats: Stats,
}

/// A shard's journal.
#[derive(Debug)]
pub struct Journal {
    state: RefCell<State>,
}

impl Journal {
    /// A journal whose last stored frame is `last_seq` (0 for a new log).
    pub fn new(mode: Mode, last_seq: u64) -> Rc<Journal> {
        Rc::new(Journal {
            state: RefCell::new(State {
                mode,
                open: Vec::new(),
                spare: Vec::new(),
                open_first: last_seq + 1,
                written: last_seq,
                durable: last_seq,
                failed: None,
                writer: None,
                waiters: Vec::new(),
                stats: Stats::default(),
            }),
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    /// Encodes `records` as the next frame of the open batch; returns its sequence number.
    pub fn append(&self, records: &[Record]) -> u64 {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let seq = state.written + 1;
        state.written = seq;
        state.stats.frames += 1;
        if state.mode == Mode::Memory {
            state.durable = seq;
            return seq;
        }
        if state.mode == Mode::External {
            if let Some(writer) = state.writer.take() {
                writer.wake();
            }
            return seq;
        }
        if state.open.is_empty() {
            state.open_first = seq;
        }
        let before = state.open.len();
        if frame::encode(&mut state.open, seq, state.open_first, records).is_none() {
            // No command decides megabytes of events; refusing to store one would lose it.
            panic!("a single append exceeds {} bytes", frame::PAYLOAD_BYTES_MAX);
        }
        state.stats.bytes += (state.open.len() - before) as u64;
        if state.mode == Mode::NoSync {
            state.durable = seq;
        }
        if let Some(writer) = state.writer.take() {
            writer.wake();
        }
        seq
    }

    /// The last sequence number appended.
    pub fn written(&self) -> u64 {
        self.state.borrow().written
    }

    /// The last sequence number durable.
    pub fn durable_seq(&self) -> u64 {
        self.state.borrow().durable
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.state.borrow().stats
    }

    /// Whether the journal has failed.
    pub fn failed(&self) -> Option<Failed> {
        self.state.borrow().failed.clone()
    }

    /// Resolves once frame `seq` is durable, or with the failure that stopped the journal.
    pub fn durable(self: &Rc<Self>, seq: u64) -> Durable {
        Durable {
            journal: self.clone(),
            seq,
        }
    }

    /// Waits for the open batch (the writer's side). Returns `None` once the journal has failed.
    pub fn next_batch(self: &Rc<Self>) -> NextBatch {
        NextBatch {
            journal: self.clone(),
        }
    }

    /// The writer stored frames up to `last`; `bytes` is the batch's buffer, kept for reuse.
    pub fn stored(&self, last: u64, mut bytes: Vec<u8>) {
        let mut state = self.state.borrow_mut();
        if state.failed.is_some() {
            return;
        }
        state.stats.batches += 1;
        if last > state.durable {
            state.durable = last;
        }
        bytes.clear();
        if bytes.capacity() <= 1 << 20 {
            state.spare = bytes;
        }
        let durable = state.durable;
        let mut i = 0;
        while i < state.waiters.len() {
            if state.waiters[i].0 <= durable {
                state.waiters.swap_remove(i).1.wake();
            } else {
                i += 1;
            }
        }
    }

    /// Storage failed: nothing more is acknowledged; every waiter gets the failure.
    pub fn fail(&self, failure: Failed) {
        let mut state = self.state.borrow_mut();
        if state.failed.is_none() {
            state.failed = Some(failure);
        }
        for (_, waker) in state.waiters.drain(..) {
            waker.wake();
        }
        if let Some(writer) = state.writer.take() {
            writer.wake();
        }
    }
}

/// The future of [`Journal::durable`].
pub struct Durable {
    journal: Rc<Journal>,
    seq: u64,
}

impl Future for Durable {
    type Output = Result<(), Failed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.journal.state.borrow_mut();
        if let Some(failed) = &state.failed {
            return Poll::Ready(Err(failed.clone()));
        }
        if state.durable >= self.seq {
            return Poll::Ready(Ok(()));
        }
        let seq = self.seq;
        match state
            .waiters
            .iter_mut()
            .find(|(s, w)| *s == seq && w.will_wake(cx.waker()))
        {
            Some(_) => {}
            None => state.waiters.push((seq, cx.waker().clone())),
        }
        Poll::Pending
    }
}

/// The future of [`Journal::next_batch`].
pub struct NextBatch {
    journal: Rc<Journal>,
}

impl Future for NextBatch {
    type Output = Option<Batch>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.journal.state.borrow_mut();
        let state = &mut *state;
        if state.failed.is_some() {
            return Poll::Ready(None);
        }
        if state.mode == Mode::External {
            if state.written < state.open_first {
                state.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let batch = Batch {
                bytes: Vec::new(),
                first: state.open_first,
                last: state.written,
            };
            state.open_first = state.written + 1;
            return Poll::Ready(Some(batch));
        }
        if state.open.is_empty() {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let bytes = std::mem::replace(&mut state.open, std::mem::take(&mut state.spare));
        let batch = Batch {
            bytes,
            first: state.open_first,
            last: state.written,
        };
        state.open_first = state.written + 1;
        Poll::Ready(Some(batch))
    }
}

/// The [`Log`] a shard's home writes to: its journal.
pub struct JournalLog(pub Rc<Journal>);

impl Log for JournalLog {
    fn append(&mut self, records: &[Record]) {
        self.0.append(records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::idempotency::{Change, Scope};

    fn record(i: usize) -> Record {
        Record::Idempotency(Change::Released {
            scope: Scope::Admin,
            key: format!("k{i}"),
        })
    }

    fn poll<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn appends_made_during_a_write_join_the_next_batch() {
        let journal = Journal::new(Mode::Fsync, 10);
        assert_eq!(journal.append(&[record(1)]), 11);
        assert_eq!(journal.append(&[record(2)]), 12);
        let mut waiting = journal.durable(12);
        assert!(poll(&mut waiting).is_pending());
        let Poll::Ready(Some(first)) = poll(&mut journal.next_batch()) else {
            panic!("a batch is open")
        };
        assert_eq!((first.first, first.last), (11, 12));
        assert_eq!(journal.append(&[record(3)]), 13);
        journal.stored(first.last, first.bytes);
        assert_eq!(poll(&mut waiting), Poll::Ready(Ok(())));
        assert!(poll(&mut journal.durable(13)).is_pending());
        let Poll::Ready(Some(second)) = poll(&mut journal.next_batch()) else {
            panic!("a batch is open")
        };
        assert_eq!((second.first, second.last), (13, 13));
        let frame = frame::decode(&second.bytes).unwrap();
        assert_eq!((frame.seq, frame.batch), (13, 13));
        assert!(poll(&mut journal.next_batch()).is_pending());
    }

    #[test]
    fn a_failure_reaches_every_waiter_and_nothing_becomes_durable_after_it() {
        let journal = Journal::new(Mode::Fsync, 0);
        journal.append(&[record(1)]);
        let mut waiting = journal.durable(1);
        assert!(poll(&mut waiting).is_pending());
        let Poll::Ready(Some(batch)) = poll(&mut journal.next_batch()) else {
            panic!("a batch is open")
        };
        journal.fail(Failed("disk on fire".into()));
        journal.stored(batch.last, batch.bytes);
        assert!(matches!(poll(&mut waiting), Poll::Ready(Err(_))));
        assert_eq!(journal.durable_seq(), 0);
        assert!(matches!(poll(&mut journal.next_batch()), Poll::Ready(None)));
    }

    #[test]
    fn an_external_journal_hands_out_ranges_and_waits_for_the_writer() {
        let journal = Journal::new(Mode::External, 5);
        assert!(poll(&mut journal.next_batch()).is_pending());
        assert_eq!(journal.append(&[record(1)]), 6);
        assert_eq!(journal.append(&[record(2)]), 7);
        let mut waiting = journal.durable(7);
        assert!(poll(&mut waiting).is_pending());
        let Poll::Ready(Some(batch)) = poll(&mut journal.next_batch()) else {
            panic!("a batch is open")
        };
        assert_eq!((batch.first, batch.last, batch.bytes.len()), (6, 7, 0));
        assert!(poll(&mut journal.next_batch()).is_pending());
        journal.stored(batch.last, batch.bytes);
        assert_eq!(poll(&mut waiting), Poll::Ready(Ok(())));
        assert_eq!(journal.stats().bytes, 0);
    }

    #[test]
    fn without_fsync_appends_are_acknowledged_at_once() {
        for mode in [Mode::NoSync, Mode::Memory] {
            let journal = Journal::new(mode, 0);
            let seq = journal.append(&[record(1)]);
            assert_eq!(poll(&mut journal.durable(seq)), Poll::Ready(Ok(())));
        }
    }
}
