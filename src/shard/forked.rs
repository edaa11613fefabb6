//! Snapshots written by a forked child process, so that a shard does not stop while its state is
//! encoded (about 4 s per GB of state here, which the shard spent serving nothing).
//!
//! `fork` gives the child a copy-on-write image of the whole process as of one instant: the
//! shard's state exactly as of the snapshot's sequence number, at the cost of copying the page
//! tables (milliseconds) instead of the state. The parent goes on at once; pages it writes while
//! the child runs are copied by the kernel, one at a time. This is how Redis writes its RDB files.
//!
//! The child is a copy of one thread of a multithreaded process, so it keeps to what is safe
//! there: glibc's `malloc` (which resets its locks in the child), plain system calls for the
//! file, and no logging, locks, glommio or tokio. It closes every inherited descriptor first
//! (so a connection the parent closes is closed at once, not when the child exits), ignores the
//! stop signals sent to the whole process group (the parent decides when to stop), dies with the
//! shard thread that forked it (`PR_SET_PDEATHSIG`), runs at nice [`BLOCKING_NICE`] on any CPU
//! of the process, and reports a failure through a pipe before `_exit`. A thread of the parent
//! waits for it.
//!
//! If the process cannot fork (out of memory or processes), the state is encoded on the shard
//! as before — a pause, logged — and written on a thread.

use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;

use super::background;
use super::offload::BLOCKING_NICE;
use crate::storage::disk::write_temporary_std;

/// What [`write_temporary`] writes: called with the open temporary file.
pub trait Contents: FnOnce(&mut dyn Write) -> io::Result<()> {}
impl<F: FnOnce(&mut dyn Write) -> io::Result<()>> Contents for F {}

/// Writes file `name` + `TEMPORARY_SUFFIX` in `dir` durably with what `contents` writes, as of
/// now: with `fork`, `contents` runs in a child process forked here, on the state as it is at
/// this call; without, or if the fork fails, it runs here and now. The future resolves when the
/// file is durable (or the child failed). `label` names the thread that waits or writes.
pub fn write_temporary(
    fork: bool,
    label: String,
    dir: PathBuf,
    name: String,
    contents: impl Contents,
) -> Pin<Box<dyn Future<Output = io::Result<()>>>> {
    let contents = if fork {
        match fork_writer(&dir, &name, contents) {
            Forked::Child(pid, report) => {
                return Box::pin(async move { background::run(label, move || wait(pid, report)).await? })
            }
            Forked::Failed(error, contents) => {
                tracing::warn!(
                    error = %error,
                    file = %name,
                    "cannot fork to write a snapshot: encoding it on the shard, which stops it meanwhile"
                );
                contents
            }
        }
    } else {
        contents
    };
    // Encoded here, now (the shard serves nothing meanwhile); written on a thread.
    let mut bytes = Vec::new();
    let encoded = contents(&mut bytes);
    Box::pin(async move {
        encoded?;
        background::run(label, move || {
            write_temporary_std(&dir, &name, |out| out.write_all(&bytes))
        })
        .await?
    })
}

enum Forked<C> {
    /// The child's pid and the read end of its report pipe.
    Child(libc::pid_t, OwnedFd),
    /// `fork` (or the pipe) failed; `contents` was not run.
    Failed(io::Error, C),
}

fn fork_writer<C: Contents>(dir: &std::path::Path, name: &str, contents: C) -> Forked<C> {
    // Everything the child needs is made before the fork: it should allocate as little as it can.
    let cpus = background::process_cpus();
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Forked::Failed(io::Error::last_os_error(), contents);
    }
    // SAFETY: both descriptors were just made and are owned here alone.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid(2) cannot fail.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork(2). The child runs `child` only and leaves with `_exit`; see the module's
    // comment for what it may do.
    match unsafe { libc::fork() } {
        -1 => Forked::Failed(io::Error::last_os_error(), contents),
        0 => {
            use std::os::fd::IntoRawFd;
            drop(read_end);
            child(
                parent,
                write_end.into_raw_fd(),
                cpus.as_ref(),
                dir,
                name,
                contents,
            )
        }
        pid => {
            drop(write_end);
            Forked::Child(pid, read_end)
        }
    }
}

