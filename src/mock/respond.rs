//! Requests and answers in DashScope's three API shapes.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{Value, json};

use super::body::MockBody;
use super::failure::{Failure, native_error_frame, response_builder};
use super::fault::MidStreamError;

use crate::api::Api;
use crate::request::ChatRequest;

/// The simulator's routing table: the exact chat paths it serves, and the API each speaks.
/// Anything else (a wrong base path, `/v1/v1/messages`, embeddings) is answered a bare 404, as
/// DashScope's gateway does.
pub(crate) fn route(path: &str) -> Option<Api> {
    match path {
        "/compatible-mode/v1/chat/completions" | "/v1/chat/completions" => {
            Some(Api::OpenAiCompatible)
        }
        "/api/v1/services/aigc/text-generation/generation"
        | "/api/v1/services/aigc/multimodal-generation/generation" => Some(Api::Native),
        "/apps/anthropic/v1/messages" => Some(Api::Anthropic),
        _ => None,
    }
}

/// Output tokens when the request sets no `max_tokens`.
pub(crate) const DEFAULT_OUTPUT_TOKENS: u32 = 16;

/// The simulator's input token count: one per four characters of message text
/// ([`ChatRequest::input_chars`]), rounded up, and at least one.
pub(crate) fn input_tokens(chat: &ChatRequest) -> u32 {
    u32::try_from(chat.input_chars().div_ceil(4))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The most output tokens an answer to `chat` may have: its `max_tokens`, or
/// [`DEFAULT_OUTPUT_TOKENS`] (at most the model's `max_output`) when it sets none.
pub(crate) fn output_limit(chat: &ChatRequest, max_output: u32) -> u32 {
    chat.max_tokens()
        .unwrap_or(DEFAULT_OUTPUT_TOKENS.min(max_output))
}

/// The words the simulated model says, one token each.
const WORDS: [&str; 8] = [
    "Qwen",
    " answers",
    " your",
    " question",
    " with",
    " care",
    " and",
    " detail.",
];

/// Token `i` of an answer: the sentence over and over, a space between repeats.
fn word(i: usize) -> &'static str {
    match i % WORDS.len() {
        0 if i > 0 => " Qwen",
        n => WORDS[n],
    }
}

fn text_of(tokens: u32) -> String {
    (0..tokens as usize).map(word).collect()
}

/// How an admitted answer is made: its length and pace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) output_tokens: u32,
    /// Time to the first token.
    pub(crate) ttft: Duration,
    /// Time between tokens.
    pub(crate) per_token: Duration,
    /// How a stream ends.
    pub(crate) ending: Ending,
}

/// How a streamed answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// With its final event(s).
    Complete,
    /// After this many tokens, with no final event.
    Cut(u32),
    /// After this many tokens, with an error event.
    Error(u32, MidStreamError),
    /// After this many tokens, silent and open for ever.
    Stall(u32),
    /// Without a byte, for ever (answers that do not stream too).
    Silent,
}

impl Ending {
    /// Tokens sent before the end, of `output`.
    pub(crate) fn tokens(self, output: u32) -> u32 {
        match self {
            Ending::Complete => output,
            Ending::Cut(n) | Ending::Error(n, _) | Ending::Stall(n) => n.min(output),
            Ending::Silent => 0,
        }
    }
}

impl Pace {
    /// How long a non-streaming answer takes to generate.
    pub(crate) fn generation(&self) -> Duration {
        self.ttft
            .saturating_add(self.per_token.saturating_mul(self.output_tokens))
    }
}

