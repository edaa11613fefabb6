//! The shard's set of open connections: the per-shard limit, coarse read deadlines, and graceful
//! drain. Shard-local (`Rc`/`Cell`), never shared between threads.
//!
//! Deadlines cost a connection two `Cell` writes per read: it arms a deadline on the shard's
//! coarse clock before reading and disarms it after. The shard's ticker ([`Connections::tick`])
//! advances the clock and expires overdue connections by shutting their read side, which ends the
//! pending read; the connection then sees [`Registration::expired`]. No timer is registered per
//! read. Deadlines fire between their duration and that plus two ticks.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// One connection's state, shared between the connection and the registry.
struct State {
    fd: RawFd,
    idle: Cell<bool>,
    /// Coarse-clock millisecond at which the pending read expires; 0 when none is armed.
    deadline_ms: Cell<u64>,
    expired: Cell<bool>,
}

/// Open connections of one shard.
pub struct Connections {
    max: usize,
    tick: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch`, as of the last tick.
    now_ms: Cell<u64>,
    slots: RefCell<Vec<Option<Rc<State>>>>,
    free: RefCell<Vec<usize>>,
    open: Cell<usize>,
    draining: Cell<bool>,
    /// Tasks waiting for the drain to start (accept loops) or for the last connection to close.
    waiters: RefCell<Vec<Waker>>,
}

impl Connections {
    /// At most `max` open connections; deadlines are checked every `tick`.
    pub fn new(max: usize, tick: Duration) -> Rc<Connections> {
        Rc::new(Connections {
            max,
            tick,
            epoch: Instant::now(),
            now_ms: Cell::new(0),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            open: Cell::new(0),
            draining: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
        })
    }

    /// Registers a new connection, or `None` when the shard is at its limit or draining.
    pub fn register(self: &Rc<Self>, fd: RawFd) -> Option<Registration> {
        if self.open.get() >= self.max || self.draining.get() {
            return None;
        }
        let state = Rc::new(State {
            fd,
            idle: Cell::new(false),
            deadline_ms: Cell::new(0),
            expired: Cell::new(false),
        });
        let index = match self.free.borrow_mut().pop() {
            Some(index) => {
                self.slots.borrow_mut()[index] = Some(state.clone());
                index
            }
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(Some(state.clone()));
                slots.len() - 1
            }
        };
        self.open.set(self.open.get() + 1);
        Some(Registration {
            connections: self.clone(),
            state,
            index,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Whether the drain has started.
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Advances the coarse clock and expires every connection whose read deadline has passed.
    /// Called by the shard's ticker.
    pub fn tick(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.now_ms.set(now);
        for state in self.slots.borrow().iter().flatten() {
            let deadline = state.deadline_ms.get();
            if deadline != 0 && deadline <= now && !state.expired.get() {
                state.expired.set(true);
                shut_read(state.fd);
            }
        }
    }

    /// Starts the drain: stop accepting, close idle connections now, busy ones after their response.
    pub fn start_drain(&self) {
        if self.draining.replace(true) {
            return;
        }
        for state in self.slots.borrow().iter().flatten() {
            if state.idle.get() {
                shut_read(state.fd);
            }
        }
        self.wake_all();
    }

    /// Resolves once the drain has started.
    pub async fn wait_draining(&self) {
        poll_fn(|context| {
            if self.draining.get() {
                Poll::Ready(())
            } else {
                self.add_waiter(context.waker());
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves once no connection is open.
    pub async fn wait_closed(&self) {
        poll_fn(|context| {
            if self.open.get() == 0 {
                Poll::Ready(())
            } else {
                self.add_waiter(context.waker());
                Poll::Pending
            }
        })
        .await
    }

    /// Keeps one waker per waiting task: a task polled again replaces its own entry, so the list
    /// stays as long as the number of waiting tasks (a few per shard).
    fn add_waiter(&self, waker: &Waker) {
        let mut waiters = self.waiters.borrow_mut();
        match waiters.iter_mut().find(|known| known.will_wake(waker)) {
            Some(known) => known.clone_from(waker),
            None => waiters.push(waker.clone()),
        }
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }
}

/// Shuts the read side of a connection, so its pending read returns end-of-stream.
fn shut_read(fd: RawFd) {
    // SAFETY: the descriptor belongs to a registered, open connection of this shard (a
    // connection unregisters before its descriptor is closed).
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD);
    }
}

/// A connection's membership in [`Connections`]; dropping it unregisters the connection.
pub struct Registration {
    connections: Rc<Connections>,
    state: Rc<State>,
    index: usize,
}

/// The drain-facing view of a registered connection, held by the code that knows when the
/// connection is idle.
#[derive(Clone)]
pub struct Presence {
    connections: Rc<Connections>,
    state: Rc<State>,
}

impl Presence {
    /// Whether the shard is draining.
    pub fn draining(&self) -> bool {
        self.connections.draining.get()
    }

    /// Marks the connection idle (waiting for a request) or busy. An idle connection of a
    /// draining shard is woken to close.
    pub fn set_idle(&self, idle: bool) {
        self.state.idle.set(idle);
        if idle && self.connections.draining.get() {
            shut_read(self.state.fd);
        }
    }
}

impl Registration {
    /// A handle for idle tracking and the drain state.
    pub fn presence(&self) -> Presence {
        Presence {
            connections: self.connections.clone(),
            state: self.state.clone(),
        }
    }

    /// Arms a read deadline `timeout` from now (rounded up to the shard's tick).
    pub fn arm(&self, timeout: Duration) {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX / 2);
        let tick_ms = self.connections.tick.as_millis() as u64;
        // The clock may be up to one tick old: add a tick so a deadline never fires early.
        let deadline = self
            .connections
            .now_ms
            .get()
            .saturating_add(timeout_ms)
            .saturating_add(tick_ms);
        self.state.deadline_ms.set(deadline.max(1));
    }

    /// Disarms the read deadline.
    pub fn disarm(&self) {
        self.state.deadline_ms.set(0);
    }

    /// Whether a deadline expired (the read side is then shut).
    pub fn expired(&self) -> bool {
        self.state.expired.get()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.slots.borrow_mut()[self.index] = None;
        self.connections.free.borrow_mut().push(self.index);
        let open = self.connections.open.get() - 1;
        self.connections.open.set(open);
        if open == 0 {
            self.connections.wake_all();
        }
    }
}
