//! The examples' `tracing` setup: the layers' decisions (retries, fallbacks, budget waits,
//! failovers) printed to stderr as they happen.
#![allow(dead_code)]

use tracing_subscriber::EnvFilter;

/// Prints the layers' events to stderr: `RUST_LOG` if set, else `tower_dashscope=info` (what
/// the layers decide; `RUST_LOG=tower_dashscope=debug` adds every classified failure, routed
/// request and budget settle). The crate docs' `telemetry` module lists the events and fields.
pub fn init() {
    init_or("tower_dashscope=info");
}

/// Prints events to stderr, coloured only on a terminal: `RUST_LOG` if set, else `default`.
pub fn init_or(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