/// A successful answer.
pub(crate) fn success(
    api: Api,
    chat: &ChatRequest,
    model: &str,
    request_id: &str,
    pace: Pace,
) -> Response<MockBody> {
    let input = input_tokens(chat);
    let output = pace.output_tokens;
    // Usage sums in u64: two u32 counts can overflow a u32.
    let total = u64::from(input) + u64::from(output);
    let builder = response_builder(api, request_id);
    if pace.ending == Ending::Silent {
        let content_type = if chat.stream() {
            "text/event-stream;charset=UTF-8"
        } else {
            "application/json"
        };
        return builder
            .header(http::header::CONTENT_TYPE, content_type)
            .body(MockBody::silent())
            .unwrap_or_else(|_| Response::new(MockBody::full(Bytes::new())));
    }
    if !chat.stream() {
        let text = text_of(output);
        let body = match api {
            Api::Native if chat.result_format_text() => json!({
                "output": {"text": text, "finish_reason": "stop"},
                "usage": {"input_tokens": input, "output_tokens": output, "total_tokens": total},
                "request_id": request_id,
            }),
            Api::Native => json!({
                "output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": text}}]},
                "usage": {"input_tokens": input, "output_tokens": output, "total_tokens": total},
                "request_id": request_id,
            }),
            Api::OpenAiCompatible => json!({
                "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop", "index": 0, "logprobs": null}],
                "object": "chat.completion",
                "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": total},
                "created": 1_763_875_200,
                "system_fingerprint": null,
                "model": model,
                "id": format!("chatcmpl-{request_id}"),
            }),
            Api::Anthropic => json!({
                "id": format!("msg_{request_id}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": output},
            }),
        };
        return builder
            .header("content-type", "application/json")
            .body(MockBody::full(body.to_string()))
            .unwrap_or_else(|_| Response::new(MockBody::full(Bytes::new())));
    }

    let script = Script {
        api,
        model: model.to_owned(),
        request_id: request_id.to_owned(),
        input,
        output,
        sent: pace.ending.tokens(output),
        ending: pace.ending,
        result_format_text: chat.result_format_text(),
        include_usage: chat.include_usage(),
        incremental: chat.incremental_output(),
        ttft: pace.ttft,
        per_token: pace.per_token,
        next: 0,
        text: String::new(),
        ended: false,
        stalled: false,
    };
    builder
        .header("content-type", "text/event-stream;charset=UTF-8")
        .body(MockBody::stream(script))
        .unwrap_or_else(|_| Response::new(MockBody::full(Bytes::new())))
}

/// The events of one streamed answer, made one at a time as the body is read: memory stays
/// proportional to the answer, not to the square of it (native frames repeat the text so far).
#[derive(Debug)]
pub(crate) struct Script {
    api: Api,
    model: String,
    request_id: String,
    input: u32,
    output: u32,
    /// Tokens sent before the stream ends: `output`, or fewer when the stream is cut.
    sent: u32,
    ending: Ending,
    /// Native `parameters.result_format: "text"`: `output.text` instead of `output.choices`.
    result_format_text: bool,
    include_usage: bool,
    /// Native `parameters.incremental_output`: each event carries only its new text.
    incremental: bool,
    ttft: Duration,
    per_token: Duration,
    /// The next token to send.
    next: u32,
    /// The answer so far (native events without `incremental_output` repeat it).
    text: String,
    ended: bool,
    /// Sent all it will, and stays open, silent.
    stalled: bool,
}

