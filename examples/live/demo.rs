//! The live half of the quickstart: a few small requests to DashScope itself, through the
//! layers, over HTTPS. Used by `cargo run --example live` and by the quickstart when
//! `DASHSCOPE_API_KEY` is set.

use std::ffi::OsStr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_dashscope::api::Plan;
use tower_dashscope::{
    Api, Attempts, ClassifyDashScopeError, DashScopeError, ErrorClass, Region, RetryWithJitter,
    Usage, UsageSlot, WaitTimeoutHeader,
};

#[path = "../support/dashscope_env.rs"]
mod dashscope_env;

use dashscope_env::{DEFAULT_MODEL, env, is_loopback, parse_base_url, parse_region, redact};

/// What the environment asks for. Holds the key only inside `authorization`, marked sensitive.
struct LiveConfig {
    region: Region,
    /// `scheme://authority`, without a trailing slash.
    base: String,
    base_overridden: bool,
    model: String,
    authorization: HeaderValue,
    key_kind: &'static str,
}

impl LiveConfig {
    fn from_env(key: &str) -> Result<Self, String> {
        let region = parse_region(env("DASHSCOPE_REGION")?.as_deref())?;
        let (base, base_overridden) = match env("DASHSCOPE_BASE_URL")? {
            Some(url) => (parse_base_url(&url)?, true),
            None => {
                let host = region
                    .host(Plan::PayAsYouGo)
                    .ok_or_else(|| format!("{region} has no pay-as-you-go host"))?;
                (format!("https://{host}"), false)
            }
        };
        let model = env("DASHSCOPE_MODEL")?.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
        let mut authorization = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            "DASHSCOPE_API_KEY has characters that cannot go in an HTTP header (a stray quote or \
             line break?)"
                .to_owned()
        })?;
        authorization.set_sensitive(true);
        let key_kind = if key.starts_with("sk-sp-") {
            "Coding Plan (sk-sp-…)"
        } else if key.starts_with("sk-") {
            "pay-as-you-go (sk-…)"
        } else {
            "not in DashScope's format (sk-…)"
        };
        Ok(LiveConfig {
            region,
            base,
            base_overridden,
            model,
            authorization,
            key_kind,
        })
    }
}

/// The three calls the live demo makes.
#[derive(Clone, Copy)]
enum Call {
    Chat,
    ChatStreaming,
    Native,
}

impl Call {
    const ALL: [Call; 3] = [Call::Chat, Call::ChatStreaming, Call::Native];

    fn label(self) -> &'static str {
        match self {
            Call::Chat => "chat, OpenAI-compatible",
            Call::ChatStreaming => "chat, OpenAI-compatible, streaming",
            Call::Native => "text-generation, native API",
        }
    }

    /// The path under the host, from the crate's table.
    fn path(self) -> String {
        let api = match self {
            Call::Chat | Call::ChatStreaming => Api::OpenAiCompatible,
            Call::Native => Api::Native,
        };
        let base = api.base_path(Plan::PayAsYouGo).unwrap_or_default();
        format!("{base}{}", api.chat_path())
    }

    fn body(self, model: &str) -> serde_json::Value {
        let ask = |content: &str| serde_json::json!([{"role": "user", "content": content}]);
        match self {
            Call::Chat => serde_json::json!({
                "model": model,
                "messages": ask("In one short sentence: what is a retry with jitter?"),
                "max_tokens": 32,
            }),
            Call::ChatStreaming => serde_json::json!({
                "model": model,
                "messages": ask("Name three colours of the rainbow, comma-separated."),
                "max_tokens": 32,
                "stream": true,
                "stream_options": {"include_usage": true},
            }),
            Call::Native => serde_json::json!({
                "model": model,
                "input": {"messages": ask("Say hello in Chinese and in English, briefly.")},
                "parameters": {"max_tokens": 32, "result_format": "message"},
            }),
        }
    }

    /// The answer's text, from a JSON body or (streaming) the deltas of every event.
    fn answer(self, body: &[u8]) -> Option<String> {
        let text = |value: &serde_json::Value, pointer: &str| {
            value
                .pointer(pointer)
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        };
        match self {
            Call::Chat => {
                let value: serde_json::Value = serde_json::from_slice(body).ok()?;
                text(&value, "/choices/0/message/content")
            }
            Call::Native => {
                let value: serde_json::Value = serde_json::from_slice(body).ok()?;
                text(&value, "/output/choices/0/message/content")
                    .or_else(|| text(&value, "/output/text"))
            }
            Call::ChatStreaming => {
                let mut answer = String::new();
                for line in String::from_utf8_lossy(body).lines() {
                    let Some(data) = line.strip_prefix("data:") else {
                        continue;
                    };
                    if let Ok(event) = serde_json::from_str::<serde_json::Value>(data.trim()) {
                        answer.push_str(
                            &text(&event, "/choices/0/delta/content").unwrap_or_default(),
                        );
                    }
                }
                (!answer.is_empty()).then_some(answer)
            }
        }
    }
}

