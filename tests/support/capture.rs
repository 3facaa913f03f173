//! A `tracing` subscriber for tests that keeps every span and event, at every level (TRACE
//! included), with its fields as text: to assert what the layers log, and to search all of it
//! for what must never be logged (API keys).
//!
//! ```ignore
//! #[path = "support/capture.rs"]
//! mod capture;
//!
//! let (logs, _guard) = capture::Capture::start();
//! // ... drive a service on this thread (a current-thread runtime) ...
//! let retry = logs.event("retrying after a delay").unwrap();
//! assert_eq!(retry.field("attempt"), Some("1"));
//! capture::assert_no_secret(&logs.text(), &["sk-secret-"]);
//! ```
//!
//! The subscriber is the thread's default while the guard lives: drive the code under test on
//! the same thread (`#[tokio::test]`'s current-thread runtime does).

#![allow(dead_code)]

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record as Values};
use tracing::subscriber::{DefaultGuard, Interest};
use tracing::{Event, Level, Metadata, Subscriber};

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A span was created.
    Span,
    /// Fields were recorded on an existing span.
    SpanRecord,
    /// An event.
    Event,
}

/// One captured span or event.
#[derive(Clone, Debug)]
pub struct Record {
    /// Span, fields recorded later on a span, or event.
    pub kind: Kind,
    /// Its level.
    pub level: Level,
    /// Its target (the module path for the crate's own).
    pub target: String,
    /// The span's name, or the event's message.
    pub name: String,
    /// Its fields other than `message`, in order, values as text (`Debug` except strings).
    pub fields: Vec<(String, String)>,
    /// For events: the names of the spans it happened in, outermost first.
    pub spans: Vec<String>,
}

impl Record {
    /// The value of field `name`, if the record has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    /// The value of field `name`, or a panic naming what the record does have.
    #[track_caller]
    pub fn expect(&self, name: &str) -> &str {
        self.field(name)
            .unwrap_or_else(|| panic!("no field `{name}` in {self}"))
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} {}: {}",
            self.kind, self.level, self.target, self.name
        )?;
        for (name, value) in &self.fields {
            write!(f, " {name}={value}")?;
        }
        if !self.spans.is_empty() {
            write!(f, " in {}", self.spans.join(">"))?;
        }
        Ok(())
    }
}

/// The captured records; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Capture {
    records: Arc<Mutex<Vec<Record>>>,
}

impl Capture {
    /// Captures everything logged on this thread at every level until the guard is dropped.
    pub fn start() -> (Capture, DefaultGuard) {
        Capture::start_at(Level::TRACE)
    }

    /// Captures what is logged on this thread at `max` and above (`Level::INFO`: INFO, WARN
    /// and ERROR) until the guard is dropped; the rest is disabled, as in an application
    /// logging at that level.
    pub fn start_at(max: Level) -> (Capture, DefaultGuard) {
        let capture = Capture::default();
        let subscriber = CaptureSubscriber {
            max,
            records: Arc::clone(&capture.records),
            spans: Mutex::default(),
            stack: Mutex::default(),
            next_id: AtomicU64::new(1),
        };
        ask_every_dispatcher();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// The events whose message contains `message`.
    pub fn events(&self, message: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.kind == Kind::Event && r.name.contains(message))
            .collect()
    }

    /// The first event whose message contains `message`.
    pub fn event(&self, message: &str) -> Option<Record> {
        self.events(message).into_iter().next()
    }

    /// The first event whose message contains `message`, or a panic listing all events.
    #[track_caller]
    pub fn expect_event(&self, message: &str) -> Record {
        self.event(message)
            .unwrap_or_else(|| panic!("no event `{message}` in:\n{}", self.text()))
    }

    /// Everything captured, one record a line.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for record in self.records.lock().unwrap().iter() {
            let _ = writeln!(text, "{record}");
        }
        text
    }

    /// Forgets what was captured so far.
    pub fn clear(&self) {
        self.records.lock().unwrap().clear();
    }
}

/// Panics, showing the line, if `text` contains any of `secrets`.
#[track_caller]
pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    for secret in secrets {
        if let Some(at) = text.find(secret) {
            let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!(
                "secret `{secret}` leaked in:\n{}\n(captured {} bytes)",
                &text[start..end],
                text.len()
            );
        }
    }
}

/// `tracing` decides once per callsite, when it is first hit, whether the callsite can ever be
/// of interest. While one dispatcher is registered, it asks the default of the thread that hits
/// it: a sibling test's thread, with no subscriber, answers `never` for good, and a capture on
/// another thread then misses that callsite's events. A second dispatcher, registered for the
/// life of the process, makes `tracing` ask every registered dispatcher instead; this one
/// answers `sometimes`, so each event asks the subscriber of its own thread.
fn ask_every_dispatcher() {
    static ANCHOR: OnceLock<tracing::Dispatch> = OnceLock::new();
    ANCHOR.get_or_init(|| tracing::Dispatch::new(Anchor));
}

/// Interested in every callsite, enabled for none.
struct Anchor;

impl Subscriber for Anchor {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        false
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::OFF)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Values<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

struct CaptureSubscriber {
    max: Level,
    records: Arc<Mutex<Vec<Record>>>,
    /// Span names by id.
    spans: Mutex<Vec<(u64, String)>>,
    /// The spans entered, innermost last.
    stack: Mutex<Vec<u64>>,
    next_id: AtomicU64,
}

impl CaptureSubscriber {
    fn name_of(&self, id: u64) -> String {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, name)| name.clone())
            .unwrap_or_default()
    }

    fn push(&self, record: Record) {
        self.records.lock().unwrap().push(record);
    }
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.fields
                .push((field.name().to_owned(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(value);
        } else {
            self.fields.push((field.name().to_owned(), value));
        }
    }
}

impl Subscriber for CaptureSubscriber {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        *meta.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max))
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let meta = attrs.metadata();
        self.spans
            .lock()
            .unwrap()
            .push((id, meta.name().to_owned()));
        self.push(Record {
            kind: Kind::Span,
            level: *meta.level(),
            target: meta.target().to_owned(),
            name: meta.name().to_owned(),
            fields: fields.fields,
            spans: Vec::new(),
        });
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Values<'_>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        self.push(Record {
            kind: Kind::SpanRecord,
            level: Level::TRACE,
            target: String::new(),
            name: self.name_of(span.into_u64()),
            fields: fields.fields,
            spans: Vec::new(),
        });
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let stack: Vec<u64> = self.stack.lock().unwrap().clone();
        self.push(Record {
            kind: Kind::Event,
            level: *meta.level(),
            target: meta.target().to_owned(),
            name: fields.message.unwrap_or_default(),
            fields: fields.fields,
            spans: stack.into_iter().map(|id| self.name_of(id)).collect(),
        });
    }

    fn enter(&self, span: &Id) {
        self.stack.lock().unwrap().push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut stack = self.stack.lock().unwrap();
        if let Some(at) = stack.iter().rposition(|id| *id == span.into_u64()) {
            stack.remove(at);
        }
    }
}
