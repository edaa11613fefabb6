//! Log frames and their bincode records; see `shardpay::fuzzing::wal_record`.
#![no_main]

#[path = "../common/bounded_alloc.rs"]
mod bounded_alloc;

#[global_allocator]
static ALLOCATOR: bounded_alloc::Bounded = bounded_alloc::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shardpay::fuzzing::wal_record(data);
});