/// What one call came to.
struct Outcome {
    elapsed: Duration,
    result: Result<Answer, DashScopeError>,
}

struct Answer {
    status: StatusCode,
    attempts: u32,
    usage: Option<Usage>,
    text: Option<String>,
}

async fn live_call<S, B>(client: S, config: &LiveConfig, call: Call) -> Outcome
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>,
    B: http_body::Body<Data = Bytes, Error = DashScopeError>,
{
    let started = Instant::now();
    let usage = UsageSlot::new();
    let result = async {
        let mut request = Request::post(format!("{}{}", config.base, call.path()))
            .header(AUTHORIZATION, config.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(call.body(&config.model).to_string())))
            .map_err(|err| DashScopeError::new(ErrorClass::InvalidRequest).with_source(err))?;
        request.extensions_mut().insert(usage.clone());
        let response = client.oneshot(request).await?;
        let status = response.status();
        let attempts = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
        // Read to the end: errors inside streams, and the usage, arrive here.
        let body = response.into_body().collect().await.map_err(|err| {
            let attempts = err.attempts().unwrap_or(attempts);
            err.with_attempts(attempts)
        })?;
        Ok(Answer {
            status,
            attempts,
            usage: usage.get(),
            text: call.answer(&body.to_bytes()),
        })
    };
    // A last bound on the whole call, body included: the layers bound each attempt.
    let result = match tokio::time::timeout(Duration::from_secs(120), result).await {
        Ok(result) => result,
        Err(elapsed) => Err(DashScopeError::new(ErrorClass::Timeout).with_source(elapsed)),
    };
    Outcome {
        elapsed: started.elapsed(),
        result,
    }
}

/// The first `max` characters of `text` on one line.
fn excerpt(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        line
    } else {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    }
}

fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A few small requests to the real DashScope (or to `DASHSCOPE_BASE_URL`), through the same
/// layers, with a report of each. Succeeds if at least one call did.
pub(crate) async fn live_demo(key: &OsStr) -> ExitCode {
    let Some(key) = key.to_str().map(str::trim) else {
        eprintln!("error: DASHSCOPE_API_KEY is not valid UTF-8");
        return ExitCode::from(2);
    };
    let config = match LiveConfig::from_env(key) {
        Ok(config) => config,
        Err(message) => {
            // The messages quote the variables' values; none of them should hold the key.
            eprintln!("error: {}", redact(&message, key));
            return ExitCode::from(2);
        }
    };

    println!(
        "tower-dashscope quickstart, live: {} small requests to DashScope, billed to your key",
        Call::ALL.len()
    );
    if config.base_overridden {
        println!("  endpoint  {}  (DASHSCOPE_BASE_URL)", config.base);
    } else {
        println!("  region    {}", config.region);
        println!("  endpoint  {}", config.base);
    }
    println!("  model     {}", config.model);
    println!("  key       {}, not shown\n", config.key_kind);
    if key.starts_with("sk-sp-") {
        println!(
            "warning: DASHSCOPE_API_KEY is a Coding Plan key (sk-sp-…). Coding Plan keys work"
        );
        println!(
            "         only on the Coding Plan hosts, so these requests will likely get 401.\n"
        );
    } else if !key.starts_with("sk-") {
        println!("warning: DASHSCOPE_API_KEY does not start with `sk-` as DashScope keys do; the");
        println!("         requests will likely get 401.\n");
    }
    if config.base.starts_with("http://") && !is_loopback(&config.base) {
        println!("warning: DASHSCOPE_BASE_URL is plain http to a host that is not loopback: the");
        println!("         key travels unencrypted.\n");
    }

    // HTTPS with ring and the webpki roots; plain HTTP for an `http://` override (the simulator).
    let connector = match dashscope_env::https_connector() {
        Ok(connector) => connector,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let http_client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let client = ServiceBuilder::new()
        .layer(
            RetryWithJitter::new()
                .base_delay(Duration::from_millis(500))
                .max_delay(Duration::from_secs(4))
                .deadline(Duration::from_secs(30)),
        )
        .layer(WaitTimeoutHeader::new(Duration::from_secs(10)))
        .layer(
            ClassifyDashScopeError::new()
                // Longer than the wait the header allows the server.
                .idle_timeout(Duration::from_secs(30)),
        )
        // Each attempt's connection and answer head: a `Timeout` (retryable) past this.
        .timeout(Duration::from_secs(40))
        .service(http_client);

    let mut succeeded = 0;
    let mut classes = Vec::new();
    for (n, call) in Call::ALL.into_iter().enumerate() {
        let outcome = live_call(client.clone(), &config, call).await;
        let seconds = outcome.elapsed.as_secs_f64();
        println!("{}. {}", n + 1, call.label());
        match outcome.result {
            Ok(answer) => {
                succeeded += 1;
                let tokens = answer.usage.map_or_else(
                    || "tokens not reported".to_owned(),
                    |u| {
                        format!(
                            "tokens {} in + {} out = {}",
                            u.input_tokens, u.output_tokens, u.total_tokens
                        )
                    },
                );
                println!(
                    "   ok {} in {seconds:.1} s, {}; {tokens}",
                    answer.status.as_u16(),
                    plural(answer.attempts, "attempt")
                );
                match answer.text {
                    Some(text) => println!("   \"{}\"", excerpt(&redact(&text, key), 80)),
                    None => println!("   (no answer text found in the body)"),
                }
            }
            Err(err) => {
                println!(
                    "   failed in {seconds:.1} s, {}; class {}",
                    plural(err.attempts().unwrap_or(1), "attempt"),
                    err.class().as_str()
                );
                println!("   err: {}", redact(&err.to_string(), key));
                // Transport errors: the innermost cause says more (DNS, refused, TLS…).
                let mut cause = std::error::Error::source(&err);
                let mut innermost = None;
                while let Some(source) = cause {
                    innermost = Some(source.to_string());
                    cause = source.source();
                }
                if let Some(innermost) = innermost {
                    println!("   cause: {}", redact(&innermost, key));
                }
                classes.push(err.class());
            }
        }
    }

    println!("\n{succeeded} of {} calls succeeded.", Call::ALL.len());
    if succeeded > 0 {
        return ExitCode::SUCCESS;
    }
    let whose = if config.base_overridden {
        "DASHSCOPE_BASE_URL's region or plan".to_owned()
    } else {
        format!("{} (DASHSCOPE_REGION)", config.region)
    };
    let hint = if classes.contains(&ErrorClass::Authentication) {
        format!(
            "a 401 usually means the key is not from {whose}: keys work only in their own region \
             (singapore, beijing, virginia, hongkong) and plan"
        )
    } else if classes
        .iter()
        .all(|c| matches!(c, ErrorClass::Connection | ErrorClass::Timeout))
    {
        format!(
            "{} could not be reached: check the network, a proxy, or DASHSCOPE_BASE_URL",
            config.base
        )
    } else if classes.contains(&ErrorClass::NotFound) {
        "check DASHSCOPE_MODEL (models differ between regions) and DASHSCOPE_BASE_URL".to_owned()
    } else {
        format!("see the errors above; a 401 would mean the key is not from {whose}")
    };
    println!("hint: nothing succeeded; {hint}.");
    ExitCode::FAILURE
}
