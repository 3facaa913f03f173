//! API keys, bound to a host or accepted everywhere, and how a request presents one.

use http::HeaderMap;

use crate::api::Api;
use crate::headers::X_API_KEY;

/// A key the simulator accepts, everywhere or on one host only.
pub(super) struct ApiKey {
    pub(super) key: String,
    /// Lowercase, without a port.
    pub(super) host: Option<String>,
}

impl ApiKey {
    pub(super) fn anywhere(key: String) -> Self {
        ApiKey { key, host: None }
    }

    /// A key for `host` — a host, or `host:port` (the port is dropped).
    pub(super) fn for_host(key: String, host: &str) -> Self {
        let host = match host.parse::<http::uri::Authority>() {
            Ok(authority) => authority.host().to_ascii_lowercase(),
            Err(_) => host.to_ascii_lowercase(),
        };
        ApiKey {
            key,
            host: Some(host),
        }
    }

    pub(super) fn accepts(&self, key: &str, host: Option<&str>) -> bool {
        self.key == key
            && self
                .host
                .as_deref()
                .is_none_or(|bound| host.is_some_and(|h| h.eq_ignore_ascii_case(bound)))
    }
}

/// The keys a simulator accepts; any key (or none) when empty.
#[derive(Default)]
pub(super) struct Keys(pub(super) Vec<ApiKey>);

impl Keys {
    /// Whether the request's credential is accepted on `host`: `Authorization: Bearer <key>`
    /// (the scheme in any case), or on the Anthropic-compatible path also `x-api-key: <key>`.
    pub(super) fn accept(&self, api: Api, headers: &HeaderMap, host: Option<&str>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        presented_key(api, headers)
            .is_some_and(|key| self.0.iter().any(|known| known.accepts(key, host)))
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The key a request presents.
pub(super) fn presented_key(api: Api, headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    // Anthropic's SDKs send the key as `x-api-key`.
    bearer.or_else(|| {
        (api == Api::Anthropic)
            .then(|| headers.get(X_API_KEY))
            .flatten()
            .and_then(|v| v.to_str().ok())
    })
}

/// The token of `Bearer <token>`; the scheme is matched ignoring case (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
        .filter(|t| !t.is_empty())
}

/// The host a request is for: its URI's, or else its `Host` header's, without the port.
pub(super) fn request_host(parts: &http::request::Parts) -> Option<String> {
    if let Some(host) = parts.uri.host() {
        return Some(host.to_owned());
    }
    let header = parts.headers.get(http::header::HOST)?.to_str().ok()?;
    let authority = header.parse::<http::uri::Authority>().ok()?;
    Some(authority.host().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_ignores_case() {
        assert_eq!(bearer_token("Bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("BEARER  sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("Basic sk-1"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
