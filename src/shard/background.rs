//! Rare work of a shard that blocks — waiting for a snapshot's child process, or writing a
//! snapshot file — on a thread of its own, so that the shard's executor goes on meanwhile.
//!
//! Not on the shard's blocking threads: those may run under `SCHED_IDLE` (see
//! [`super::offload`]), where a busy machine could put a snapshot off for good and let the log
//! grow without bound. The thread runs at nice [`BLOCKING_NICE`] on any CPU the process may use
//! (not pinned to the shard's core): it gives way to the shards but always makes progress.

use std::io;

use super::offload::BLOCKING_NICE;

/// Runs `work` on a new thread named `name`; the result, or an error if the thread could not
/// start or `work` panicked.
pub async fn run<R, F>(name: String, work: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (sender, receiver) = futures_channel::oneshot::channel();
    let allowed = process_cpus();
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        background_priority(allowed.as_ref());
        // The shard may be gone (the process is stopping): nobody to tell then.
        let _ = sender.send(work());
    })?;
    receiver
        .await
        .map_err(|_| io::Error::other(format!("the {name} thread failed (panicked)")))
}

/// The CPUs the process may use: those of its main thread, which no shard pins.
pub(super) fn process_cpus() -> Option<libc::cpu_set_t> {
    // SAFETY: sched_getaffinity(2) writes at most size_of::<cpu_set_t>() bytes into `set`, a
    // zeroed plain-data struct; getpid(2) cannot fail.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let main = libc::getpid();
        (libc::sched_getaffinity(main, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

/// Unpins the calling thread (it inherits its shard's single CPU) and lowers it to nice
/// [`BLOCKING_NICE`]. Failures leave it as it was, which is slower but correct.
fn background_priority(allowed: Option<&libc::cpu_set_t>) {
    // SAFETY: sched_setaffinity(2) with pid 0 and setpriority(2) with the thread's own id act
    // on the calling thread only and read nothing but `allowed`, a valid cpu_set_t.
    unsafe {
        if let Some(set) = allowed {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
        }
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, BLOCKING_NICE);
    }
}

#[cfg(test)]
mod tests {
    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    /// (nice, number of CPUs it may run on, thread name) of the calling thread.
    fn whoami() -> (i32, usize, Option<String>) {
        // SAFETY: getpriority(2) and sched_getaffinity(2) of the calling thread; `set` is a
        // zeroed plain-data struct of the size passed.
        unsafe {
            let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let nice = libc::getpriority(libc::PRIO_PROCESS, thread);
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            let cpus = libc::CPU_COUNT(&set) as usize;
            (nice, cpus, std::thread::current().name().map(str::to_string))
        }
    }

    #[test]
    fn work_runs_unpinned_at_a_lower_priority_and_panics_become_errors() {
        let process_cpus = whoami().1;
        let outcome = LocalExecutorBuilder::new(Placement::Fixed(0))
            .io_memory(1 << 16)
            .spawn(|| async {
                let shard = whoami();
                let work = run("test-background".to_string(), whoami).await.unwrap();
                let failed = run("test-panic".to_string(), || -> u8 { panic!("on purpose") }).await;
                (shard, work, failed.map_err(|error| error.to_string()))
            })
            .unwrap()
            .join();
        let (shard, work, failed) = outcome.unwrap();
        assert_eq!(shard.1, 1, "the executor is pinned to one CPU");
        assert_eq!(work.0, BLOCKING_NICE);
        assert_eq!(
            work.1, process_cpus,
            "the thread may run on every CPU of the process"
        );
        assert_eq!(work.2.as_deref(), Some("test-background"));
        assert_eq!(failed, Err("the test-panic thread failed (panicked)".to_string()));
    }
}
