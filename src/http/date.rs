//! The `Date` header value, formatted once per second per shard (RFC 9110 §6.6.1 allows a
//! one-second resolution) instead of once per response. The shard's ticker calls [`refresh`];
//! responses read [`with_date`]. Thread-local: each shard has its own copy, no sharing.

use std::cell::RefCell;
use std::time::SystemTime;

/// Length of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LENGTH: usize = 29;

thread_local! {
    static DATE: RefCell<[u8; DATE_LENGTH]> = RefCell::new(format_now());
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
    DATE.with(|date| *date.borrow_mut() = format_now());
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
