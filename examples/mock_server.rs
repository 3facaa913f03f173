//! The crate's DashScope simulator on a loopback port, for other programs to call: a tool.
//!
//! `cargo run --example mock_server -- --help` lists every flag. With none, it serves two
//! models, `qwen-flash` (600 RPM, 100k TPM) and `qwen-plus` (60 RPM, 20k TPM), and accepts only
//! `Authorization: Bearer sk-mock`; any other key gets 401 `InvalidApiKey`, as a key from
//! another region does. Once it listens it prints exactly one line on stdout,
//! `listening on http://127.0.0.1:PORT` (port `0` picks a free one), and then waits. It stops
//! by itself after `--seconds` (default 120), or on Ctrl-C (or SIGTERM), prints what it saw as
//! one line of JSON on stdout, and exits 0.
//!
//! Point any client at it as you would at DashScope, with `http://127.0.0.1:PORT` in place of
//! `https://dashscope-intl.aliyuncs.com`:
//!
//! - OpenAI-compatible clients (the OpenAI SDKs, LangChain, curl…): base URL
//!   `http://127.0.0.1:PORT/compatible-mode/v1`, API key `sk-mock`;
//! - native DashScope calls: `POST /api/v1/services/aigc/text-generation/generation`;
//! - Anthropic-compatible clients: base URL `http://127.0.0.1:PORT/apps/anthropic`;
//! - this crate's quickstart in live mode:
//!   `DASHSCOPE_API_KEY=sk-mock DASHSCOPE_BASE_URL=http://127.0.0.1:PORT cargo run --example quickstart`.
//!
//! ```sh
//! cargo run --example mock_server -- --port 8080 \
//!   --model qwen-plus --rpm 120 --tpm 50000 --enforcement fixed --output uniform:0.3 \
//!   --model qwen-flash --error-rate 0.05 --fault stall:5@0.01
//! curl -s http://127.0.0.1:8080/compatible-mode/v1/chat/completions \
//!   -H 'Authorization: Bearer sk-mock' -H 'Content-Type: application/json' \
//!   -d '{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tower_dashscope::Region;
use tower_dashscope::api::Plan;
use tower_dashscope::mock::{
    AnthropicErrorShape, CodingPlan, Enforcement, Exhausted, Fault, MidStreamError, MockBuilder,
    MockDashScope, MockStats, ModelConfig, OutputLength, TokenPlan,
};

const USAGE: &str = "\
usage: mock_server [OPTIONS]

Server:
  --addr IP:PORT             listen address (default 127.0.0.1:0; port 0 picks a free one)
  --port PORT                same as --addr 127.0.0.1:PORT
  --seconds N                stop after N seconds, 1..=86400 (default 120)
  --header-read-timeout S    close connections that do not send their headers in S seconds (30)
  --seed N                   seed of every random draw (default 0)

Keys (default: --key sk-mock; any key when --any-key):
  --key KEY                  accept KEY everywhere (repeatable)
  --key-for-host KEY@HOST    accept KEY only on requests for HOST (repeatable)
  --key-for-plan KEY@REGION:PLAN
                             KEY only on the host of PLAN (payg, coding, token) in REGION
                             (cn-beijing, ap-southeast-1, us-east-1, cn-hongkong)
  --any-key                  accept any key, or none

Models (default: qwen-flash 600 RPM/100k TPM, qwen-plus 60 RPM/20k TPM). `--model NAME` starts
a model; the options after it configure that model:
  --model NAME               serve NAME (repeatable)
  --rpm N  --tpm N           requests / tokens per minute
  --burst N                  growth-rate limit: N requests pass in a second after an idle one
  --enforcement continuous|fixed
                             per-second enforcement: continuous bucket, or fixed windows
  --latency MS               time to first token, milliseconds
  --tokens-per-sec F         output speed (0 = instant)
  --output limit|uniform:F   answer lengths: the whole max_tokens, or uniform in [F*max, max]
  --context-window N         input tokens allowed
  --max-output N             largest max_tokens allowed
  --retry-after S            add Retry-After: S (float seconds) to 429s
  --error-rate F             share of 500 InternalError
  --reset-rate F             share of connection resets
  --outage FROM..TO          503 ModelUnavailable between these seconds after start
  --cut-after N              streams stop after N tokens, unfinished
  --moderation-marker TEXT   requests containing TEXT get 400 DataInspectionFailed
  --exhausted free-tier|billing
                             every request fails for good (403 / 400 Arrearage)
  --fault NAME[@RATE]        a scripted fault, for every request or a share of them
                             (repeatable): empty-429, sse-framed-400, no-first-byte,
                             stall:N, moderation-mid-stream:N, error-mid-stream:N,
                             429-mid-stream:N (N = tokens before it)

