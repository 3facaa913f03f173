//! The gateway's configuration: a TOML file, read and checked once at start.
//!
//! The format is documented in `docs/gateway.md`; `gateway.toml` beside this file is a complete
//! example. Every error names the key (and the line, where the file has one) and what to do.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use tower_dashscope::{Quota, Region};

/// The most models a gateway serves (and the longest fallback chain is the crate's own bound).
const MAX_MODELS: usize = 1024;

/// The longest chain `FallbackModel` takes, the model itself included.
const MAX_CHAIN: usize = tower_dashscope::fallback::MAX_CHAIN;

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Upstreams in order: the first serves, the others take over when it cannot be reached.
    pub upstreams: Vec<Upstream>,
    /// The models callers may ask for, in the file's order (sorted by name).
    pub models: BTreeMap<String, Model>,
    /// Other names for models: alias -> model.
    pub aliases: BTreeMap<String, String>,
    /// Each model's fallbacks, in order (patterns expanded).
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// The quota of a model that states none.
    pub default_quota: Option<Quota>,
    /// The timeouts.
    pub timeouts: Timeouts,
    /// The retry settings.
    pub retry: Retry,
}

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A DashScope region, or any OpenAI-compatible base URL.
    Region(Region),
    /// The crate's DashScope simulator, started on a loopback port by the gateway.
    Simulator,
}

/// One upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Where.
    pub target: Target,
    /// The name of the environment variable holding the key (`None` for the simulator).
    pub api_key_env: Option<String>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("target", &self.target)
            .field("api_key_env", &self.api_key_env)
            .finish()
    }
}

/// A served model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Its quota, if the file states one.
    pub quota: Option<Quota>,
    /// Its context window in tokens, if the file states one (inputs too long for a model go
    /// to a fallback with a larger window).
    pub context_window: Option<u64>,
}

/// The timeouts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From sending an attempt to its first event (or first byte): past it, the next model.
    pub first_byte: Duration,
    /// The longest silence between two chunks of a stream.
    pub idle: Duration,
    /// The whole request, retries, fallbacks and streaming included.
    pub total: Duration,
}

/// The retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts per model, the first included.
    pub max_attempts: u32,
    /// The first backoff.
    pub base_delay: Duration,
    /// The longest backoff.
    pub max_delay: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(300),
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

