//! Requests and answers in DashScope's three API shapes.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::body::MockBody;

/// Which API a path belongs to; it decides the shape of every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `/compatible-mode/v1/chat/completions` (and Coding Plan's `/v1/chat/completions`).
    Compatible,
    /// `/api/v1/services/aigc/{text,multimodal}-generation/generation`.
    Native,
    /// `/apps/anthropic/v1/messages`.
    Anthropic,
}

impl Api {
    pub(crate) fn from_path(path: &str) -> Option<Api> {
        match path {
            "/compatible-mode/v1/chat/completions" | "/v1/chat/completions" => {
                Some(Api::Compatible)
            }
            "/api/v1/services/aigc/text-generation/generation"
            | "/api/v1/services/aigc/multimodal-generation/generation" => Some(Api::Native),
            "/apps/anthropic/v1/messages" => Some(Api::Anthropic),
            _ => None,
        }
    }
}

/// What the simulator needs from a chat request.
#[derive(Debug)]
pub(crate) struct Chat {
    pub(crate) model: Option<String>,
    pub(crate) input_text: String,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// Native `parameters.incremental_output`.
    pub(crate) incremental: bool,
}

/// Output tokens when the request sets no `max_tokens`.
pub(crate) const DEFAULT_OUTPUT_TOKENS: u32 = 16;

impl Chat {
    /// Reads the request body of `api`. `None` when it is not a JSON object.
    pub(crate) fn parse(api: Api, body: &[u8], sse_header: bool) -> Option<Chat> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let object = value.as_object()?;
        let model = object
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut input_text = String::new();
        let messages = match api {
            Api::Native => object
                .get("input")
                .and_then(|i| i.get("messages").or(i.get("prompt"))),
            Api::Compatible | Api::Anthropic => object.get("messages"),
        };
        collect_text(messages.unwrap_or(&Value::Null), &mut input_text);
        if api == Api::Anthropic {
            collect_text(
                object.get("system").unwrap_or(&Value::Null),
                &mut input_text,
            );
        }
        let parameters = match api {
            Api::Native => object.get("parameters"),
            _ => Some(&value),
        };
        // Present but not a positive integer (-1, 1.5, "10"): read as 0, out of range, so it is
        // answered 400 like DashScope does rather than silently ignored.
        let max_tokens = match parameters.and_then(|p| p.get("max_tokens")) {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32),
            ),
        };
        let stream = match api {
            Api::Native => sse_header,
            _ => object
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let include_usage = object
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let incremental = api == Api::Native
            && parameters
                .and_then(|p| p.get("incremental_output"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
        Some(Chat {
            model,
            input_text,
            max_tokens,
            stream,
            include_usage,
            incremental,
        })
    }

    /// Input tokens: one per four UTF-8 characters of message text, rounded up (at least one).
    pub(crate) fn input_tokens(&self) -> u32 {
        count_tokens(&self.input_text).max(1)
    }

    /// Output tokens: `max_tokens`, or [`DEFAULT_OUTPUT_TOKENS`] (at most the model's
    /// `max_output`) when the request sets none.
    pub(crate) fn output_tokens(&self, max_output: u32) -> u32 {
        self.max_tokens
            .unwrap_or(DEFAULT_OUTPUT_TOKENS.min(max_output))
    }
}

/// The simulator's token count: `ceil(chars / 4)`.
pub(crate) fn count_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Appends every string found in `value` (message contents, content parts) to `out`.
fn collect_text(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Value::Array(items) => items.iter().for_each(|v| collect_text(v, out)),
        Value::Object(map) => {
            for key in ["content", "text"] {
                if let Some(v) = map.get(key) {
                    collect_text(v, out);
                }
            }
        }
        _ => {}
    }
}

