//! Parsing the delay a server asks for: `retry-after-ms` and `Retry-After`.
//!
//! DashScope itself sends no `Retry-After`, but gateways and proxies in front of it do, sometimes
//! as a float number of seconds (`Retry-After: 1.5`). [`parse_retry_after`] accepts every form
//! seen in the field and never panics:
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use tower_dashscope::parse_retry_after;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", "1.5".parse().unwrap());
//! assert_eq!(parse_retry_after(&headers), Some(Duration::from_millis(1500)));
//!
//! // `retry-after-ms` is more precise and wins when both are present.
//! headers.insert("retry-after-ms", "350".parse().unwrap());
//! assert_eq!(parse_retry_after(&headers), Some(Duration::from_millis(350)));
//!
//! // Garbage is ignored, not an error.
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", "soon".parse().unwrap());
//! assert_eq!(parse_retry_after(&headers), None);
//! ```

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The longest delay the parser reports. Larger values — and dates further in the future —
/// are clamped to this, so a caller still learns "a long time" and can decide not to wait.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

pub use crate::headers::RETRY_AFTER_MS;

/// Reads the delay the server asked for from `retry-after-ms`, else `Retry-After`.
///
/// - `retry-after-ms`: milliseconds, integer or fractional (`350`, `1.5`).
/// - `Retry-After`: seconds, integer or fractional (`2`, `1.5`), or an HTTP-date (all three
///   formats of RFC 9110), measured against the system clock; a date in the past means zero.
///
/// A header sent more than once — as several header lines, or folded into one comma-separated
/// line by a proxy (`2, 2`) — gives its first usable value (`garbage` then `2` gives 2 s). An
/// HTTP-date's own comma does not split it.
///
/// Returns `None` when neither header is present or usable: negative, NaN, infinite, empty,
/// non-ASCII or otherwise garbage values. Values larger than [`MAX_RETRY_AFTER`] are clamped to
/// it. An unusable `retry-after-ms` falls back to `Retry-After`. Never panics.
#[must_use]
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after_at(headers, SystemTime::now())
}

/// Like [`parse_retry_after`], with HTTP-dates measured against `now` instead of the system
/// clock (for tests, and for replaying recorded responses).
#[must_use]
pub fn parse_retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    first_usable(headers, &RETRY_AFTER_MS, |text| parse_decimal(text, 1e-3)).or_else(|| {
        first_usable(headers, &http::header::RETRY_AFTER, |text| {
            parse_decimal(text, 1.0).or_else(|| parse_http_date(text, now))
        })
    })
}

/// At most this many lines of one header are looked at.
const MAX_HEADER_LINES: usize = 8;
/// At most this many comma-separated items of one line are looked at.
const MAX_LIST_ITEMS: usize = 8;

/// The first value of header `name` that `parse` accepts: each line whole, then (for a line
/// that is not usable whole) its comma-separated items in order, where an item that is not
/// usable alone is tried joined with the next one (an HTTP-date has a comma of its own).
/// The work is bounded whatever the headers hold.
fn first_usable(
    headers: &HeaderMap,
    name: &http::HeaderName,
    parse: impl Fn(&str) -> Option<Duration>,
) -> Option<Duration> {
    headers
        .get_all(name)
        .iter()
        .take(MAX_HEADER_LINES)
        .filter_map(|value| value.to_str().ok())
        .find_map(|line| parse(line).or_else(|| first_usable_item(line, &parse)))
}

fn first_usable_item(line: &str, parse: &impl Fn(&str) -> Option<Duration>) -> Option<Duration> {
    if !line.contains(',') || line.len() > 2 * MAX_DATE_LEN + 2 {
        return None;
    }
    let mut items = line.split(',').take(MAX_LIST_ITEMS).peekable();
    let mut start = 0;
    while let Some(item) = items.next() {
        if let Some(found) = parse(item) {
            return Some(found);
        }
        if let Some(next) = items.peek() {
            // `Sun, 06 Nov 1994 08:49:37 GMT`: a date split at its own comma.
            let joined = line.get(start..start + item.len() + 1 + next.len());
            if let Some(found) = joined.and_then(parse) {
                return Some(found);
            }
        }
        start += item.len() + 1;
    }
    None
}

/// Parses `digits[.digits]` (surrounding spaces allowed) times `unit` seconds.
fn parse_decimal(text: &str, unit: f64) -> Option<Duration> {
    let text = text.trim();
    // Bound the work on hostile input; 40 characters is far beyond any sane delay.
    if text.is_empty() || text.len() > 40 {
        return None;
    }
    let mut dots = 0;
    for b in text.bytes() {
        match b {
            b'0'..=b'9' => {}
            b'.' => dots += 1,
            _ => return None,
        }
    }
    if dots > 1 || text.starts_with('.') || text.ends_with('.') {
        return None;
    }
    let seconds = text.parse::<f64>().ok()? * unit;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Some(clamp_secs(seconds))
}

fn clamp_secs(seconds: f64) -> Duration {
    if seconds >= MAX_RETRY_AFTER.as_secs_f64() {
        MAX_RETRY_AFTER
    } else {
        Duration::from_secs_f64(seconds)
    }
}

/// The longest HTTP-date text looked at.
const MAX_DATE_LEN: usize = 64;