/// A configuration error: what is wrong, where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or "the built-in configuration").
    pub source_name: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key, as a dotted path.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// The file as written. Unknown keys are errors (a misspelt key must not be silently ignored).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    models: BTreeMap<String, Spanned<RawModel>>,
    #[serde(default)]
    aliases: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    fallbacks: BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    quotas: RawQuotas,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    retry: RawRetry,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    region: Option<Spanned<String>>,
    base_url: Option<Spanned<String>>,
    #[serde(default)]
    simulator: bool,
    api_key_env: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModel {
    rpm: Option<Spanned<i64>>,
    tpm: Option<Spanned<i64>>,
    context_window: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQuotas {
    default_rpm: Option<Spanned<i64>>,
    default_tpm: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    first_byte: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    total: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<Spanned<i64>>,
    base_delay: Option<Spanned<String>>,
    max_delay: Option<Spanned<String>>,
}

/// Reads and checks a configuration. `source_name` names it in errors.
pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let at = |span: Range<usize>, key: &str, message: String| ConfigError {
        source_name: source_name.to_owned(),
        line: Some(line_of(text, span.start)),
        key: Some(key.to_owned()),
        message,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError {
        source_name: source_name.to_owned(),
        line: err.span().map(|span| line_of(text, span.start)),
        key: None,
        message: format!(
            "{}; see docs/gateway.md for the format",
            err.message().trim_end_matches('\n')
        ),
    })?;

    let listen = match &raw.server.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        Some(listen) => listen.get_ref().parse().map_err(|_| {
            at(
                listen.span(),
                "server.listen",
                format!(
                    "{:?} is not an address and port; write e.g. \"127.0.0.1:8080\" (or \
                     \"0.0.0.0:8080\" to listen on every interface)",
                    listen.get_ref()
                ),
            )
        })?,
    };
    let max_body_bytes = match &raw.server.max_body_bytes {
        None => 4 * 1024 * 1024,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(n) if (1..=(256 << 20)).contains(&n) => n,
            _ => {
                return Err(at(
                    n.span(),
                    "server.max_body_bytes",
                    "must be between 1 and 268435456 (256 MiB); chat requests rarely need \
                     more than a few MiB"
                        .into(),
                ));
            }
        },
    };

    if raw.upstreams.is_empty() {
        return Err(ConfigError {
            source_name: source_name.to_owned(),
            line: None,
            key: Some("upstreams".into()),
            message: "no upstream: add an [[upstreams]] table with `region = \"singapore\"` and \
                      `api_key_env = \"DASHSCOPE_API_KEY\"`, or `base_url = …`, or \
                      `simulator = true`"
                .into(),
        });
    }
    let mut upstreams = Vec::new();
    for (i, up) in raw.upstreams.iter().enumerate() {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        let target = match (&up.region, &up.base_url, up.simulator) {
            (Some(region), None, false) => {
                Target::Region(region_by_name(region.get_ref()).ok_or_else(|| {
                    at(
                        region.span(),
                        &key("region"),
                        format!(
                            "unknown region {:?}; use singapore, beijing, virginia or hongkong \
                             (or their ids ap-southeast-1, cn-beijing, us-east-1, cn-hongkong), \
                             or `base_url` for any other host",
                            region.get_ref()
                        ),
                    )
                })?)
            }
            (None, Some(url), false) => Target::Region(
                Region::custom(url.get_ref())
                    .map_err(|err| at(url.span(), &key("base_url"), err.to_string()))?,
            ),
            (None, None, true) => Target::Simulator,
            _ => {
                return Err(ConfigError {
                    source_name: source_name.to_owned(),
                    line: up
                        .region
                        .as_ref()
                        .map(|s| s.span())
                        .or(up.base_url.as_ref().map(|s| s.span()))
                        .map(|span| line_of(text, span.start)),
                    key: Some(format!("upstreams[{i}]")),
                    message: "give exactly one of `region`, `base_url` or `simulator = true`"
                        .into(),
                });
            }
        };
        let api_key_env = match (&target, &up.api_key_env) {
            (Target::Simulator, _) => None,
            (_, None) => {
                return Err(ConfigError {
                    source_name: source_name.to_owned(),
                    line: None,
                    key: Some(key("api_key_env")),
                    message: "missing: name the environment variable that holds this \
                              upstream's key, e.g. `api_key_env = \"DASHSCOPE_API_KEY\"` (the \
                              key itself never goes in the file)"
                        .into(),
                });
            }
            (_, Some(name)) => {
                let valid = !name.get_ref().is_empty()
                    && name
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(at(
                        name.span(),
                        &key("api_key_env"),
                        "is the *name* of an environment variable (letters, digits and _), \
                         e.g. \"DASHSCOPE_API_KEY\"; never put the key itself in the file"
                            .into(),
                    ));
                }
                Some(name.get_ref().clone())
            }
        };
        upstreams.push(Upstream {
            target,
            api_key_env,
        });
    }

    if raw.models.is_empty() {
        return Err(ConfigError {
            source_name: source_name.to_owned(),
            line: None,
            key: Some("models".into()),
            message: "no model: add a [models] table naming the models callers may ask for, \
                      e.g. `\"qwen-plus\" = { rpm = 600, tpm = 1000000 }` or `\"qwen-flash\" = {}`"
                .into(),
        });
    }
    if raw.models.len() > MAX_MODELS {
        return Err(ConfigError {
            source_name: source_name.to_owned(),
            line: None,
            key: Some("models".into()),
            message: format!("more than {MAX_MODELS} models; serve fewer from one gateway"),
        });
    }
    let count = |v: &Spanned<i64>, key: &str, max: i64| -> Result<u64, ConfigError> {
        match *v.get_ref() {
            n if (0..=max).contains(&n) => Ok(n as u64),
            _ => Err(at(
                v.span(),
                key,
                format!("must be a whole number from 0 to {max}"),
            )),
        }
    };
    let mut models = BTreeMap::new();
    for (name, model) in &raw.models {
        if name.trim().is_empty() || name.contains('*') {
            return Err(at(
                model.span(),
                &format!("models.{name:?}"),
                "a model name is not empty and has no `*` (patterns go in [fallbacks])".into(),
            ));
        }
        let m = model.get_ref();
        let quota = match (&m.rpm, &m.tpm) {
            (None, None) => None,
            (rpm, tpm) => {
                let rpm = rpm
                    .as_ref()
                    .map(|v| count(v, &format!("models.{name}.rpm"), u32::MAX.into()))
                    .transpose()?
                    .unwrap_or(0);
                let tpm = tpm
                    .as_ref()
                    .map(|v| count(v, &format!("models.{name}.tpm"), u32::MAX.into()))
                    .transpose()?
                    .unwrap_or(0);
                Some(Quota::per_minute(rpm as u32, tpm as u32))
            }
        };
        let context_window = m
            .context_window
            .as_ref()
            .map(|v| count(v, &format!("models.{name}.context_window"), i64::MAX))
            .transpose()?;
        models.insert(
            name.clone(),
            Model {
                quota,
                context_window,
            },
        );
    }

    let mut aliases = BTreeMap::new();
    for (alias, target) in &raw.aliases {
        if models.contains_key(alias) {
            return Err(at(
                target.span(),
                &format!("aliases.{alias}"),
                format!(
                    "{alias:?} is already a model in [models]; an alias needs a name of its own"
                ),
            ));
        }
        if !models.contains_key(target.get_ref()) {
            return Err(at(
                target.span(),
                &format!("aliases.{alias}"),
                format!(
                    "{:?} is not in [models]; add it there, or point the alias at one of: {}",
                    target.get_ref(),
                    names(&models)
                ),
            ));
        }
        aliases.insert(alias.clone(), target.get_ref().clone());
    }

    // Fallbacks: an exact name wins over a pattern; among patterns, the longest (most specific).
    let mut exact: HashMap<&str, &Spanned<Vec<String>>> = HashMap::new();
    let mut patterns: Vec<(&str, &Spanned<Vec<String>>)> = Vec::new();
    for (pattern, chain) in &raw.fallbacks {
        let key = format!("fallbacks.{pattern:?}");
        for target in chain.get_ref() {
            if !models.contains_key(target) {
                return Err(at(
                    chain.span(),
                    &key,
                    format!(
                        "fallback {target:?} is not in [models]; add it there (a fallback must \
                         be a model the gateway serves)"
                    ),
                ));
            }
        }
        if pattern.contains('*') {
            patterns.push((pattern, chain));
        } else if models.contains_key(pattern) {
            exact.insert(pattern, chain);
        } else {
            return Err(at(
                chain.span(),
                &key,
                format!(
                    "{pattern:?} is not in [models] (and has no `*`, so it is not a pattern); \
                     use a model name, or a pattern such as \"qwen3-*\" or \"*\""
                ),
            ));
        }
    }
    patterns.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let mut fallbacks = BTreeMap::new();
    for name in models.keys() {
        let chain = exact.get(name.as_str()).copied().or_else(|| {
            patterns
                .iter()
                .find(|(p, _)| matches_pattern(p, name))
                .map(|(_, c)| *c)
        });
        if let Some(chain) = chain {
            let mut list: Vec<String> = Vec::new();
            for target in chain.get_ref() {
                if target != name && !list.contains(target) {
                    list.push(target.clone());
                }
            }
            if !list.is_empty() {
                fallbacks.insert(name.clone(), list);
            }
        }
    }
    // Fallbacks are followed: what qwen-plus falls back to, so does every model that falls back
    // to qwen-plus (after its own list), each model once, the model itself never.
    let direct = fallbacks.clone();
    for (name, chain) in &mut fallbacks {
        let mut i = 0;
        while i < chain.len() && chain.len() < MAX_CHAIN - 1 {
            if let Some(next) = direct.get(&chain[i]) {
                for f in next {
                    if f != name && !chain.contains(f) && chain.len() < MAX_CHAIN - 1 {
                        chain.push(f.clone());
                    }
                }
            }
            i += 1;
        }
    }

    let default_quota = match (&raw.quotas.default_rpm, &raw.quotas.default_tpm) {
        (None, None) => None,
        (rpm, tpm) => {
            let rpm = rpm
                .as_ref()
                .map(|v| count(v, "quotas.default_rpm", u32::MAX.into()))
                .transpose()?
                .unwrap_or(0);
            let tpm = tpm
                .as_ref()
                .map(|v| count(v, "quotas.default_tpm", u32::MAX.into()))
                .transpose()?
                .unwrap_or(0);
            Some(Quota::per_minute(rpm as u32, tpm as u32))
        }
    };

    let duration = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
        None => Ok(default),
        Some(text) => parse_duration(text.get_ref())
            .filter(|d| !d.is_zero() && *d <= Duration::from_secs(24 * 3600))
            .ok_or_else(|| {
                at(
                    text.span(),
                    key,
                    format!(
                        "{:?} is not a duration from 1ms to 24h; write e.g. \"500ms\", \"30s\", \
                             \"5m\" or \"1h\"",
                        text.get_ref()
                    ),
                )
            }),
    };
    let defaults = Timeouts::default();
    let timeouts = Timeouts {
        first_byte: duration(
            &raw.timeouts.first_byte,
            "timeouts.first_byte",
            defaults.first_byte,
        )?,
        idle: duration(&raw.timeouts.idle, "timeouts.idle", defaults.idle)?,
        total: duration(&raw.timeouts.total, "timeouts.total", defaults.total)?,
    };
    let retry_defaults = Retry::default();
    let retry = Retry {
        max_attempts: match &raw.retry.max_attempts {
            None => retry_defaults.max_attempts,
            Some(v) => match *v.get_ref() {
                n @ 1..=10 => n as u32,
                _ => {
                    return Err(at(
                        v.span(),
                        "retry.max_attempts",
                        "must be from 1 (no retry) to 10".into(),
                    ));
                }
            },
        },
        base_delay: duration(
            &raw.retry.base_delay,
            "retry.base_delay",
            retry_defaults.base_delay,
        )?,
        max_delay: duration(
            &raw.retry.max_delay,
            "retry.max_delay",
            retry_defaults.max_delay,
        )?,
    };

    Ok(Config {
        listen,
        max_body_bytes,
        upstreams,
        models,
        aliases,
        fallbacks,
        default_quota,
        timeouts,
        retry,
    })
}

