//! What an attempt's outcome means to a layer that reacts to failures, with or without a
//! classifier below it.
//!
//! Retry, fallback and region failover all look at the outcome of an attempt: an `Err` that a
//! [`ClassifyDashScopeError`](crate::ClassifyDashScopeError) below already classified, or an
//! `Ok` response that, without one, may still be a 429 or a 503. [`failure_of`] answers for
//! both, from the one status table ([`ErrorClass::from_status`]), so that every layer agrees.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Response, StatusCode};
//! use std::time::Duration;
//! use tower_dashscope::{DashScopeError, ErrorClass, RateLimitKind};
//! use tower_dashscope::outcome::failure_of;
//!
//! // No classifier below: a bare 429 with a Retry-After.
//! let outcome: Result<_, DashScopeError> = Ok(Response::builder()
//!     .status(StatusCode::TOO_MANY_REQUESTS)
//!     .header("retry-after", "2")
//!     .body(Bytes::new())
//!     .unwrap());
//! let failure = failure_of(&outcome).unwrap();
//! assert_eq!(failure.class(), ErrorClass::RateLimited(RateLimitKind::Unspecified));
//! assert_eq!(failure.retry_after(), Some(Duration::from_secs(2)));
//! assert!(failure.is_retryable());
//!
//! // A success is no failure.
//! let outcome: Result<_, DashScopeError> = Ok(Response::new(Bytes::new()));
//! assert!(failure_of(&outcome).is_none());
//! ```

use std::time::Duration;

use http::{Response, StatusCode};

use crate::error::{DashScopeError, ErrorClass};
use crate::retry_after::parse_retry_after;

/// A failed attempt, as [`failure_of`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    class: ErrorClass,
    retry_after: Option<Duration>,
    status: Option<StatusCode>,
}

impl Failure {
    /// The class of the failure.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The delay the server asked for, if any.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The HTTP status, when there was a response.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// Whether a later attempt may succeed ([`ErrorClass::is_retryable`]).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.class.is_retryable()
    }
}

/// The failure an attempt's outcome reports, or `None` for a success.
///
/// - `Err(err)`: its class and retry-after, as a classifier (or the error conversion) set them.
/// - `Ok(response)` with a non-2xx status (there was no classifier below): the class from the
///   status alone ([`ErrorClass::from_status`]) and the delay from `retry-after-ms` /
///   `Retry-After` ([`parse_retry_after`]).
/// - `Ok(response)` with a 1xx or 2xx status: `None`.
#[must_use]
pub fn failure_of<R>(outcome: &Result<Response<R>, DashScopeError>) -> Option<Failure> {
    match outcome {
        Ok(response) => {
            let status = response.status();
            if status.is_success() || status.is_informational() {
                return None;
            }
            Some(Failure {
                class: ErrorClass::from_status(status),
                retry_after: parse_retry_after(response.headers()),
                status: Some(status),
            })
        }
        Err(err) => Some(Failure {
            class: err.class(),
            retry_after: err.retry_after(),
            status: err.status(),
        }),
    }
}