fn parse_http_date(text: &str, now: SystemTime) -> Option<Duration> {
    let text = text.trim();
    if text.len() > MAX_DATE_LEN {
        return None;
    }
    let at = httpdate::parse_http_date(text).ok()?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn ra(value: &str) -> Option<Duration> {
        parse_retry_after(&headers(&[("retry-after", value.as_bytes())]))
    }

    #[test]
    fn seconds_integer_and_float() {
        assert_eq!(ra("0"), Some(Duration::ZERO));
        assert_eq!(ra("2"), Some(Duration::from_secs(2)));
        assert_eq!(ra(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(ra("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(ra("0.35"), Some(Duration::from_millis(350)));
    }

    #[test]
    fn milliseconds_win() {
        let map = headers(&[("retry-after", b"3"), ("retry-after-ms", b"250.5")]);
        assert_eq!(
            parse_retry_after(&map),
            Some(Duration::from_micros(250_500))
        );
        // An unusable retry-after-ms falls back to Retry-After.
        let map = headers(&[("retry-after", b"3"), ("retry-after-ms", b"-1")]);
        assert_eq!(parse_retry_after(&map), Some(Duration::from_secs(3)));
    }

    #[test]
    fn http_dates_in_all_three_formats() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:30 GMT").unwrap();
        for date in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let map = headers(&[("retry-after", date.as_bytes())]);
            assert_eq!(
                parse_retry_after_at(&map, now),
                Some(Duration::from_secs(7)),
                "{date}"
            );
        }
        let past = headers(&[("retry-after", b"Sun, 06 Nov 1994 08:00:00 GMT")]);
        assert_eq!(parse_retry_after_at(&past, now), Some(Duration::ZERO));
        let far = headers(&[("retry-after", b"Sat, 06 Nov 2094 08:00:00 GMT")]);
        assert_eq!(parse_retry_after_at(&far, now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn garbage_is_none() {
        for value in [
            "", " ", "-1", "-0.5", "+1", "NaN", "nan", "inf", "Infinity", "1e3", "1.", ".5",
            "1.2.3", "0x10", "soon", "1 2",
        ] {
            assert_eq!(ra(value), None, "{value:?}");
        }
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", b"\xff\xfe")])),
            None
        );
        assert_eq!(parse_retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn a_header_sent_twice_gives_the_first_usable_value() {
        // Two header lines: garbage, then a number.
        let map = headers(&[("retry-after", b"garbage"), ("retry-after", b"2")]);
        assert_eq!(parse_retry_after(&map), Some(Duration::from_secs(2)));
        // Two usable lines: the first.
        let map = headers(&[("retry-after", b"2"), ("retry-after", b"5")]);
        assert_eq!(parse_retry_after(&map), Some(Duration::from_secs(2)));
        // Folded into one line by a proxy.
        assert_eq!(ra("2, 2"), Some(Duration::from_secs(2)));
        assert_eq!(ra("2,2"), Some(Duration::from_secs(2)));
        assert_eq!(ra("garbage, 1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(ra(" , 3"), Some(Duration::from_secs(3)));
        // The same for retry-after-ms.
        let map = headers(&[("retry-after-ms", b"soon"), ("retry-after-ms", b"250")]);
        assert_eq!(parse_retry_after(&map), Some(Duration::from_millis(250)));
        let map = headers(&[("retry-after-ms", b"250, 250")]);
        assert_eq!(parse_retry_after(&map), Some(Duration::from_millis(250)));
        // Nothing usable anywhere.
        let map = headers(&[("retry-after", b"soon"), ("retry-after", b"later, never")]);
        assert_eq!(parse_retry_after(&map), None);
        assert_eq!(ra(","), None);
    }

    #[test]
    fn http_dates_sent_twice() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:30 GMT").unwrap();
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        // A date's own comma does not split it; a list of two dates gives the first.
        let twice = format!("{date}, {date}");
        let map = headers(&[("retry-after", twice.as_bytes())]);
        assert_eq!(
            parse_retry_after_at(&map, now),
            Some(Duration::from_secs(7))
        );
        let map = headers(&[
            ("retry-after", b"garbage"),
            ("retry-after", date.as_bytes()),
        ]);
        assert_eq!(
            parse_retry_after_at(&map, now),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn huge_values_are_clamped() {
        assert_eq!(ra("86401"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            ra("99999999999999999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(ra(&"9".repeat(41)), None, "over the length bound");
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(2026), ..ProptestConfig::default() })]
        #[test]
        fn never_panics_on_arbitrary_values(
            ra in proptest::collection::vec(any::<u8>(), 0..80),
            ms in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut map = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&ra) {
                map.insert(http::header::RETRY_AFTER, v);
            }
            if let Ok(v) = HeaderValue::from_bytes(&ms) {
                map.insert(RETRY_AFTER_MS, v);
            }
            if let Some(d) = parse_retry_after(&map) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
        }

        #[test]
        fn any_non_negative_float_round_trips(secs in 0.0f64..86_000.0) {
            let text = format!("{secs:.3}");
            let got = ra(&text).unwrap();
            let want: f64 = text.parse().unwrap();
            prop_assert!((got.as_secs_f64() - want).abs() < 1e-6);
        }
    }
}
