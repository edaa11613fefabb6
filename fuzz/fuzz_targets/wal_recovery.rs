//! Recovery of a shard directory built from a script; see `shardpay::fuzzing::wal_recovery`.
#![no_main]

#[path = "../common/bounded_alloc.rs"]
mod bounded_alloc;

#[global_allocator]
static ALLOCATOR: bounded_alloc::Bounded = bounded_alloc::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shardpay::fuzzing::wal_recovery(data);
});
