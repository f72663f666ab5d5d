//! Structured logging to stderr (protocol.md §10).
//!
//! Owns installing the process-wide `tracing` subscriber: `--log-format text|json`, level from
//! `RUST_LOG` (default `info`), no ANSI colours unless stderr is a terminal (and `NO_COLOR` is
//! unset), so redirected logs stay machine-readable.
//!
//! # What may be logged
//!
//! Field names come from a fixed allowlist, [`FIELD_ALLOWLIST`]: `server_id`, `conn_id`,
//! `remote`, `binary_version`, `device_name`, `close_code`, `reason`, `path`, `err`,
//! `duration`, `addr`, `mode`, `token_fp` (a push token's fingerprint, §4.4). A new field
//! name is added there first, in review.
//!
//! Never logged, at any level, under any field name:
//! - message payloads (phone frames, envelopes, anything the peers send after the upgrade);
//! - the `X-Pyrycode-Token` value, or anything derived from it;
//! - push tokens, OAuth access tokens, the service-account key or its JWTs, FCM replies
//!   (`token_fp` is the only trace of a push token);
//! - raw header maps (`{:?}` of a request or its `HeaderMap`);
//! - full `User-Agent` strings.
//!
//! Header values rejected at validation are logged without the value (§2). The rule is
//! enforced by a test layer that watches every event the e2e suite emits
//! (`relay-server/tests/support/hygiene.rs`).
//!
//! # Logging cannot hurt the relay (issue 11)
//!
//! Events are formatted on the emitting thread into a bounded, lossy channel
//! (tracing-appender); one writer thread writes them to stderr. A full channel (a log reader
//! that stopped reading) drops the line; a failed write (EPIPE: the reader went away) drops the
//! line. Both are counted ([`dropped_lines`], `pyrycode_relay_log_lines_dropped_total`), neither
//! blocks or panics anything, and shutdown waits for the writer at most [`FLUSH_WAIT`].
//! Nothing after boot writes to stderr directly ([`stderr_line`] never panics either).

pub mod panics;
pub mod throttle;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The field names log events and spans may use (§10). Extend in review, never ad hoc.
pub const FIELD_ALLOWLIST: &[&str] = &[
    "server_id",
    "conn_id",
    "remote",
    "binary_version",
    "device_name",
    "close_code",
    "reason",
    "path",
    "err",
    "duration",
    "addr",
    "mode",
    "metrics_addr",
    "token_fp",
    "node_id",
];

/// Level used when `RUST_LOG` is unset, empty or invalid.
const DEFAULT_FILTER: &str = "info";

/// Lines waiting for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 8192;
/// Longest shutdown waits for queued lines to be written.
pub const FLUSH_WAIT: Duration = Duration::from_millis(300);

/// Lines whose write to stderr failed.
static FAILED_WRITES: AtomicU64 = AtomicU64::new(0);
/// The lossy channel's own count of lines it had to drop.
static QUEUE: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Log lines dropped so far: the sink was full, or gone.
pub fn dropped_lines() -> u64 {
    let queued = QUEUE.get().map_or(0, |c| c.dropped_lines() as u64);
    queued + FAILED_WRITES.load(Ordering::Relaxed)
}

/// stderr as the writer thread sees it: a failed write is counted and forgotten.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            FAILED_WRITES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Keeps the log writer thread; [`LogGuard::flush`] at exit.
pub struct LogGuard(Option<tracing_appender::non_blocking::WorkerGuard>);

impl LogGuard {
    /// Gives the writer thread at most [`FLUSH_WAIT`] to write what is queued. The guard is
    /// dropped on a thread of its own: tracing-appender's drop can wait a second and prints
    /// with `println!` when it times out, neither of which may hold up or crash the exit.
    pub fn flush(mut self) {
        let Some(guard) = self.0.take() else { return };
        let (done, wait) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                drop(guard);
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = wait.recv_timeout(FLUSH_WAIT);
        }
    }
}

