//! The request view and the model rewrite: `ChatRequest::parse` never panics, and
//! `rewrite_model` changes the model and nothing else.
//!
//! Input: byte 0 picks the API; the rest is the body, then optionally `\0` and the new model.
#![no_main]

use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_dashscope::Api;
use tower_dashscope::fallback::rewrite_model;
use tower_dashscope::request::ChatRequest;

const APIS: [Api; 3] = [Api::OpenAiCompatible, Api::Native, Api::Anthropic];

fuzz_target!(|data: &[u8]| {
    let [a, rest @ ..] = data else { return };
    let api = APIS[usize::from(*a) % APIS.len()];
    let (body, model) = match rest.iter().rposition(|&b| b == 0) {
        Some(i) => (
            &rest[..i],
            String::from_utf8_lossy(&rest[i + 1..]).into_owned(),
        ),
        None => (rest, "qwen-fallback".to_owned()),
    };
    let headers = HeaderMap::new();
    let before = ChatRequest::parse(api, &headers, body);
    if let Some(chat) = &before {
        let _ = format!("{chat:?}");
    }
    let Some(rewritten) = rewrite_model(body, &model) else {
        // No top-level string model: the view has none either.
        if let Some(chat) = &before {
            assert!(
                chat.model().is_none(),
                "the view found a model the rewrite did not"
            );
        }
        return;
    };
    // The view of the rewritten body is the old view with the new model.
    let after = ChatRequest::parse(api, &headers, &rewritten);
    match (&before, &after) {
        (Some(before), Some(after)) => {
            if model.len() <= 256 {
                assert_eq!(
                    &before.with_model(&model),
                    after,
                    "the rewrite changed more than the model"
                );
            } else {
                assert_eq!(after.model(), None);
            }
        }
        // The rewrite scans, it does not validate: a body that is broken only inside its old
        // model string (invalid UTF-8, a bad escape) is mended by it.
        (None, _) => {}
        (Some(_), None) => panic!("the rewrite broke a body that parsed: {before:?}"),
    }
    // As JSON: the same document but for its model.
    if let (Ok(mut old), Ok(new)) = (
        serde_json::from_slice::<Value>(body),
        serde_json::from_slice::<Value>(&rewritten),
    ) {
        old["model"] = Value::String(model.clone());
        assert_eq!(old, new, "the rewrite changed more than the model");
    }
});
