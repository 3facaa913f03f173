//! Output lengths: the whole limit by default, or a seeded draw at or below it, with usage and
//! the tokens-per-minute quota counting what was produced.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_dashscope::mock::{MockDashScope, ModelConfig, OutputLength};

fn chat(max_tokens: u32) -> Request<Full<Bytes>> {
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "abcd"}], "max_tokens": max_tokens});
    Request::post("/compatible-mode/v1/chat/completions")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The completion tokens of `n` answers.
async fn lengths(mock: &MockDashScope, n: usize, max_tokens: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let response = mock.clone().oneshot(chat(max_tokens)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let tokens = value["usage"]["completion_tokens"].as_u64().unwrap();
        let content = value["choices"][0]["message"]["content"].as_str().unwrap();
        // One word per token.
        assert_eq!(content.split_inclusive(' ').count() as u64, tokens);
        out.push(tokens);
    }
    out
}

fn uniform(seed: u64) -> MockDashScope {
    MockDashScope::builder()
        .model(
            "m",
            ModelConfig::new().output_length(OutputLength::Uniform { min_fraction: 0.5 }),
        )
        .seed(seed)
        .build()
}

#[tokio::test(start_paused = true)]
async fn seeded_lengths_at_or_below_max_tokens() {
    let mock = uniform(7);
    let drawn = lengths(&mock, 50, 100).await;
    assert!(drawn.iter().all(|n| (50..=100).contains(n)), "{drawn:?}");
    assert!(drawn.iter().any(|&n| n != drawn[0]), "lengths vary");
    // The quota is charged what was produced: 1 input token each, plus the drawn output.
    let tokens = mock.stats().model("m").unwrap().total.tokens;
    assert_eq!(tokens, 50 + drawn.iter().sum::<u64>());
    // Determinism: the same seed draws the same lengths, another seed others.
    assert_eq!(lengths(&uniform(7), 50, 100).await, drawn);
    assert_ne!(lengths(&uniform(8), 50, 100).await, drawn);
    // A limit of one is one.
    assert_eq!(lengths(&uniform(7), 3, 1).await, [1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn by_default_answers_use_their_whole_limit() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .build();
    assert_eq!(lengths(&mock, 3, 37).await, [37, 37, 37]);
    let fixed = MockDashScope::builder()
        .model(
            "m",
            ModelConfig::new().output_length(OutputLength::Uniform { min_fraction: 1.0 }),
        )
        .build();
    assert_eq!(lengths(&fixed, 3, 37).await, [37, 37, 37]);
}