/// One error answer, in the shape of `api`.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) native_code: &'static str,
    pub(crate) compat_code: &'static str,
    /// The OpenAI-compatible `error.type`: the code, except where DashScope sends another.
    pub(crate) compat_type: &'static str,
    pub(crate) anthropic_type: &'static str,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(
        status: u16,
        native_code: &'static str,
        compat_code: &'static str,
        anthropic_type: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Failure {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            native_code,
            compat_code,
            compat_type: compat_code,
            anthropic_type,
            message: message.into(),
        }
    }

    /// 400 `InvalidParameter` / `invalid_parameter_error`: bad input.
    pub(crate) fn invalid_parameter(message: impl Into<String>) -> Self {
        Failure {
            compat_type: "invalid_request_error",
            ..Failure::new(
                400,
                "InvalidParameter",
                "invalid_parameter_error",
                "invalid_request_error",
                message,
            )
        }
    }

    fn json(&self, api: Api, request_id: &str) -> Value {
        match api {
            Api::Native => json!({
                "code": self.native_code,
                "message": self.message,
                "request_id": request_id,
            }),
            Api::Compatible => json!({
                "error": {
                    "message": self.message,
                    "type": self.compat_type,
                    "param": null,
                    "code": self.compat_code,
                },
                "id": format!("chatcmpl-{request_id}"),
                "request_id": request_id,
            }),
            Api::Anthropic => json!({
                "type": "error",
                "error": {
                    "type": self.anthropic_type,
                    "message": if self.message.starts_with('<') {
                        self.message.clone()
                    } else {
                        format!("<{}> {}: {}", self.status.as_u16(), self.native_code, self.message)
                    },
                },
                "request_id": request_id,
            }),
        }
    }

    /// The answer: a JSON error body, or for a native streaming request an HTTP 200 event
    /// stream with `event:error` and `:HTTP_STATUS/NNN`, as DashScope sends it.
    pub(crate) fn respond(
        &self,
        api: Api,
        stream: bool,
        request_id: &str,
        retry_after: Option<Duration>,
    ) -> Response<MockBody> {
        let body = self.json(api, request_id);
        let mut builder = Response::builder().header("x-request-id", request_id);
        if let Some(delay) = retry_after.filter(|_| self.status == StatusCode::TOO_MANY_REQUESTS) {
            builder = builder.header("retry-after", format!("{:.3}", delay.as_secs_f64()));
        }
        let response = if api == Api::Native && stream {
            let frame = format!(
                "id:1\nevent:error\n:HTTP_STATUS/{}\ndata:{}\n\n",
                self.status.as_u16(),
                body
            );
            builder
                .status(StatusCode::OK)
                .header("content-type", "text/event-stream;charset=UTF-8")
                .header("x-dashscope-finished", "true")
                .body(MockBody::full(frame))
        } else {
            builder
                .status(self.status)
                .header("content-type", "application/json")
                .body(MockBody::full(body.to_string()))
        };
        response.unwrap_or_else(|_| Response::new(MockBody::full(Bytes::new())))
    }
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
    /// Streams stop after this many tokens, with no final event.
    pub(crate) cut_after: Option<u32>,
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
    chat: &Chat,
    model: &str,
    request_id: &str,
    pace: Pace,
) -> Response<MockBody> {
    let input = chat.input_tokens();
    let output = pace.output_tokens;
    // Usage sums in u64: two u32 counts can overflow a u32.
    let total = u64::from(input) + u64::from(output);
    let builder = Response::builder().header("x-request-id", request_id);
    if !chat.stream {
        let text = text_of(output);
        let body = match api {
            Api::Native => json!({
                "output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": text}}]},
                "usage": {"input_tokens": input, "output_tokens": output, "total_tokens": total},
                "request_id": request_id,
            }),
            Api::Compatible => json!({
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
        sent: pace.cut_after.map_or(output, |c| c.min(output)),
        include_usage: chat.include_usage,
        incremental: chat.incremental,
        ttft: pace.ttft,
        per_token: pace.per_token,
        next: 0,
        text: String::new(),
        ended: false,
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
            return self.tail().map(|tail| (Duration::ZERO, Bytes::from(tail)));
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
                format!(
                    "id:{}\nevent:result\n:HTTP_STATUS/200\ndata:{}\n\n",
                    i + 1,
                    json!({
                        "output": {"choices": [{"message": {"content": self.text, "role": "assistant"}, "finish_reason": if last { "stop" } else { "null" }}]},
                        "usage": {"total_tokens": u64::from(self.input) + u64::from(i) + 1, "output_tokens": i + 1, "input_tokens": self.input},
                        "request_id": id,
                    })
                )
            }
            Api::Compatible => format!(
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
            Api::Compatible => {
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
    fn token_count() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("abcd"), 1);
        assert_eq!(count_tokens("abcde"), 2);
        assert_eq!(count_tokens("通义千问"), 1, "characters, not bytes");
    }

    #[test]
    fn parses_each_shape() {
        let compat = br#"{"model":"qwen-plus","messages":[{"role":"user","content":"12345678"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}"#;
        let chat = Chat::parse(Api::Compatible, compat, false).unwrap();
        assert_eq!(chat.model.as_deref(), Some("qwen-plus"));
        assert_eq!(
            (
                chat.input_tokens(),
                chat.output_tokens(16_384),
                chat.stream,
                chat.include_usage
            ),
            (3, 5, true, true)
        );
        let native = br#"{"model":"qwen-max","input":{"messages":[{"role":"user","content":[{"text":"abcd"}]}]},"parameters":{"max_tokens":7}}"#;
        let chat = Chat::parse(Api::Native, native, true).unwrap();
        assert_eq!(
            (chat.input_tokens(), chat.output_tokens(16_384), chat.stream),
            (2, 7, true)
        );
        assert!(Chat::parse(Api::Native, b"[1]", false).is_none());
        assert!(Chat::parse(Api::Native, b"nope", false).is_none());
    }
}
