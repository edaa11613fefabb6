//! bridge-bench: what the tokio bridge costs a shard. A real glommio executor pinned to a CPU (as
//! a shard is) sends work to the `scylla` driver's thread through
//! `storage::scylla::bridge::Handle::call` and awaits the answers, `--concurrency` calls in
//! flight, against a real Cassandra node; the peer, in the same run, issues the same statements
//! directly on a tokio runtime, without the bridge.
//!
//! Modes, each `--calls` calls:
//! - `bridge-empty`: work that returns at once: the bridge's own round trip (two channel hops,
//!   two wake-ups across threads), no database;
//! - `bridge-select`: a prepared single-partition read of `system.local` through the bridge;
//! - `direct-select`: the same read on a current-thread tokio runtime (the peer).
//!
//! For each: calls/s, mean latency, and CPU microseconds per call of the calling thread (the
//! shard's cost), the driver thread, and the whole process, from the kernel's per-thread
//! counters (/proc/self/task/TID/stat).
//!
//! Usage: cargo run --release --example bridge-bench -- --node 127.0.0.1:9042 --cpu 1 \
//!            --calls 100000 --concurrency 1,64

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use scylla::statement::prepared::PreparedStatement;
use shardpay::config::ScyllaConfig;
use shardpay::storage::scylla::bridge::{Bridge, Handle};
use shardpay::storage::scylla::{connect, runtime, DbError};

#[derive(Debug, Parser)]
struct Args {
    /// Cassandra or ScyllaDB node, host:port.
    #[arg(long, default_value = "127.0.0.1:9042")]
    node: String,
    /// CPU the calling executor is pinned to.
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    /// Calls per mode and concurrency.
    #[arg(long, default_value_t = 100_000)]
    calls: u64,
    /// Calls in flight, comma-separated list.
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    concurrency: Vec<u64>,
    /// Print one JSON object per result instead of a table.
    #[arg(long)]
    json: bool,
}

const SELECT: &str = "SELECT release_version FROM system.local WHERE key = 'local'";

/// CPU time (user + system) of one thread of this process, in microseconds.
fn thread_cpu_us(tid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / hz
}

fn process_cpu_us() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// The thread id of the thread named `name`.
fn thread_named(name: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let entry = entry.ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return entry.file_name().to_str()?.parse().ok();
        }
    }
    None
}

fn gettid() -> i32 {
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

#[derive(Debug, serde::Serialize)]
struct Result_ {
    mode: &'static str,
    concurrency: u64,
    calls: u64,
    seconds: f64,
    calls_per_second: f64,
    mean_latency_us: f64,
    caller_cpu_us_per_call: f64,
    driver_cpu_us_per_call: f64,
    process_cpu_us_per_call: f64,
}

/// Runs `calls` calls through the bridge from a pinned glommio executor.
fn through_bridge(
    handle: &Handle,
    select: Option<Arc<PreparedStatement>>,
    cpu: usize,
    calls: u64,
    concurrency: u64,
    driver_tid: i32,
) -> anyhow::Result<Result_> {
    let handle = handle.clone();
    let driver_before = thread_cpu_us(driver_tid);
    let process_before = process_cpu_us();
    let (seconds, caller_us) = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name("caller")
        .io_memory(256 << 10)
        .spawn(move || async move {
            let tid = gettid();
            let cpu_before = thread_cpu_us(tid);
            let started = Instant::now();
            let left = Rc::new(Cell::new(calls));
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let handle = handle.clone();
                let select = select.clone();
                let left = left.clone();
                tasks.push(glommio::spawn_local(async move {
                    while left.get() > 0 {
                        left.set(left.get() - 1);
                        let select = select.clone();
                        handle
                            .call("bench", move |session| async move {
                                if let Some(select) = select {
                                    session
                                        .execute_unpaged(&select, ())
                                        .await
                                        .map_err(|error| DbError::new("select", error))?;
                                }
                                Ok(())
                            })
                            .await
                            .expect("call");
                    }
                }));
            }
            for task in tasks {
                task.await;
            }
            (started.elapsed().as_secs_f64(), thread_cpu_us(tid) - cpu_before)
        })
        .map_err(|error| anyhow::anyhow!("starting the calling executor: {error}"))?
        .join()
        .map_err(|error| anyhow::anyhow!("calling executor: {error:?}"))?;
    let driver_us = thread_cpu_us(driver_tid) - driver_before;
    let process_us = process_cpu_us() - process_before;
    Ok(result(
        "bridge",
        concurrency,
        calls,
        seconds,
        caller_us,
        driver_us,
        process_us,
    ))
}

