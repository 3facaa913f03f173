//! The crate's DashScope simulator on a loopback port, for other programs to call.
//!
//! `cargo run --example mock_server -- [--addr 127.0.0.1:0] [--seconds 120] [--key sk-mock]`
//!
//! It serves `MockDashScope` over HTTP/1.1 with two models, `qwen-flash` (600 RPM, 100k TPM) and
//! `qwen-plus` (60 RPM, 20k TPM), and accepts only `Authorization: Bearer <key>` with the key
//! given by `--key` (default `sk-mock`); any other key gets 401 `InvalidApiKey`, as a key from
//! another region does. Once it listens it prints exactly one line on stdout,
//! `listening on http://127.0.0.1:PORT` (port `0` picks a free one), and then waits. It stops
//! by itself after `--seconds` (default 120), or on Ctrl-C (or SIGTERM), and exits 0.
//!
//! Point any client at it as you would at DashScope, with `http://127.0.0.1:PORT` in place of
//! `https://dashscope-intl.aliyuncs.com`:
//!
//! - OpenAI-compatible clients (the OpenAI SDKs, LangChain, curl…): base URL
//!   `http://127.0.0.1:PORT/compatible-mode/v1`, API key `sk-mock`, e.g.
//!   `OPENAI_BASE_URL=http://127.0.0.1:PORT/compatible-mode/v1 OPENAI_API_KEY=sk-mock`;
//!   chat is `POST /compatible-mode/v1/chat/completions` (streaming too).
//! - Native DashScope calls: `POST /api/v1/services/aigc/text-generation/generation`.
//! - Anthropic-compatible clients: base URL `http://127.0.0.1:PORT/apps/anthropic`.
//! - This crate's quickstart in live mode:
//!   `DASHSCOPE_API_KEY=sk-mock DASHSCOPE_BASE_URL=http://127.0.0.1:PORT cargo run --example quickstart`.
//!
//! ```sh
//! curl -s http://127.0.0.1:PORT/compatible-mode/v1/chat/completions \
//!   -H 'Authorization: Bearer sk-mock' -H 'Content-Type: application/json' \
//!   -d '{"model":"qwen-flash","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
//! ```
//!
//! The answers are placeholder words, token counts are estimated from the text, and what the
//! server saw (requests, 429s) is printed on stderr when it stops.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tower_dashscope::mock::{MockDashScope, ModelConfig};

const USAGE: &str =
    "usage: mock_server [--addr 127.0.0.1:0] [--seconds 120 (1..=86400)] [--key sk-mock]";

struct Options {
    addr: SocketAddr,
    seconds: u64,
    key: String,
}

/// The options, or `None` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        seconds: 120,
        key: "sk-mock".to_owned(),
    };
    while let Some(arg) = args.next() {
        // `--name value` or `--name=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if name == "-h" || name == "--help" {
            return Ok(None);
        }
        if !matches!(name.as_str(), "--addr" | "--seconds" | "--key") {
            return Err(format!("unknown argument `{name}`"));
        }
        let value = match inline.or_else(|| args.next()) {
            Some(value) => value,
            None => return Err(format!("`{name}` needs a value")),
        };
        match name.as_str() {
            "--addr" => {
                options.addr = value.parse().map_err(|_| {
                    format!("--addr `{value}` is not an IP address and port, e.g. 127.0.0.1:8080")
                })?;
            }
            "--seconds" => {
                options.seconds = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=86_400).contains(s))
                    .ok_or_else(|| {
                        format!("--seconds `{value}` is not a whole number in 1..=86400")
                    })?;
            }
            _ => {
                if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err("--key must be non-empty, without spaces".to_owned());
                }
                options.key = value;
            }
        }
    }
    Ok(Some(options))
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("mock_server: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let mock = MockDashScope::builder()
        .model(
            "qwen-flash",
            ModelConfig::new()
                .rpm(600)
                .tpm(100_000)
                .latency(Duration::from_millis(50), 400.0),
        )
        .model(
            "qwen-plus",
            ModelConfig::new()
                .rpm(60)
                .tpm(20_000)
                .latency(Duration::from_millis(150), 100.0),
        )
        .api_key(options.key)
        .build();
    let server = match mock.serve(options.addr).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!("mock_server: cannot listen on {}: {err}", options.addr);
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
