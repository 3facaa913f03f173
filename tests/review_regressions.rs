//! Regression tests for defects found in review: each fails without its fix.

use std::path::{Path, PathBuf};

/// A `tracing` event in the crate's source: its level, the module it is in, its message and
/// its field names.
#[derive(Debug)]
struct SourceEvent {
    file: String,
    module: String,
    level: String,
    message: String,
    fields: Vec<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of the string literal starting at `chars[*i]` (a `"`), with `\` + newline +
/// indentation removed as Rust does; `*i` is left after the closing quote.
fn literal(chars: &[char], i: &mut usize) -> String {
    let mut text = String::new();
    *i += 1;
    while *i < chars.len() {
        match chars[*i] {
            '\\' if chars.get(*i + 1) == Some(&'\n') => {
                *i += 2;
                while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
                    *i += 1;
                }
            }
            '\\' => {
                text.push(chars[*i + 1]);
                *i += 2;
            }
            '"' => {
                *i += 1;
                return text;
            }
            c => {
                text.push(c);
                *i += 1;
            }
        }
    }
    text
}

/// Every `tracing::{trace,debug,info,warn,error}!` event of the library (the simulator under
/// `src/mock` is not a layer and is left out).
fn source_events() -> Vec<SourceEvent> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut events = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if relative.starts_with("mock/") {
            continue;
        }
        let module = relative
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .replace('/', "::");
        let text = std::fs::read_to_string(&file).unwrap();
        for level in ["trace", "debug", "info", "warn", "error"] {
            let open = format!("tracing::{level}!(");
            for (start, _) in text.match_indices(&open) {
                let chars: Vec<char> = text[start + open.len()..].chars().collect();
                // The macro's arguments split at top-level commas; string literals kept whole.
                let (mut args, mut arg, mut depth, mut i) = (Vec::new(), String::new(), 0, 0);
                let mut literals = Vec::new();
                while i < chars.len() {
                    match chars[i] {
                        '"' => {
                            let lit = literal(&chars, &mut i);
                            arg.push('"');
                            literals.push(lit);
                            continue;
                        }
                        '(' | '[' | '{' => depth += 1,
                        ')' | ']' | '}' if depth == 0 => break,
                        ')' | ']' | '}' => depth -= 1,
                        ',' if depth == 0 => {
                            args.push(std::mem::take(&mut arg));
                            i += 1;
                            continue;
                        }
                        _ => {}
                    }
                    arg.push(chars[i]);
                    i += 1;
                }
                args.push(arg);
                let message = literals.pop().expect("every event has a message");
                let fields = args
                    .iter()
                    .map(|a| a.trim())
                    .filter(|a| !a.is_empty() && !a.starts_with('"'))
                    .filter_map(|a| {
                        let name = a.split('=').next().unwrap().trim();
                        let plain = name.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c)
                        });
                        (plain && !name.is_empty()).then(|| name.to_owned())
                    })
                    .collect();
                events.push(SourceEvent {
                    file: relative.clone(),
                    module: module.clone(),
                    level: level.to_uppercase(),
                    message,
                    fields,
                });
            }
        }
    }
    events
}

/// One row of the `# Events` table: levels, target, message alternatives, fields column.
type Row = (Vec<String>, String, Vec<String>, String);

/// The rows of the `# Events` table of `src/telemetry.rs`: levels, target, message
/// alternatives (`a / b`, a trailing `…` and a parenthetical dropped), fields column.
fn table_rows() -> (String, Vec<Row>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry.rs");
    let text = std::fs::read_to_string(path).unwrap();
    let events = text
        .split("//! # Events")
        .nth(1)
        .expect("an Events section");
    let mut rows = Vec::new();
    for line in events.lines() {
        let Some(row) = line.strip_prefix("//! | ") else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        if cells.len() < 4 || cells[0] == "Level" || cells[0].starts_with("---") {
            continue;
        }
        let levels = cells[0].split(", ").map(str::to_owned).collect();
        let target = cells[1].trim_matches('`').to_owned();
        let message = cells[2];
        let message = match message.find(" (") {
            Some(paren) => &message[..paren],
            None => message,
        };
        let alternatives = message
            .split(" / ")
            .map(|m| m.trim().trim_end_matches('…').trim().to_owned())
            .collect();
        rows.push((levels, target, alternatives, cells[3].to_owned()));
    }
    (text, rows)
}

/// src/telemetry.rs documents every event the layers emit, at its level and under its layer,
/// with field names that exist; and lists no event that is gone.
#[test]
fn the_telemetry_table_lists_every_event_of_the_source() {
    let events = source_events();
    assert!(events.len() > 40, "found only {} events", events.len());
    let (docs, rows) = table_rows();
    let mut missing = Vec::new();
    let mut used = vec![false; rows.len()];
    for event in &events {
        let row = rows.iter().position(|(levels, target, alternatives, _)| {
            levels.contains(&event.level)
                && event.module.starts_with(target.as_str())
                && alternatives.iter().any(|m| {
                    // A message with a format argument (`{MAX_CHAIN}`) matches up to it.
                    let fixed = event.message.split('{').next().unwrap();
                    event.message.contains(m.as_str())
                        || (fixed.len() < event.message.len() && m.starts_with(fixed))
                })
        });
        match row {
            Some(row) => used[row] = true,
            None => missing.push(format!(
                "{} {} {:?} ({})",
                event.level, event.module, event.message, event.file
            )),
        }
        for field in &event.fields {
            if !docs.contains(&format!("`{field}`")) {
                missing.push(format!(
                    "field `{field}` of {:?} ({})",
                    event.message, event.file
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in src/telemetry.rs:\n{}",
        missing.join("\n")
    );
    let stale: Vec<_> = rows
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|(row, _)| format!("{row:?}"))
        .collect();
    assert!(
        stale.is_empty(),
        "rows naming no event:\n{}",
        stale.join("\n")
    );
}

mod probe {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower::{Layer, ServiceExt, service_fn};
    use tower_dashscope::fallback::FallbackProbe;
    use tower_dashscope::{
        Attempts, BoxError, DashScopeError, ErrorClass, FallbackModel, RetryWithJitter, ServedModel,
    };

    /// What the stand-in server does next for a model: a status, or a connection error.
    #[derive(Clone, Copy, Debug)]
    enum Next {
        Status(u16),
        Connection,
    }

    fn chat(model: &str) -> Request<Full<Bytes>> {
        Request::post("/compatible-mode/v1/chat/completions")
            .body(Full::from(format!(
                r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
            )))
            .unwrap()
    }

    /// FallbackModel(a → b) over RetryWithJitter over a server scripted per model (`b` always
    /// answers); returns the client and, per call, (model, carried FallbackProbe).
    #[allow(clippy::type_complexity)]
    fn client(
        script_a: Vec<Next>,
        fallback: FallbackModel,
    ) -> (
        impl tower::Service<
            Request<Full<Bytes>>,
            Response = Response<impl http_body::Body>,
            Error = DashScopeError,
            Future = impl Send,
        > + Clone,
        Arc<Mutex<Vec<(String, bool)>>>,
    ) {
        let script = Arc::new(Mutex::new(VecDeque::from(script_a)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = service_fn(move |req: Request<Full<Bytes>>| {
            let script = script.clone();
            let log = log.clone();
            async move {
                let probe = req.extensions().get::<FallbackProbe>().is_some();
                let body = http_body_util::BodyExt::collect(req.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let model = if body.windows(11).any(|w| w == br#""model":"a""#) {
                    "a"
                } else {
                    "b"
                }
                .to_owned();
                log.lock().unwrap().push((model.clone(), probe));
                let next = if model == "a" {
                    script
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or(Next::Status(200))
                } else {
                    Next::Status(200)
                };
                match next {
                    Next::Connection => Err::<Response<Full<Bytes>>, BoxError>(Box::new(
                        DashScopeError::new(ErrorClass::Connection),
                    )),
                    Next::Status(status) => Ok(Response::builder()
                        .status(status)
                        .body(Full::from(r#"{"choices":[]}"#))
                        .unwrap()),
                }
            }
        });
        let retry = RetryWithJitter::new().max_attempts(2).seed(1);
        let service = fallback.layer(retry.layer(server));
        (service, seen)
    }

    /// A half-open probe that fails in a way the fallback does not switch on (a connection
    /// error) is retried as any other request, not handed back to a fallback that would then
    /// return it to the caller untried.
    #[tokio::test(start_paused = true)]
    async fn a_probe_failure_the_fallback_does_not_switch_on_is_retried() {
        let fallback = FallbackModel::new(["a", "b"]).cooldown(Duration::from_secs(10));
        let (client, seen) = client(
            vec![Next::Status(503), Next::Status(503), Next::Connection],
            fallback,
        );
        // `a` fails twice (retried once), cools down; `b` answers.
        let response = client.clone().oneshot(chat("a")).await.unwrap();
        assert_eq!(response.extensions().get::<ServedModel>().unwrap().0, "b");
        tokio::time::advance(Duration::from_secs(11)).await;
        seen.lock().unwrap().clear();
        // The probe of `a`: a connection error, then an answer on the retry.
        let response = client.oneshot(chat("a")).await.unwrap();
        assert_eq!(response.extensions().get::<ServedModel>().unwrap().0, "a");
        assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.iter().all(|(model, _)| model == "a"), "{seen:?}");
    }

    /// With a switching rule of the caller's, which the retry cannot see, a probe's failure the
    /// rule does not switch on is retried, not lost.
    #[tokio::test(start_paused = true)]
    async fn with_a_custom_switch_rule_a_probe_is_retried_as_usual() {
        // Switches on rate limits only: a 503 is retried on the same model and never switches.
        let fallback = FallbackModel::new(["a", "b"])
            .cooldown(Duration::from_secs(10))
            .switch_if(|err| matches!(err.class(), ErrorClass::RateLimited(_)));
        let (client, _seen) = client(
            vec![Next::Status(429), Next::Status(503), Next::Status(200)],
            fallback,
        );
        // `a` is throttled (handed straight back): it cools down, `b` answers.
        let response = client.clone().oneshot(chat("a")).await.unwrap();
        assert_eq!(response.extensions().get::<ServedModel>().unwrap().0, "b");
        tokio::time::advance(Duration::from_secs(11)).await;
        // The probe of `a`: a 503 the rule does not switch on, then an answer on the retry.
        let response = client.oneshot(chat("a")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.extensions().get::<ServedModel>().unwrap().0, "a");
        assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    }

    /// A probe's failure the fallback does switch on is still handed straight back: the next
    /// model answers without a backoff on the probed one.
    #[tokio::test(start_paused = true)]
    async fn a_probe_failure_the_fallback_switches_on_goes_to_the_next_model_at_once() {
        let fallback = FallbackModel::new(["a", "b"]).cooldown(Duration::from_secs(10));
        let (client, seen) = client(
            vec![Next::Status(503), Next::Status(503), Next::Status(503)],
            fallback,
        );
        client.clone().oneshot(chat("a")).await.unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        seen.lock().unwrap().clear();
        let response = client.oneshot(chat("a")).await.unwrap();
        assert_eq!(response.extensions().get::<ServedModel>().unwrap().0, "b");
        let seen = seen.lock().unwrap().clone();
        // One probe of `a` (marked), then `b` (not marked: it is no probe).
        assert_eq!(
            seen,
            [("a".to_owned(), true), ("b".to_owned(), false)],
            "{seen:?}"
        );
    }
}
