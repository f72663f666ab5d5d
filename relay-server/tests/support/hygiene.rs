//! Log hygiene, enforced (protocol.md §10, issue 8): every event and span the in-process e2e
//! suite emits, at `trace`, passes through this layer, which fails the run on
//! - a field of the relay's own events (targets `relay_server`, `relay_core`) whose name is
//!   not on [`relay_server::logging::FIELD_ALLOWLIST`], unless its value is a number (counts
//!   and durations in milliseconds may use other names); strings and booleans must be
//!   allowlisted, so `registered=true` is caught;
//! - any token, `User-Agent` string or payload the test clients sent
//!   ([`relay_testkit::secrets`]) appearing anywhere in any event or span, whatever its target;
//! - a raw header map (`HeaderMap {`, `"x-pyrycode-` as a debug key).
//!
//! Violations are collected; every [`super::TestRelay`] checks them when it is dropped, so the
//! test that was running (or the next one to finish) fails with the offending line.

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

static VIOLATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs the layer as this test binary's global subscriber (once).
pub fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(Hygiene { sink: &VIOLATIONS });
        // Err: something else installed one first (then this binary is not checked).
        if tracing::subscriber::set_global_default(subscriber).is_err() {
            println!("note: a tracing subscriber was already installed; log hygiene unchecked");
        }
    });
}

/// Panics with every violation seen so far (and forgets them).
pub fn assert_clean() {
    let seen: Vec<String> =
        std::mem::take(&mut *VIOLATIONS.lock().unwrap_or_else(PoisonError::into_inner));
    assert!(
        seen.is_empty(),
        "log hygiene (protocol.md §10) broken {} time(s):\n{}",
        seen.len(),
        seen.join("\n")
    );
}

/// Where violations go: the binary-wide list, or a self-test's own.
struct Hygiene {
    sink: &'static Mutex<Vec<String>>,
}

/// Renders every field of one event or span and checks its name.
struct Check<'a> {
    ours: bool,
    rendered: String,
    bad_names: Vec<&'a str>,
}

impl Check<'_> {
    fn new(target: &str) -> Self {
        Check {
            ours: target.starts_with("relay_server") || target.starts_with("relay_core"),
            rendered: String::new(),
            bad_names: Vec::new(),
        }
    }

    fn name_ok(&self, field: &Field) -> bool {
        let name = field.name();
        name == "message" || relay_server::logging::FIELD_ALLOWLIST.contains(&name)
    }

    fn text(&mut self, field: &Field, value: &str) {
        if self.ours && !self.name_ok(field) {
            self.bad_names.push(field.name());
        }
        let _ = write!(self.rendered, " {}={}", field.name(), value);
    }

    fn number(&mut self, field: &Field, value: impl std::fmt::Display) {
        let _ = write!(self.rendered, " {}={}", field.name(), value);
    }

    fn finish(self, sink: &Mutex<Vec<String>>, kind: &str, target: &str, name: &str) {
        let violation = |what: String| {
            let mut v = sink.lock().unwrap_or_else(PoisonError::into_inner);
            if v.len() < 50 {
                v.push(what);
            }
        };
        let line = format!("{kind} {target} {name}:{}", self.rendered);
        for bad in &self.bad_names {
            violation(format!("field `{bad}` is not on the allowlist: {line}"));
        }
        if let Some(secret) = relay_testkit::secrets::found_in(&line) {
            violation(format!(
                "a token, User-Agent or payload ({secret:?}) was logged: {line}"
            ));
        }
        if line.contains("HeaderMap {") || line.to_ascii_lowercase().contains("\"x-pyrycode-") {
            violation(format!("a raw header map was logged: {line}"));
        }
    }
}

impl Visit for Check<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.text(field, &format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.text(field, if value { "true" } else { "false" });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, &value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.number(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.number(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.number(field, value);
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Hygiene {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut check = Check::new(meta.target());
        event.record(&mut check);
        check.finish(self.sink, "event", meta.target(), meta.name());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let meta = attrs.metadata();
        let mut check = Check::new(meta.target());
        attrs.record(&mut check);
        check.finish(self.sink, "span", meta.target(), meta.name());
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let target = ctx
            .span(id)
            .map_or("", |s| s.metadata().target())
            .to_owned();
        let mut check = Check::new(&target);
        values.record(&mut check);
        check.finish(self.sink, "span record", &target, "");
    }
}

/// The layer itself must catch what it claims to: a bad field name, a logged secret.
#[test]
fn the_hygiene_layer_catches_a_bad_field_and_a_logged_secret() {
    static OWN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let subscriber = tracing_subscriber::registry().with(Hygiene { sink: &OWN });
    relay_testkit::secrets::header(b"tok-hygiene-self-test");
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(target: "relay_server::x", registered = true, "phone connected");
        tracing::info!(target: "relay_server::x", conn_id = "c-1", phones = 3_u64, "fine");
        tracing::info!(target: "hyper", err = "tok-hygiene-self-test", "leak");
    });
    let seen: Vec<String> =
        std::mem::take(&mut *OWN.lock().unwrap_or_else(PoisonError::into_inner));
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert!(seen[0].contains("`registered`"), "{}", seen[0]);
    assert!(seen[1].contains("tok-hygiene-self-test"), "{}", seen[1]);
}
