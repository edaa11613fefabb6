//! The shard's set of open connections: the per-shard and per-client-IP limits, coarse read and
//! write deadlines, and graceful drain. Shard-local (`Rc`/`Cell`), never shared between threads.
//!
//! Deadlines cost a connection two `Cell` writes per read or write: it arms a deadline on the
//! shard's coarse clock before the operation and disarms it after. The shard's ticker
//! ([`Connections::tick`]) advances the clock and expires overdue connections by shutting their
//! read side (a pending read ends) or, for a write, both sides (a pending send fails); the
//! connection then sees [`Registration::expired`]. No timer is registered per operation.
//! Deadlines fire between their duration and that plus two ticks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// One connection's state, shared between the connection and the registry.
struct State {
    fd: RawFd,
    idle: Cell<bool>,
    /// Coarse-clock millisecond at which the pending read or write expires; 0 when none is armed.
    deadline_ms: Cell<u64>,
    /// The armed deadline is a write's.
    writing: Cell<bool>,
    expired: Cell<bool>,
    /// The client's address, counted in `per_ip`.
    ip: Option<IpAddr>,
}

/// Open connections of one shard.
pub struct Connections {
    max: usize,
    /// Most connections from one client IP address; 0: no limit.
    per_ip_max: usize,
    /// Open connections per client IP address (only while `per_ip_max` is set).
    per_ip: RefCell<HashMap<IpAddr, u32>>,
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
    /// At most `max` open connections, `per_ip_max` of them from one client address (0: no
    /// limit); deadlines are checked every `tick`.
    pub fn new(max: usize, per_ip_max: usize, tick: Duration) -> Rc<Connections> {
        Rc::new(Connections {
            max,
            per_ip_max,
            per_ip: RefCell::new(HashMap::new()),
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

    /// Registers a new connection from `peer`, or says why not: the shard is at its limit or
    /// draining, or `peer` has its share of connections already.
    pub fn register(self: &Rc<Self>, fd: RawFd, peer: Option<IpAddr>) -> Result<Registration, Refusal> {
        if self.open.get() >= self.max || self.draining.get() {
            return Err(Refusal::Shard);
        }
        let ip = peer.filter(|_| self.per_ip_max > 0);
        if let Some(ip) = ip {
            let mut per_ip = self.per_ip.borrow_mut();
            let count = per_ip.entry(ip).or_insert(0);
            if *count as usize >= self.per_ip_max {
                return Err(Refusal::Ip);
            }
            *count += 1;
        }
        let state = Rc::new(State {
            fd,
            idle: Cell::new(false),
            deadline_ms: Cell::new(0),
            writing: Cell::new(false),
            expired: Cell::new(false),
            ip,
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
        Ok(Registration {
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
                if state.writing.get() {
                    shut_both(state.fd);
                } else {
                    shut_read(state.fd);
                }
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

/// Shuts both sides of a connection, so its pending send fails.
fn shut_both(fd: RawFd) {
    // SAFETY: as for `shut_read`.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The shard is at `limits.connections_per_shard_max`, or draining.
    Shard,
    /// The client's address is at `limits.connections_per_ip_max` on this shard.
    Ip,
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

    /// Arms a write deadline `timeout` from now: when it passes, the connection is shut.
    pub fn arm_write(&self, timeout: Duration) {
        self.state.writing.set(true);
        self.arm_deadline(timeout);
    }

    /// Arms a read deadline `timeout` from now (rounded up to the shard's tick).
    pub fn arm(&self, timeout: Duration) {
        self.state.writing.set(false);
        self.arm_deadline(timeout);
    }

    fn arm_deadline(&self, timeout: Duration) {
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
        if let Some(ip) = self.state.ip {
            let mut per_ip = self.connections.per_ip.borrow_mut();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.connections.slots.borrow_mut()[self.index] = None;
        self.connections.free.borrow_mut().push(self.index);
        let open = self.connections.open.get() - 1;
        self.connections.open.set(open);
        if open == 0 {
            self.connections.wake_all();
        }
    }
}
