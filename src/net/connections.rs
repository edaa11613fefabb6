//! The shard's set of open connections: the per-shard limit, and graceful drain — idle
//! connections are woken (their read side shut) so they close at once, busy ones finish their
//! requests and close after answering. Shard-local (`Rc`/`Cell`), never shared between threads.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// One connection's slot.
struct Slot {
    fd: RawFd,
    idle: bool,
}

/// Open connections of one shard.
pub struct Connections {
    max: usize,
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    open: Cell<usize>,
    draining: Cell<bool>,
    /// Tasks waiting for the drain to start (accept loops) or for the last connection to close.
    waiters: RefCell<Vec<Waker>>,
}

impl Connections {
    /// At most `max` open connections.
    pub fn new(max: usize) -> Rc<Connections> {
        Rc::new(Connections {
            max,
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
        let slot = Slot { fd, idle: false };
        let index = match self.free.borrow_mut().pop() {
            Some(index) => {
                self.slots.borrow_mut()[index] = Some(slot);
                index
            }
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(Some(slot));
                slots.len() - 1
            }
        };
        self.open.set(self.open.get() + 1);
        Some(Registration {
            connections: self.clone(),
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

    /// Starts the drain: stop accepting, close idle connections now, busy ones after their response.
    pub fn start_drain(&self) {
        if self.draining.replace(true) {
            return;
        }
        for slot in self.slots.borrow().iter().flatten() {
            if slot.idle {
                wake_idle(slot.fd);
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

/// Shuts the read side of an idle connection, so its pending read returns end-of-stream.
fn wake_idle(fd: RawFd) {
    // SAFETY: the descriptor belongs to a registered, open connection of this shard.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD);
    }
}

/// A connection's membership in [`Connections`]; dropping it unregisters the connection.
pub struct Registration {
    connections: Rc<Connections>,
    index: usize,
}

impl Registration {
    /// Whether the shard is draining.
    pub fn draining(&self) -> bool {
        self.connections.draining.get()
    }

    /// Marks the connection idle (waiting for a request) or busy. An idle connection of a
    /// draining shard is woken to close.
    pub fn set_idle(&self, idle: bool) {
        let mut slots = self.connections.slots.borrow_mut();
        if let Some(slot) = slots[self.index].as_mut() {
            slot.idle = idle;
            if idle && self.connections.draining.get() {
                wake_idle(slot.fd);
            }
        }
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