/// One line to stderr from `main` (boot and bind errors): never panics, never blocks long.
pub fn stderr_line(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Installs the global subscriber writing to stderr through the lossy writer thread. Call
/// once, first thing in `main`, and keep the guard until exit.
///
/// A second call keeps the first subscriber (tests may race to install one), and an invalid
/// `RUST_LOG` falls back to `info` with a warning rather than failing the boot.
pub fn init(format: LogFormat) -> LogGuard {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, filter_err) = filter_from(rust_log.as_deref());
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("log-writer")
        .finish(Sink);
    let _ = QUEUE.set(writer.error_counter());
    // Err only means a subscriber is already installed; keeping it is the right outcome.
    let _ = subscriber(format, filter, writer, ansi).try_init();
    if let Some(err) = filter_err {
        tracing::warn!(err = %err, "RUST_LOG is not a valid filter; logging at info");
    }
    panics::install_hook();
    LogGuard(Some(guard))
}

/// The filter for a `RUST_LOG` value, plus the parse error when it had to fall back.
fn filter_from(rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    match rust_log.map(str::trim).filter(|value| !value.is_empty()) {
        None => (EnvFilter::new(DEFAULT_FILTER), None),
        Some(directives) => match EnvFilter::try_new(directives) {
            Ok(filter) => (filter, None),
            Err(err) => (EnvFilter::new(DEFAULT_FILTER), Some(err.to_string())),
        },
    }
}

/// Built separately from [`init`] so tests can capture the output of either format.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        // Its internal error report writes to stderr with eprintln!, which panics on EPIPE.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        // Flattened so fields sit next to "message" rather than under a "fields" object,
        // which is what log shippers index.
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex, PoisonError};

    /// Collects everything the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn capture(format: LogFormat, rust_log: Option<&str>, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let (filter, _) = filter_from(rust_log);
        let sub = subscriber(format, filter, out.clone(), false);
        tracing::subscriber::with_default(sub, emit);
        out.text()
    }

    #[test]
    fn text_startup_line_is_plain_key_value_without_colours() {
        // `%` (Display) keeps strings unquoted, which is what scripts grep for.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 40123));
        let out = capture(LogFormat::Text, None, || {
            tracing::info!(%addr, mode = %"insecure", "listening");
        });
        assert!(
            out.contains("listening addr=127.0.0.1:40123 mode=insecure"),
            "{out}"
        );
        assert!(!out.contains('\u{1b}'), "ANSI escape in {out:?}");
    }

    #[test]
    fn json_is_one_flat_object_per_line() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 40123));
        let out = capture(LogFormat::Json, None, || {
            tracing::info!(%addr, mode = %"insecure", "listening");
            tracing::warn!(close_code = 1011_u16, "closed");
        });
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["message"], "listening");
        assert_eq!(lines[0]["addr"], "127.0.0.1:40123");
        assert_eq!(lines[0]["mode"], "insecure");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[1]["close_code"], 1011);
    }

    #[test]
    fn default_level_is_info() {
        let out = capture(LogFormat::Text, None, || {
            tracing::debug!("hidden");
            tracing::info!("shown");
        });
        assert!(out.contains("shown") && !out.contains("hidden"), "{out}");
    }

    #[test]
    fn rust_log_sets_the_level() {
        let out = capture(LogFormat::Text, Some("debug"), || tracing::debug!("shown"));
        assert!(out.contains("shown"), "{out}");
        let out = capture(LogFormat::Text, Some("warn"), || tracing::info!("hidden"));
        assert!(!out.contains("hidden"), "{out}");
    }

    #[test]
    fn empty_or_invalid_rust_log_falls_back_to_info() {
        let (_, err) = filter_from(Some("  "));
        assert!(err.is_none());
        let (filter, err) = filter_from(Some("relay_server=notalevel"));
        assert!(err.is_some());
        assert_eq!(filter.to_string(), DEFAULT_FILTER);
    }
}