/// The child: writes the file, then `_exit(0)`; or reports why not and `_exit(1)`.
fn child(
    parent: libc::pid_t,
    report: libc::c_int,
    cpus: Option<&libc::cpu_set_t>,
    dir: &std::path::Path,
    name: &str,
    contents: impl Contents,
) -> ! {
    const REPORT: libc::c_int = 3;
    // SAFETY: system calls on this process alone, in the forked child, which has one thread;
    // `cpus` is a valid cpu_set_t.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The parent may have died before the line above took effect.
        if libc::getppid() != parent {
            libc::_exit(2);
        }
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Keep the report pipe as descriptor 3 and close everything else but 0–2.
        if report != REPORT {
            libc::dup2(report, REPORT);
        }
        if libc::close_range(REPORT as libc::c_uint + 1, libc::c_uint::MAX, 0) != 0 {
            // Before Linux 5.9: one by one, up to the descriptor limit.
            let mut limit: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            for fd in REPORT + 1..limit.rlim_cur.min(1 << 20) as libc::c_int {
                libc::close(fd);
            }
        }
        if let Some(cpus) = cpus {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), cpus);
        }
        libc::setpriority(libc::PRIO_PROCESS, 0, BLOCKING_NICE);
    }
    let message = match write_temporary_std(dir, name, contents) {
        // SAFETY: leaves the child without running the parent's exit handlers or destructors.
        Ok(()) => unsafe { libc::_exit(0) },
        Err(error) => error.to_string(),
    };
    // SAFETY: writes the message to the report pipe, then leaves as above.
    unsafe {
        libc::write(REPORT, message.as_ptr().cast(), message.len());
        libc::_exit(1)
    }
}

/// Waits for the child `pid`: its report (empty unless it failed), then its exit.
fn wait(pid: libc::pid_t, report: OwnedFd) -> io::Result<()> {
    let mut message = String::new();
    // The write end closes when the child exits, whatever the way.
    let _ = std::fs::File::from(report).read_to_string(&mut message);
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) for our own child, writing its status into `status`.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let how = if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    };
    let message = message.trim();
    Err(io::Error::other(if message.is_empty() {
        format!("the snapshot process {pid} {how}")
    } else {
        format!("the snapshot process {pid} {how}: {message}")
    }))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use futures_lite::future::block_on;

    use super::*;

    fn scratch(purpose: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardpay-forked-{purpose}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_child_writes_the_state_as_it_was_at_the_fork() {
        let dir = scratch("state");
        let state = Cell::new(1u8);
        let written = write_temporary(true, "test-state".into(), dir.clone(), "state".into(), |out| {
            // Long after the parent changed it.
            std::thread::sleep(Duration::from_millis(200));
            out.write_all(&[state.get(); 3])
        });
        state.set(2);
        block_on(written).unwrap();
        assert_eq!(std::fs::read(dir.join("state.tmp")).unwrap(), [1, 1, 1]);
        assert!(!dir.join("state").exists(), "publishing is the writer's step");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_child_runs_unpinned_at_a_lower_priority_without_the_parents_descriptors() {
        let dir = scratch("child");
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Well above 3, which the child gives its report pipe.
        // SAFETY: fcntl(2) F_DUPFD_CLOEXEC on an open descriptor; the copy is closed below.
        let fd = unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        assert!(fd >= 100);
        let all = background::process_cpus().expect("the process's CPUs");
        // SAFETY: CPU_COUNT reads a valid cpu_set_t.
        let all = unsafe { libc::CPU_COUNT(&all) };
        // SAFETY: sched_{get,set}affinity(2) of the calling thread with valid cpu_set_t values.
        let (saved, pinned) = unsafe {
            let mut saved: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut saved);
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut one);
            let pinned = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) == 0;
            (saved, pinned)
        };
        // Forked from a thread pinned to CPU 0, as a shard is.
        let written = write_temporary(
            true,
            "test-child".into(),
            dir.clone(),
            "child".into(),
            move |out| {
                // SAFETY: getpriority(2), sched_getaffinity(2) and fcntl(2) on this process only.
                let (nice, cpus, open) = unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
                    let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
                    (nice, libc::CPU_COUNT(&set), libc::fcntl(fd, libc::F_GETFD) != -1)
                };
                write!(out, "{nice} {cpus} {open}")
            },
        );
        // SAFETY: as above.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &saved) };
        assert!(pinned);
        block_on(written).unwrap();
        let seen = std::fs::read_to_string(dir.join("child.tmp")).unwrap();
        assert_eq!(seen, format!("{BLOCKING_NICE} {all} false"));
        // SAFETY: closes the copy made above, which nothing else uses.
        unsafe { libc::close(fd) };
        drop(socket);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_child_that_fails_or_dies_is_an_error_saying_how() {
        let dir = scratch("failures");
        let failed = write_temporary(true, "test-fail".into(), dir.clone(), "failed".into(), |_| {
            Err(io::Error::other("the state does not encode"))
        });
        let error = block_on(failed).unwrap_err().to_string();
        assert!(
            error.contains("exited with status 1: the state does not encode"),
            "{error}"
        );
        let killed = write_temporary(true, "test-kill".into(), dir.clone(), "killed".into(), |_| {
            // SAFETY: raise(3) in the child process.
            unsafe { libc::raise(libc::SIGKILL) };
            Ok(())
        });
        let error = block_on(killed).unwrap_err().to_string();
        assert!(error.contains("was killed by signal 9"), "{error}");
        let nowhere = dir.join("missing");
        let missing = write_temporary(true, "test-missing".into(), nowhere, "file".into(), |_| Ok(()));
        let error = block_on(missing).unwrap_err().to_string();
        assert!(error.contains("No such file or directory"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
