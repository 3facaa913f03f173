//! The environment variables of the examples' live mode — `DASHSCOPE_API_KEY`,
//! `DASHSCOPE_REGION`, `DASHSCOPE_BASE_URL`, `DASHSCOPE_MODEL` — read and checked in one place,
//! and the HTTPS connector the live mode calls DashScope with. Shared by the examples with
//! `#[path]`; each uses some of it.
#![allow(dead_code)]

use tower_dashscope::Region;

/// The live mode's connector: HTTPS with rustls on ring and the webpki roots, chosen here rather
/// than through rustls' process-wide default; `https_or_http` so that an `http://` base URL
/// (the loopback simulator) works too.
pub fn https_connector()
-> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>
{
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|err| format!("cannot set up TLS: {err}"))?
        .https_or_http()
        .enable_http1()
        .build())
}

/// The model the live mode asks for when `DASHSCOPE_MODEL` is unset.
pub const DEFAULT_MODEL: &str = "qwen-flash";

/// A variable's value, trimmed; `None` when unset or blank.
pub fn env(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value.trim().to_owned())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// `DASHSCOPE_REGION`: a region id or name (the crate's `Region` parses both); Singapore by
/// default.
pub fn parse_region(value: Option<&str>) -> Result<Region, String> {
    let Some(value) = value else {
        return Ok(Region::Singapore);
    };
    match value.parse::<Region>() {
        Ok(Region::Custom(_)) | Err(_) => Err(format!(
            "DASHSCOPE_REGION `{value}` is not a DashScope region. Accepted (any case): singapore / \
             ap-southeast-1, beijing / cn-beijing, virginia / us-east-1, hongkong / cn-hongkong \
             (default singapore). For another host, set DASHSCOPE_BASE_URL."
        )),
        Ok(region) => Ok(region),
    }
}

/// `DASHSCOPE_BASE_URL`: scheme and host (`http(s)://host[:port]`), checked by `Region::custom`.
/// Returns it without a trailing slash.
pub fn parse_base_url(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected e.g. https://dashscope-intl.aliyuncs.com or \
                            http://127.0.0.1:8080 (scheme and host only; the demo adds the paths)";
    // Never echo credentials: a value with user info is refused without being shown.
    if value.contains('@') {
        return Err(format!(
            "DASHSCOPE_BASE_URL must not contain user info (`user:password@`); the key goes in \
             DASHSCOPE_API_KEY; {EXPECTED}"
        ));
    }
    match Region::custom(value) {
        Ok(Region::Custom(base)) if base.prefix().is_empty() => {
            Ok(format!("{}://{}", base.scheme(), base.authority()))
        }
        Ok(_) => Err(format!(
            "DASHSCOPE_BASE_URL `{value}` has a path; {EXPECTED}"
        )),
        Err(err) => Err(format!("DASHSCOPE_BASE_URL `{value}`: {err}; {EXPECTED}")),
    }
}

/// Whether `base` (`scheme://host[:port]`) names this machine.
pub fn is_loopback(base: &str) -> bool {
    let Ok(uri) = base.parse::<http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `text` with every occurrence of the key replaced, for anything printed that came from outside.
/// (A "key" of a few characters is no secret, and replacing it would garble the text.)
pub fn redact(text: &str, key: &str) -> String {
    if key.len() < 8 {
        text.to_owned()
    } else {
        text.replace(key, "<DASHSCOPE_API_KEY>")
    }
}