Shapes and plans:
  --anthropic-errors anthropic|openai|native
                             the shape of /apps/anthropic error bodies (default anthropic)
  --compat-stream-429-as-event
                             a streaming compatible 429 is an event:error frame in an HTTP 200
  --coding-plan              serve the Coding Plan hosts (405 without User-Agent, its 401s)
  --coding-plan-per-5h N  --coding-plan-per-week N  --coding-plan-per-month N
  --coding-plan-concurrency N  --coding-plan-usage-tokens-per-hour N
  --token-plan-tokens-per-week N

  -h, --help                 this text";

struct Options {
    addr: SocketAddr,
    seconds: u64,
    builder: MockBuilder,
}

/// A command-line error: what was wrong, and how to fix it.
type ArgError = String;

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ArgError> {
    value
        .parse()
        .map_err(|_| format!("{name} `{value}` is not a valid number"))
}

fn rate(name: &str, value: &str) -> Result<f64, ArgError> {
    let rate: f64 = number(name, value)?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{name} `{value}` is not a share in 0..=1"))
    }
}

fn seconds(name: &str, value: &str) -> Result<Duration, ArgError> {
    let secs: f64 = number(name, value)?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{name} `{value}` is not a non-negative number of seconds"))
}

fn parse_fault(value: &str) -> Result<(Fault, f64), ArgError> {
    let (spec, share) = match value.split_once('@') {
        Some((spec, share)) => (spec, rate("--fault rate", share)?),
        None => (value, 1.0),
    };
    let (name, tokens) = match spec.split_once(':') {
        Some((name, n)) => (name, Some(number::<u32>("--fault tokens", n)?)),
        None => (spec, None),
    };
    let mid = |error| Fault::ErrorMidStream {
        after_tokens: tokens.unwrap_or(1),
        error,
    };
    let fault = match name {
        "empty-429" => Fault::EmptyThrottle,
        "sse-framed-400" => Fault::SseFramedErrorBody,
        "no-first-byte" => Fault::NoFirstByte,
        "stall" => Fault::Stall {
            after_tokens: tokens.unwrap_or(1),
        },
        "moderation-mid-stream" => mid(MidStreamError::DataInspection),
        "error-mid-stream" => mid(MidStreamError::Internal),
        "429-mid-stream" => mid(MidStreamError::RateQuota),
        _ => {
            return Err(format!(
                "--fault `{name}` is not a fault; use empty-429, sse-framed-400, no-first-byte, \
                 stall:N, moderation-mid-stream:N, error-mid-stream:N or 429-mid-stream:N"
            ));
        }
    };
    Ok((fault, share))
}

/// Applies one model option to `config`.
fn model_option(config: ModelConfig, name: &str, value: &str) -> Result<ModelConfig, ArgError> {
    Ok(match name {
        "--rpm" => config.rpm(number(name, value)?),
        "--tpm" => config.tpm(number(name, value)?),
        "--burst" => config.burst_limit(number(name, value)?),
        "--enforcement" => config.enforcement(match value {
            "continuous" => Enforcement::Continuous,
            "fixed" => Enforcement::FixedWindow,
            _ => return Err(format!("--enforcement `{value}`: use continuous or fixed")),
        }),
        "--output" => config.output_length(match value.split_once(':') {
            None if value == "limit" => OutputLength::Limit,
            Some(("uniform", f)) => OutputLength::Uniform {
                min_fraction: rate("--output uniform", f)?,
            },
            _ => return Err(format!("--output `{value}`: use limit or uniform:F")),
        }),
        "--context-window" => config.context_window(number(name, value)?),
        "--max-output" => config.max_output_tokens(number(name, value)?),
        "--retry-after" => config.retry_after(seconds(name, value)?),
        "--error-rate" => config.error_rate(rate(name, value)?),
        "--reset-rate" => config.reset_rate(rate(name, value)?),
        "--outage" => {
            let (from, to) = value
                .split_once("..")
                .ok_or_else(|| format!("--outage `{value}`: use FROM..TO in seconds"))?;
            config.outage(seconds(name, from)?..seconds(name, to)?)
        }
        "--cut-after" => config.cut_streams_after(number(name, value)?),
        "--moderation-marker" => config.moderation_marker(value),
        "--exhausted" => config.exhausted(match value {
            "free-tier" => Exhausted::FreeTier,
            "billing" => Exhausted::Billing,
            _ => return Err(format!("--exhausted `{value}`: use free-tier or billing")),
        }),
        "--fault" => {
            let (fault, share) = parse_fault(value)?;
            config.fault_rate(fault, share)
        }
        _ => return Err(format!("unknown model option `{name}` (see --help)")),
    })
}

