//! The Retry-After parser: any header values give `None` or a delay of at most
//! `MAX_RETRY_AFTER`, never a panic, and the delay does not grow as time passes.
//!
//! Input: lines; a line starting `ms:` is a `retry-after-ms` value, any other a `Retry-After`
//! value (lines that are not valid header values are dropped).
#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_dashscope::{MAX_RETRY_AFTER, RETRY_AFTER_MS, parse_retry_after_at};

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n').take(32) {
        let (name, value) = match line.strip_prefix(b"ms:") {
            Some(value) => (RETRY_AFTER_MS.clone(), value),
            None => (http::header::RETRY_AFTER, line),
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let at = parse_retry_after_at(&headers, now);
    if let Some(delay) = at {
        assert!(delay <= MAX_RETRY_AFTER);
    }
    // An hour later the server asks for no longer a wait than it did.
    let later = parse_retry_after_at(&headers, now + Duration::from_secs(3600));
    assert_eq!(at.is_some(), later.is_some());
    if let (Some(at), Some(later)) = (at, later) {
        assert!(later <= at, "{later:?} > {at:?}");
    }
});
