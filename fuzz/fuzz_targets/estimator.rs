//! The token estimator: for any body that parses, at least one token and no more than the
//! body has bytes; never a panic.
//!
//! Input: byte 0 picks the API (and bit 2 the native stream header); the rest is the body.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_dashscope::Api;
use tower_dashscope::budget::{CharEstimator, TokenEstimator};
use tower_dashscope::request::ChatRequest;

const APIS: [Api; 3] = [Api::OpenAiCompatible, Api::Native, Api::Anthropic];

fuzz_target!(|data: &[u8]| {
    let [a, body @ ..] = data else { return };
    let api = APIS[usize::from(*a) % APIS.len()];
    let mut headers = HeaderMap::new();
    if a & 4 == 4 {
        headers.insert("x-dashscope-sse", HeaderValue::from_static("enable"));
    }
    let Some(chat) = ChatRequest::parse(api, &headers, body) else {
        return;
    };
    let bytes = Bytes::copy_from_slice(body);
    let tokens = CharEstimator.input_tokens(&chat, &bytes);
    assert!(tokens >= 1);
    assert!(
        chat.input_chars() <= body.len() as u64,
        "more characters than bytes"
    );
    assert!(
        tokens <= (body.len() as u64).max(1),
        "{tokens} tokens from {} bytes",
        body.len()
    );
    assert_eq!(tokens, chat.estimated_input_tokens());
});