const MODEL_OPTIONS: &[&str] = &[
    "--rpm",
    "--tpm",
    "--burst",
    "--enforcement",
    "--latency",
    "--tokens-per-sec",
    "--output",
    "--context-window",
    "--max-output",
    "--retry-after",
    "--error-rate",
    "--reset-rate",
    "--outage",
    "--cut-after",
    "--moderation-marker",
    "--exhausted",
    "--fault",
];

const FLAGS: &[&str] = &["--any-key", "--compat-stream-429-as-event", "--coding-plan"];

/// The options, or `None` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, ArgError> {
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut secs = 120;
    let mut builder = MockDashScope::builder();
    // Name, configuration, and time to first token and speed (set by two flags, applied
    // together).
    let mut models: Vec<(String, ModelConfig, Duration, f64)> = Vec::new();
    let mut keys = 0;
    let mut any_key = false;
    let mut coding: Option<CodingPlan> = None;
    let mut token: Option<TokenPlan> = None;
    while let Some(arg) = args.next() {
        // `--name value` or `--name=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if name == "-h" || name == "--help" {
            return Ok(None);
        }
        if FLAGS.contains(&name.as_str()) {
            match name.as_str() {
                "--any-key" => any_key = true,
                "--compat-stream-429-as-event" => {
                    builder = builder.compat_stream_throttle_as_event(true);
                }
                _ => {
                    coding.get_or_insert_with(CodingPlan::new);
                }
            }
            continue;
        }
        let Some(value) = inline.or_else(|| args.next()) else {
            return Err(format!(
                "`{name}` needs a value (or it is not an option; see --help)"
            ));
        };
        if MODEL_OPTIONS.contains(&name.as_str()) {
            let Some((_, config, ttft, speed)) = models.last_mut() else {
                return Err(format!(
                    "`{name}` configures a model: put `--model NAME` before it"
                ));
            };
            match name.as_str() {
                "--latency" => *ttft = Duration::from_millis(number(&name, &value)?),
                "--tokens-per-sec" => *speed = number(&name, &value)?,
                _ => *config = model_option(std::mem::take(config), &name, &value)?,
            }
            continue;
        }
        match name.as_str() {
            "--addr" => {
                addr = value.parse().map_err(|_| {
                    format!("--addr `{value}` is not an IP address and port, e.g. 127.0.0.1:8080")
                })?;
            }
            "--port" => addr.set_port(number(&name, &value)?),
            "--seconds" => {
                secs = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=86_400).contains(s))
                    .ok_or_else(|| {
                        format!("--seconds `{value}` is not a whole number in 1..=86400")
                    })?;
            }
            "--header-read-timeout" => {
                builder = builder.header_read_timeout(seconds(&name, &value)?);
            }
            "--seed" => builder = builder.seed(number(&name, &value)?),
            "--key" => {
                check_key(&value)?;
                builder = builder.api_key(value);
                keys += 1;
            }
            "--key-for-host" => {
                let (key, host) = value
                    .split_once('@')
                    .ok_or_else(|| format!("--key-for-host `{value}`: use KEY@HOST"))?;
                check_key(key)?;
                builder = builder.api_key_for_host(key, host);
                keys += 1;
            }
            "--key-for-plan" => {
                let parsed = value.split_once('@').and_then(|(key, rest)| {
                    let (region, plan) = rest.split_once(':')?;
                    Some((key, region.parse::<Region>().ok()?, plan))
                });
                let (key, region, plan) = parsed.ok_or_else(|| {
                    format!("--key-for-plan `{value}`: use KEY@REGION:PLAN, e.g. sk-sp-1@ap-southeast-1:coding")
                })?;
                let plan = match plan {
                    "payg" => Plan::PayAsYouGo,
                    "coding" => Plan::CodingPlan,
                    "token" => Plan::TokenPlan,
                    _ => {
                        return Err(format!(
                            "--key-for-plan plan `{plan}`: use payg, coding or token"
                        ));
                    }
                };
                check_key(key)?;
                builder = builder.api_key_for_plan(&region, plan, key);
                keys += 1;
            }
            "--model" => {
                if value.is_empty() {
                    return Err("--model needs a name".to_owned());
                }
                models.push((value, ModelConfig::new(), Duration::ZERO, 0.0));
            }
            "--anthropic-errors" => {
                builder = builder.anthropic_error_shape(match value.as_str() {
                    "anthropic" => AnthropicErrorShape::Anthropic,
                    "openai" => AnthropicErrorShape::OpenAi,
                    "native" => AnthropicErrorShape::Native,
                    _ => {
                        return Err(format!(
                            "--anthropic-errors `{value}`: use anthropic, openai or native"
                        ));
                    }
                });
            }
            "--coding-plan-per-5h" => {
                let plan = coding.take().unwrap_or_default();
                coding = Some(plan.requests_per_5_hours(number(&name, &value)?));
            }
            "--coding-plan-per-week" => {
                let plan = coding.take().unwrap_or_default();
                coding = Some(plan.requests_per_week(number(&name, &value)?));
            }
            "--coding-plan-per-month" => {
                let plan = coding.take().unwrap_or_default();
                coding = Some(plan.requests_per_month(number(&name, &value)?));
            }
            "--coding-plan-concurrency" => {
                let plan = coding.take().unwrap_or_default();
                coding = Some(plan.max_concurrency(number(&name, &value)?));
            }
            "--coding-plan-usage-tokens-per-hour" => {
                let plan = coding.take().unwrap_or_default();
                coding = Some(plan.usage_tokens_per_hour(number(&name, &value)?));
            }
            "--token-plan-tokens-per-week" => {
                token = Some(TokenPlan::new().tokens_per_week(number(&name, &value)?));
            }
            _ => return Err(format!("unknown argument `{name}` (see --help)")),
        }
    }
    if models.is_empty() {
        models.push((
            "qwen-flash".to_owned(),
            ModelConfig::new().rpm(600).tpm(100_000),
            Duration::from_millis(50),
            400.0,
        ));
        models.push((
            "qwen-plus".to_owned(),
            ModelConfig::new().rpm(60).tpm(20_000),
            Duration::from_millis(150),
            100.0,
        ));
    }
    for (name, config, ttft, speed) in models {
        builder = builder.model(name, config.latency(ttft, speed));
    }
    if keys == 0 && !any_key {
        builder = builder.api_key("sk-mock");
    }
    if let Some(plan) = coding {
        builder = builder.coding_plan(plan);
    }
    if let Some(plan) = token {
        builder = builder.token_plan(plan);
    }
    Ok(Some(Options {
        addr,
        seconds: secs,
        builder,
    }))
}

