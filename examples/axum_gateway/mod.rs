//! The gateway's modules: `config` (the TOML file), `stack` (the layers and the HTTP client),
//! `app` (the axum routes) and `sse` (the stream relay). `examples/axum_gateway.rs` runs them;
//! `tests/gateway.rs` includes them to start the gateway in process.

pub mod app;
pub mod config;
pub mod sse;
pub mod stack;