fn result(
    mode: &'static str,
    concurrency: u64,
    calls: u64,
    seconds: f64,
    caller_us: u64,
    driver_us: u64,
    process_us: u64,
) -> Result_ {
    let per = |us: u64| us as f64 / calls as f64;
    Result_ {
        mode,
        concurrency,
        calls,
        seconds,
        calls_per_second: calls as f64 / seconds,
        mean_latency_us: seconds * 1e6 * concurrency as f64 / calls as f64,
        caller_cpu_us_per_call: per(caller_us),
        driver_cpu_us_per_call: per(driver_us),
        process_cpu_us_per_call: per(process_us),
    }
}

/// Runs `calls` reads directly on a tokio runtime on this thread (the peer).
fn direct(config: &ScyllaConfig, calls: u64, concurrency: u64) -> anyhow::Result<Result_> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let session = Arc::new(connect(config).await?);
        let select = Arc::new(session.prepare(SELECT).await.context("prepare")?);
        let tid = gettid();
        let cpu_before = thread_cpu_us(tid);
        let process_before = process_cpu_us();
        let started = Instant::now();
        let left = Arc::new(std::sync::atomic::AtomicU64::new(calls));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let session = session.clone();
            let select = select.clone();
            let left = left.clone();
            tasks.spawn(async move {
                use std::sync::atomic::Ordering;
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    session.execute_unpaged(&select, ()).await.expect("select");
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.context("task")?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let caller = thread_cpu_us(tid) - cpu_before;
        let process = process_cpu_us() - process_before;
        // The driver's work happens on this same thread here: caller = driver.
        Ok(result(
            "direct-select",
            concurrency,
            calls,
            seconds,
            caller,
            caller,
            process,
        ))
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.calls == 0 || args.concurrency.contains(&0) {
        bail!("--calls and every --concurrency must be at least 1");
    }
    let config = ScyllaConfig {
        nodes: args.node.clone(),
        in_flight_max: 1024,
        queue_depth: 4096,
        ..ScyllaConfig::default()
    };
    let bridge = Bridge::start(&config)?;
    let handle = bridge.handle();
    let driver_tid = thread_named("scylla").context("the driver thread is not named scylla")?;
    let select = {
        let prepared = futures_lite::future::block_on(handle.call("prepare", |session| async move {
            session
                .prepare(SELECT)
                .await
                .map_err(|error| DbError::new("prepare", error))
        }))?;
        Arc::new(prepared)
    };
    let mut results = Vec::new();
    for &concurrency in &args.concurrency {
        // Warm-up: connections, caches, the JIT of the node.
        through_bridge(
            &handle,
            Some(select.clone()),
            args.cpu,
            args.calls / 10 + 1,
            concurrency,
            driver_tid,
        )?;
        let mut empty = through_bridge(&handle, None, args.cpu, args.calls, concurrency, driver_tid)?;
        empty.mode = "bridge-empty";
        results.push(empty);
        let mut selected = through_bridge(
            &handle,
            Some(select.clone()),
            args.cpu,
            args.calls,
            concurrency,
            driver_tid,
        )?;
        selected.mode = "bridge-select";
        results.push(selected);
        results.push(direct(&config, args.calls, concurrency)?);
    }
    if args.json {
        for result in &results {
            println!("{}", serde_json::to_string(result)?);
        }
    } else {
        println!(
            "{:<14} {:>5} {:>9} {:>10} {:>10} {:>12} {:>12} {:>12}",
            "mode", "conc", "calls", "calls/s", "mean µs", "caller µs", "driver µs", "process µs"
        );
        for r in &results {
            println!(
                "{:<14} {:>5} {:>9} {:>10.0} {:>10.1} {:>12.2} {:>12.2} {:>12.2}",
                r.mode,
                r.concurrency,
                r.calls,
                r.calls_per_second,
                r.mean_latency_us,
                r.caller_cpu_us_per_call,
                r.driver_cpu_us_per_call,
                r.process_cpu_us_per_call
            );
        }
    }
    drop(handle);
    drop(bridge);
    Ok(())
}
