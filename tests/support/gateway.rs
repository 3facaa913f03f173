//! Starts the gateway of `examples/axum_gateway` on loopback in front of a simulator already
//! serving on loopback: shared by tests/gateway.rs and tests/gateway_secrets.rs. Included with
//! `#[path]` by a test that has the example as `mod gateway`.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::gateway::app::{self, Gateway};
use crate::gateway::config::{self, Config};

/// A gateway serving on loopback.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The task serving it, until `shutdown` completes.
    pub task: JoinHandle<std::io::Result<()>>,
}

/// The tests' models, timeouts and retry around `routing` (the `[aliases]` and `[fallbacks]`
/// of a test): qwen-max at 600 RPM and 100,000 TPM, qwen-plus at 1,200 and 200,000; a first byte
/// in 2 s, no stream silent for 500 ms, 20 s in all; two attempts, 10 to 20 ms apart.
pub fn models_etc(routing: &str) -> String {
    format!(
        r#"
[models]
"qwen-max" = {{ rpm = 600, tpm = 100_000 }}
"qwen-plus" = {{ rpm = 1_200, tpm = 200_000 }}
{routing}
[timeouts]
first_byte = "2s"
idle = "500ms"
total = "20s"

[retry]
max_attempts = 2
base_delay = "10ms"
max_delay = "20ms"
"#
    )
}

/// The configuration of a gateway on loopback (bodies up to 4,096 bytes) with one upstream,
/// `upstream`, whose key is in the environment variable `key_var`; `models_etc` is everything
/// but `[server]` and `[[upstreams]]`.
pub fn config(upstream: SocketAddr, key_var: &str, models_etc: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 4096

[[upstreams]]
base_url = "http://{upstream}"
api_key_env = "{key_var}"

{models_etc}
"#
    );
    config::parse(&text, "test.toml").unwrap()
}

/// Serves a gateway of `config` until `shutdown`, `key` standing in the environment variable
/// `key_var`.
pub async fn serve(
    config: Config,
    key_var: &str,
    key: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Served {
    let upstreams =
        app::resolve_upstreams(&config, |name| (name == key_var).then(|| key.to_owned()))
            .await
            .unwrap();
    let gateway = Gateway::new(config, &upstreams.resolved).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(gateway.serve(listener, shutdown));
    Served { addr, task }
}