impl Config {
    /// The model a caller's name stands for (itself, or an alias's target), if it is served.
    pub fn resolve<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if self.models.contains_key(name) {
            Some(name)
        } else {
            self.aliases.get(name).map(String::as_str)
        }
    }

    /// Fallback chains for `FallbackModel`, one per model with fallbacks: the model, then its
    /// fallbacks. `FallbackModel` puts a model in the first chain it appears in, so a model's
    /// own chain is added before any chain that names it as a fallback; models whose chains
    /// name each other in a cycle keep their place in the first of them (name order).
    pub fn chains(&self) -> Vec<Vec<String>> {
        let chain = |name: &String| {
            let mut chain = vec![name.clone()];
            chain.extend(self.fallbacks[name].iter().cloned());
            chain
        };
        let mut pending: Vec<&String> = self.fallbacks.keys().collect();
        let mut out = Vec::new();
        while !pending.is_empty() {
            // Ready: no fallback of the model still waits to add its own chain.
            let ready: Vec<&String> = pending
                .iter()
                .copied()
                .filter(|name| {
                    !self.fallbacks[*name]
                        .iter()
                        .any(|f| f != *name && pending.contains(&f))
                })
                .collect();
            if ready.is_empty() {
                out.extend(pending.drain(..).map(chain));
                break;
            }
            pending.retain(|name| !ready.contains(name));
            out.extend(ready.into_iter().map(chain));
        }
        out
    }
}

fn names(models: &BTreeMap<String, Model>) -> String {
    models.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    if !name.ends_with(last) {
        return false;
    }
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

fn region_by_name(name: &str) -> Option<Region> {
    match name.trim().to_ascii_lowercase().as_str() {
        "singapore" | "ap-southeast-1" | "intl" => Some(Region::Singapore),
        "beijing" | "cn-beijing" | "china" => Some(Region::Beijing),
        "virginia" | "us-east-1" | "us" => Some(Region::Virginia),
        "hongkong" | "hong-kong" | "cn-hongkong" => Some(Region::HongKong),
        _ => None,
    }
}

/// `500ms`, `30s`, `5m`, `1h`, or a sum of them (`1m30s`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        };
        rest = &rest[unit..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
