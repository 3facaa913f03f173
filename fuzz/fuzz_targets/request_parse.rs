//! `ChatRequest::parse` against the serde_json parse it replaced (`src/request/serde_oracle.rs`,
//! compiled in with `#[path]`): for any body, both refuse it or both read the same model,
//! stream flag, output limit, text counts (as the public view shows them) and options.
//!
//! Input: byte 0 picks the API; the rest is the body (the `estimator` target's layout, so its
//! seeds serve).
#![no_main]

use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use tower_dashscope::Api;
use tower_dashscope::request::ChatRequest;

#[path = "../../src/request/serde_oracle.rs"]
mod serde_oracle;

use serde_oracle::MaxTokens;

const APIS: [Api; 3] = [Api::OpenAiCompatible, Api::Native, Api::Anthropic];

fuzz_target!(|data: &[u8]| {
    let [a, body @ ..] = data else { return };
    let api = APIS[usize::from(*a) % APIS.len()];
    let chat = ChatRequest::parse(api, &HeaderMap::new(), body);
    let seen = serde_oracle::parse(api == Api::Native, body);
    match (chat, seen) {
        (None, None) => {}
        (Some(chat), Some(seen)) => {
            assert_eq!(chat.model(), seen.model.as_deref(), "model");
            assert_eq!(chat.stream(), seen.stream, "stream");
            match seen.max_tokens {
                MaxTokens::Absent => {
                    assert_eq!(chat.max_tokens(), None);
                    assert!(!chat.max_tokens_is_malformed());
                }
                MaxTokens::Set(n) => assert_eq!(chat.max_tokens(), Some(n)),
                MaxTokens::Malformed => assert!(chat.max_tokens_is_malformed()),
            }
            assert_eq!(
                chat.input_chars(),
                seen.ascii.saturating_add(seen.other),
                "characters"
            );
            // The estimate from the oracle's counts, by the formula the docs give.
            let digits = seen.digits.min(seen.ascii);
            let estimate = (seen.ascii - digits)
                .div_ceil(3)
                .saturating_add(digits)
                .saturating_add(seen.other)
                .max(1);
            assert_eq!(chat.estimated_input_tokens(), estimate, "estimate");
            assert_eq!(chat.include_usage(), seen.include_usage, "include_usage");
            assert_eq!(
                chat.incremental_output(),
                seen.incremental_output,
                "incremental_output"
            );
            assert_eq!(
                chat.result_format_text(),
                seen.result_format_text,
                "result_format_text"
            );
        }
        (chat, seen) => panic!("the scanner read {chat:?}, serde_json {seen:?}"),
    }
});
