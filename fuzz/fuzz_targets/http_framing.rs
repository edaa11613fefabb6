//! Body framing and the connection driver, whole vs. split into reads; see `shardpay::fuzzing::http_framing`.
#![no_main]

#[path = "../common/bounded_alloc.rs"]
mod bounded_alloc;

#[global_allocator]
static ALLOCATOR: bounded_alloc::Bounded = bounded_alloc::Bounded;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shardpay::fuzzing::http_framing(data);
});
