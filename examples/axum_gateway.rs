//! An OpenAI-compatible gateway in front of DashScope (or any OpenAI-compatible upstream), with
//! the recommended stack — budgets, retries, fallbacks, failover — for callers in any language.
//!
//! ```sh
//! cargo run --example axum_gateway                         # the simulator, on 127.0.0.1:8080
//! DASHSCOPE_API_KEY=sk-… cargo run --example axum_gateway  # DashScope (Singapore)
//! cargo run --example axum_gateway -- my-gateway.toml      # your configuration
//! cargo run --example axum_gateway -- --check-config my-gateway.toml
//! ```
//!
//! Then point any OpenAI SDK at it:
//!
//! ```python
//! from openai import OpenAI
//! client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
//! for chunk in client.chat.completions.create(model="qwen-plus", stream=True,
//!                                             messages=[{"role": "user", "content": "hi"}]):
//!     print(chunk.choices[0].delta.content or "", end="", flush=True)
//! ```
//!
//! Without a file it uses `examples/axum_gateway/gateway.toml` (the documented example); without
//! `DASHSCOPE_API_KEY` as well, it serves the same models from the crate's DashScope simulator
//! on a loopback port, so it runs on a fresh machine with no key and no network. The format is
//! documented in `docs/gateway.md`. Configuration errors name the key and line and exit with
//! status 2. Logs go to stderr: `RUST_LOG` (default `tower_dashscope=info,axum_gateway=info`).
//! Ctrl-C (or SIGTERM) stops accepting and drains the requests in flight.

use std::process::ExitCode;

#[path = "axum_gateway/mod.rs"]
mod gateway;
#[path = "support/logging.rs"]
mod logging;

use gateway::app::{Gateway, resolve_upstreams};
use gateway::config::{self, Config, Target};

/// The documented example configuration, used when no file is given.
const EXAMPLE: &str = include_str!("axum_gateway/gateway.toml");

const USAGE: &str = "usage: axum_gateway [--check-config] [--listen ADDR] [CONFIG.toml]

  CONFIG.toml     the configuration (default: examples/axum_gateway/gateway.toml, built in;
                  without DASHSCOPE_API_KEY it runs against the simulator)
  --check-config  check the configuration and exit: 0 if it is valid, 2 if not
  --listen ADDR   listen there instead of the file's server.listen (127.0.0.1:0: any free port)
  --help          this text

The format: docs/gateway.md.";

#[tokio::main]
async fn main() -> ExitCode {
    // Logs on stderr (stdout has the address), coloured only on a terminal.
    logging::init_or("tower_dashscope=info,axum_gateway=info");

    let mut check_only = false;
    let mut path = None;
    let mut listen = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check-config" => check_only = true,
            "--listen" => match args.next().map(|a| a.parse::<std::net::SocketAddr>()) {
                Some(Ok(addr)) => listen = Some(addr),
                _ => {
                    eprintln!(
                        "error: --listen takes an address and port, e.g. 127.0.0.1:8080\n\n{USAGE}"
                    );
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            flag if flag.starts_with('-') => {
                eprintln!("error: unknown flag {flag}\n\n{USAGE}");
                return ExitCode::from(2);
            }
            file if path.is_none() => path = Some(file.to_owned()),
            extra => {
                eprintln!("error: one configuration file only (got a second: {extra})\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }

    let (text, name) = match &path {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (text, path.clone()),
            Err(err) => {
                eprintln!("error: cannot read the configuration file {path}: {err}");
                return ExitCode::from(2);
            }
        },
        None => (
            EXAMPLE.to_owned(),
            "the built-in example configuration".to_owned(),
        ),
    };
    let mut config = match config::parse(&text, &name) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let env = |name: &str| std::env::var(name).ok();

    if check_only {
        println!(
            "{name}: valid; {} model(s), {} alias(es), {} upstream(s), listening on {}",
            config.models.len(),
            config.aliases.len(),
            config.upstreams.len(),
            config.listen
        );
        for upstream in &config.upstreams {
            if let Some(var) = &upstream.api_key_env {
                if env(var).is_none_or(|k| k.trim().is_empty()) {
                    println!("note: {var} is not set; the gateway needs it to start");
                }
            }
        }
        return ExitCode::SUCCESS;
    }

    // No file and no key: the same models, from the simulator.
    if path.is_none() && env("DASHSCOPE_API_KEY").is_none_or(|k| k.trim().is_empty()) {
        eprintln!(
            "note: no configuration file and no DASHSCOPE_API_KEY: serving the example's models \
             from the DashScope simulator"
        );
        config.upstreams.truncate(1);
        config.upstreams[0].target = Target::Simulator;
        config.upstreams[0].api_key_env = None;
    }
    run(config, env).await
}

async fn run(config: Config, env: impl Fn(&str) -> Option<String>) -> ExitCode {
    let upstreams = match resolve_upstreams(&config, env).await {
        Ok(upstreams) => upstreams,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let listen = config.listen;
    let gateway = match Gateway::new(config, &upstreams.resolved) {
        Ok(gateway) => gateway,
        Err(err) => {
            eprintln!("error: the upstreams cannot be used: {err}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "error: cannot listen on {listen}: {err}; choose another `server.listen` in the \
                 configuration"
            );
            return ExitCode::from(2);
        }
    };
    let addr = listener.local_addr().map_or(listen, |a| a);
    for (region, _) in &upstreams.resolved {
        println!("upstream: {region}");
    }
    if let Some((_, server)) = &upstreams.simulator {
        println!("(the DashScope simulator, on {})", server.local_addr());
    }
    println!("listening on http://{addr}/v1  (POST /v1/chat/completions, GET /v1/models)");
    let shutdown = async {
        stop_signal().await;
        eprintln!("shutting down: no new requests; waiting for the ones in flight");
    };
    match gateway.serve(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: the server stopped: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C, or (on Unix) SIGTERM as a container runtime sends it.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
