//! The `Date` header value, formatted once per second per shard (RFC 9110 §6.6.1 allows a
//! one-second resolution) instead of once per response. The shard's ticker calls [`refresh`];
//! responses read [`with_date`]. Thread-local: each shard has its own copy, no sharing.

use std::cell::RefCell;
use std::time::SystemTime;

/// Length of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LENGTH: usize = 29;

/// `Server` and `Date` header lines as every response starts them, with the cached date.
const BLOCK_PREFIX: &[u8] = b"Server: shardpay\r\nDate: ";
const BLOCK_LENGTH: usize = BLOCK_PREFIX.len() + DATE_LENGTH + 2;

thread_local! {
    static DATE: RefCell<[u8; DATE_LENGTH]> = RefCell::new(format_now());
    static BLOCK: RefCell<[u8; BLOCK_LENGTH]> = RefCell::new(block(&format_now()));
}

fn block(date: &[u8; DATE_LENGTH]) -> [u8; BLOCK_LENGTH] {
    let mut block = [0u8; BLOCK_LENGTH];
    block[..BLOCK_PREFIX.len()].copy_from_slice(BLOCK_PREFIX);
    block[BLOCK_PREFIX.len()..BLOCK_PREFIX.len() + DATE_LENGTH].copy_from_slice(date);
    block[BLOCK_LENGTH - 2..].copy_from_slice(b"\r\n");
    block
}

fn format_now() -> [u8; DATE_LENGTH] {
    let text = httpdate::fmt_http_date(SystemTime::now());
    let mut date = [b' '; DATE_LENGTH];
    let bytes = text.as_bytes();
    let length = bytes.len().min(DATE_LENGTH);
    date[..length].copy_from_slice(&bytes[..length]);
    date
}

/// Re-formats this thread's cached date from the clock.
pub fn refresh() {
    let now = format_now();
    DATE.with(|date| *date.borrow_mut() = now);
    BLOCK.with(|cached| *cached.borrow_mut() = block(&now));
}

/// Appends `Server: shardpay\r\nDate: <cached date>\r\n` to `out`.
pub fn append_server_and_date(out: &mut Vec<u8>) {
    BLOCK.with(|block| out.extend_from_slice(&*block.borrow()));
}

/// Runs `f` with this thread's cached date.
pub fn with_date<R>(f: impl FnOnce(&[u8; DATE_LENGTH]) -> R) -> R {
    DATE.with(|date| f(&date.borrow()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_an_imf_fixdate() {
        refresh();
        with_date(|date| {
            let text = std::str::from_utf8(date).unwrap();
            assert!(text.ends_with(" GMT"), "{text}");
            assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
        });
    }
}
