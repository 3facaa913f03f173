//! The examples' `tracing` setup: the layers' decisions (retries, fallbacks, budget waits,
//! failovers) printed to stderr as they happen.

use tracing_subscriber::EnvFilter;

/// Prints the layers' events to stderr: `RUST_LOG` if set, else `tower_dashscope=info` (what
/// the layers decide; `RUST_LOG=tower_dashscope=debug` adds every classified failure, routed
/// request and budget settle). The crate docs' `telemetry` module lists the events and fields.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("tower_dashscope=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