fn check_key(key: &str) -> Result<(), ArgError> {
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a key must be non-empty, without spaces".to_owned());
    }
    Ok(())
}

/// What the simulator saw, as one line of JSON.
fn stats_json(stats: &MockStats, why: &str) -> String {
    let models: serde_json::Map<String, serde_json::Value> = stats
        .models
        .iter()
        .map(|(name, model)| {
            let c = model.total;
            let value = serde_json::json!({
                "requests": c.requests,
                "succeeded": c.succeeded,
                "throttled_requests": c.throttled_requests,
                "throttled_tokens": c.throttled_tokens,
                "throttled_burst": c.throttled_burst,
                "queued": c.queued,
                "failed": c.failed,
                "tokens": c.tokens,
            });
            (name.clone(), value)
        })
        .collect();
    serde_json::json!({
        "stopped": why,
        "requests": stats.requests,
        "throttled": stats.throttled(),
        "peak_in_flight": stats.peak_in_flight,
        "models": models,
    })
    .to_string()
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            // A closed pipe (`mock_server --help | head`) is not an error.
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("mock_server: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let mock = options.builder.build();
    let server = match mock.serve(options.addr).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!(
                "mock_server: cannot listen on {}: {err}; pick another --addr or --port",
                options.addr
            );
            return ExitCode::FAILURE;
        }
    };

    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "listening on http://{}", server.local_addr())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        // Nobody can learn the address: there is no point in serving.
        return ExitCode::FAILURE;
    }
    drop(stdout);

    let why = tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(options.seconds)) => {
            format!("after {} s", options.seconds)
        }
        () = interrupted() => "on a signal".to_owned(),
    };
    server.shutdown();
    let stats = mock.stats();
    // Whoever started the server may have stopped reading: the stats are then lost, quietly.
    let _ = writeln!(std::io::stdout(), "{}", stats_json(&stats, &why));
    eprintln!(
        "mock_server: stopped {why}; served {} requests ({} answered 429)",
        stats.requests,
        stats.throttled()
    );
    ExitCode::SUCCESS
}

/// Ctrl-C, or SIGTERM on Unix (what `kill` sends). If a handler cannot be installed, waits
/// forever: the time limit still stops the server.
async fn interrupted() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = async {
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
