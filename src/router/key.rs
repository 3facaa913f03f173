//! API keys that never show themselves.

use std::fmt;

use http::HeaderValue;

/// An API key: sent only to its own endpoint, never printed.
///
/// `Debug` and `Display` show only what kind of key it is (`sk-sp-…` for a Coding Plan key,
/// `sk-…` for a pay-as-you-go key, `…` for anything else), and the header values made from it
/// are marked sensitive ([`HeaderValue::set_sensitive`]), so HTTP clients and `tracing` leave
/// them out too.
///
/// ```
/// use tower_dashscope::router::ApiKey;
///
/// let key = ApiKey::new("sk-sp-0123456789abcdef");
/// assert_eq!(format!("{key:?}"), "ApiKey(sk-sp-…)");
/// assert!(key.is_coding_plan());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    key: Box<str>,
}

impl ApiKey {
    /// Wraps `key` (surrounding whitespace, as copied from a console or a file, is dropped).
    pub fn new(key: impl Into<String>) -> Self {
        let key: String = key.into();
        let trimmed = key.trim();
        let key = if trimmed.len() == key.len() {
            key
        } else {
            trimmed.to_owned()
        };
        ApiKey {
            key: key.into_boxed_str(),
        }
    }

    /// Whether it is a Coding Plan key (`sk-sp-…`), which works only on the Coding Plan hosts.
    #[must_use]
    pub fn is_coding_plan(&self) -> bool {
        self.key.starts_with("sk-sp-")
    }

    /// The key's kind, as `Debug` shows it: `sk-sp-…`, `sk-…` or `…`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        if self.is_coding_plan() {
            "sk-sp-…"
        } else if self.key.starts_with("sk-") {
            "sk-…"
        } else {
            "…"
        }
    }

    /// The key itself, to hand to something that needs it. Do not log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.key
    }

    /// `Bearer <key>` and `<key>` as sensitive header values, or `None` when the key is empty
    /// or holds characters a header cannot carry.
    pub(crate) fn header_values(&self) -> Option<(HeaderValue, HeaderValue)> {
        if self.key.is_empty() {
            return None;
        }
        let mut bearer = HeaderValue::try_from(format!("Bearer {}", self.key)).ok()?;
        let mut plain = HeaderValue::from_str(&self.key).ok()?;
        bearer.set_sensitive(true);
        plain.set_sensitive(true);
        Some((bearer, plain))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.kind())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        ApiKey::new(key)
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        ApiKey::new(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted() {
        for (key, kind) in [
            ("sk-sp-secret-1", "sk-sp-…"),
            ("sk-secret-2", "sk-…"),
            ("gw-secret-3", "…"),
        ] {
            let k = ApiKey::new(format!("  {key}\n"));
            assert_eq!(k.expose(), key);
            assert_eq!(format!("{k:?}"), format!("ApiKey({kind})"));
            assert_eq!(k.to_string(), kind);
            let (bearer, plain) = k.header_values().unwrap();
            assert!(bearer.is_sensitive() && plain.is_sensitive());
            assert!(!format!("{bearer:?}{plain:?}").contains("secret"));
        }
        assert!(ApiKey::new("").header_values().is_none());
        assert!(ApiKey::new("sk-a\u{7}b").header_values().is_none());
    }
}
