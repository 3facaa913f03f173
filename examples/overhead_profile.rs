//! The success path of the recommended stack, tower's nearest equivalent or the bare service,
//! in a loop: for a profiler that counts instructions, which gives the same numbers on every
//! run and machine where the criterion timings of `benches/overhead.rs` do not.
//!
//! ```sh
//! cargo build --release --example overhead_profile
//! for n in 1000 6000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/overhead_profile full $n 2>&1 | grep refs
//! done
//! ```
//!
//! Instructions per request are the difference of the two totals over 5,000 (the setup cancels
//! out). `full` is the recommended stack of the bench, `tower` tower's `RateLimit` + `Retry` +
//! a header set by `MapRequest`, `bare` the service alone; each request carries the bench's
//! 2 KiB chat body and its response body is read to its end.

use std::process::ExitCode;
use std::task::{Context, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

#[path = "../benches/support/overhead.rs"]
mod workload;

use workload::{call_once, chat_body, inner, recommended, request, tower_equivalent};

/// `n` ready-call-poll-read cycles; every step must be ready at once.
fn run<S, B>(mut service: S, body: &Bytes, n: usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..n {
        call_once(&mut service, &mut cx, request(body));
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let n = match args.next().map(|n| n.parse::<usize>()) {
        None => 10_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("usage: overhead_profile full|tower|bare [REQUESTS]");
            return ExitCode::from(2);
        }
    };
    // The budget's and the rate limit's clocks are tokio's.
    let runtime = workload::runtime();
    let _guard = runtime.enter();
    let body = chat_body();
    match which.as_str() {
        "full" => run(recommended(inner()), &body, n),
        "tower" => run(tower_equivalent(inner()), &body, n),
        "bare" => run(inner(), &body, n),
        _ => {
            eprintln!("usage: overhead_profile full|tower|bare [REQUESTS]");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