/// One server-sent event with an `event:` line, as the Anthropic endpoint frames them.
fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl Script {
    /// The next frame and how long to wait before sending it; `None` at the end.
    pub(crate) fn next_frame(&mut self) -> Option<(Duration, Bytes)> {
        if self.ended {
            return None;
        }
        if self.next >= self.sent {
            self.ended = true;
            let end = match self.ending {
                Ending::Complete => self.tail(),
                Ending::Cut(_) => None,
                Ending::Error(_, error) => Some(self.error_frame(error)),
                Ending::Stall(_) | Ending::Silent => {
                    self.stalled = true;
                    None
                }
            };
            return end.map(|end| (Duration::ZERO, Bytes::from(end)));
        }
        let i = self.next;
        self.next += 1;
        let word = word(i as usize);
        let delay = if i == 0 { self.ttft } else { self.per_token };
        let id = &self.request_id;
        let frame = match self.api {
            Api::Native => {
                let last = i + 1 == self.output;
                if self.incremental {
                    self.text.clear();
                }
                self.text.push_str(word);
                let finish_reason = if last { "stop" } else { "null" };
                let output = if self.result_format_text {
                    json!({"text": self.text, "finish_reason": finish_reason})
                } else {
                    json!({"choices": [{"message": {"content": self.text, "role": "assistant"}, "finish_reason": finish_reason}]})
                };
                format!(
                    "id:{}\nevent:result\n:HTTP_STATUS/200\ndata:{}\n\n",
                    i + 1,
                    json!({
                        "output": output,
                        "usage": {"total_tokens": u64::from(self.input) + u64::from(i) + 1, "output_tokens": i + 1, "input_tokens": self.input},
                        "request_id": id,
                    })
                )
            }
            Api::OpenAiCompatible => format!(
                "data: {}\n\n",
                json!({
                    "choices": [{"delta": {"content": word}, "finish_reason": null, "index": 0, "logprobs": null}],
                    "object": "chat.completion.chunk",
                    "usage": null,
                    "created": 1_763_875_200,
                    "model": self.model,
                    "id": format!("chatcmpl-{id}"),
                })
            ),
            Api::Anthropic => {
                let mut frame = String::new();
                if i == 0 {
                    frame.push_str(&self.anthropic_start());
                }
                frame.push_str(&event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}),
                ));
                frame
            }
        };
        Some((delay, Bytes::from(frame)))
    }

    /// Whether the stream has sent all it will and stays open, silent.
    pub(crate) fn stalled(&self) -> bool {
        self.stalled
    }

    /// An error after tokens started, in the shape of the API.
    fn error_frame(&self, error: MidStreamError) -> String {
        let failure = match error {
            MidStreamError::DataInspection => Failure::output_inspection_failed(),
            MidStreamError::RateQuota => Failure::rate_quota(),
            _ => Failure::internal_error(),
        };
        let id = &self.request_id;
        match self.api {
            Api::Native => {
                native_error_frame(self.sent + 1, failure.status, &failure.native_json(id))
            }
            Api::Anthropic => event("error", &failure.anthropic_json(id)),
            _ => {
                let chunk = json!({
                    "error": {
                        "message": failure.message,
                        "type": failure.compat_type,
                        "code": failure.compat_code,
                    },
                    "id": format!("chatcmpl-{id}"),
                });
                format!("data: {chunk}\n\n")
            }
        }
    }

    fn anthropic_start(&self) -> String {
        let start = json!({
            "type": "message_start",
            "message": {
                "id": format!("msg_{}", self.request_id),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": self.input, "output_tokens": 0},
            },
        });
        let block = json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}});
        event("message_start", &start) + &event("content_block_start", &block)
    }

    /// What follows the last token of a complete stream; nothing after a cut one (and nothing
    /// for native streams, whose last event carries the final `finish_reason`).
    fn tail(&self) -> Option<String> {
        if self.sent < self.output {
            return None;
        }
        let (input, output) = (self.input, self.output);
        match self.api {
            Api::Native => None,
            Api::OpenAiCompatible => {
                let id = format!("chatcmpl-{}", self.request_id);
                let stop = json!({"choices": [{"finish_reason": "stop", "delta": {"content": ""}, "index": 0, "logprobs": null}], "object": "chat.completion.chunk", "usage": null, "created": 1_763_875_200, "model": self.model, "id": id});
                let mut tail = format!("data: {stop}\n\n");
                if self.include_usage {
                    let usage = json!({"choices": [], "object": "chat.completion.chunk", "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": u64::from(input) + u64::from(output)}, "created": 1_763_875_200, "model": self.model, "id": id});
                    tail.push_str(&format!("data: {usage}\n\n"));
                }
                tail.push_str("data: [DONE]\n\n");
                Some(tail)
            }
            Api::Anthropic => {
                let mut tail = event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": 0}),
                );
                tail.push_str(&event(
                    "message_delta",
                    &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}}),
                ));
                tail.push_str(&event("message_stop", &json!({"type": "message_stop"})));
                Some(tail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_exact() {
        assert_eq!(route("/v1/chat/completions"), Some(Api::OpenAiCompatible));
        assert_eq!(route("/apps/anthropic/v1/messages"), Some(Api::Anthropic));
        assert_eq!(route("/v1/v1/messages"), None);
        assert_eq!(route("/compatible-mode/v1/chat/completions/"), None);
    }

    #[test]
    fn token_counts() {
        let parse = |api, body: &str| {
            ChatRequest::parse(api, &http::HeaderMap::new(), body.as_bytes()).unwrap()
        };
        let compat = parse(
            Api::OpenAiCompatible,
            r#"{"model":"qwen-plus","messages":[{"role":"user","content":"123456789"}],"max_tokens":5}"#,
        );
        assert_eq!(
            (input_tokens(&compat), output_limit(&compat, 16_384)),
            (3, 5)
        );
        let native = parse(
            Api::Native,
            r#"{"model":"m","input":{"messages":[{"role":"user","content":"通义千问"}]}}"#,
        );
        assert_eq!(input_tokens(&native), 1, "characters, not bytes");
        assert_eq!(output_limit(&native, 16_384), DEFAULT_OUTPUT_TOKENS);
        assert_eq!(output_limit(&native, 2), 2);
        let empty = parse(Api::Anthropic, r#"{"model":"m","messages":[]}"#);
        assert_eq!(input_tokens(&empty), 1, "at least one");
    }
}
