//! What a run reports: the structs `--json` prints and the summary tables a person reads.
//! Pure formatting; the numbers are computed by the modes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    /// Summarises a histogram of latencies in ns.
    pub fn from_ns_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Self {
            count: h.len(),
            mean: h.mean() / 1_000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// The result of an `echo` run.
#[derive(Debug, Clone, Serialize)]
pub struct EchoReport {
    pub mode: &'static str,
    /// "relay" or "direct".
    pub target: &'static str,
    pub addr: String,
    /// "closed" or "open".
    pub pacing: &'static str,
    /// Closed-loop messages in flight per phone.
    pub window: Option<usize>,
    /// Open-loop offered rate, messages per second over all phones.
    pub rate: Option<f64>,
    pub binaries: usize,
    pub phones: usize,
    pub size: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// Round trips completed inside the measurement window.
    pub round_trips: u64,
    pub round_trips_per_sec: f64,
    pub latency_us: LatencySummary,
    /// Open-loop: the latest any message left after its scheduled time, in µs. Large values mean
    /// the generator (or back-pressure) could not keep the offered rate.
    pub max_send_lag_us: Option<f64>,
    /// Totals over the whole run, warmup and drain included.
    pub sent: u64,
    pub received: u64,
    /// Sent and never came back (after the drain wait).
    pub lost: u64,
    /// Came back after a later message (reordered or duplicated).
    pub reordered: u64,
    /// Came back with the wrong size or not in the load format.
    pub corrupt: u64,
    /// Connections (phones or binaries) that ended in an error.
    pub failed_connections: u64,
    /// Envelopes the fake binaries could not make sense of.
    pub malformed_envelopes: u64,
    /// The first few distinct errors.
    pub errors: Vec<String>,
    pub error_count: u64,
    /// No loss, no reordering, no corruption, no error.
    pub ok: bool,
}

/// The result of an `idle` run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub mode: &'static str,
    pub target: &'static str,
    pub addr: String,
    pub binaries: usize,
    pub phones: usize,
    pub phones_connected: u64,
    pub phones_failed: u64,
    /// Connections that the server closed (or that broke) while held.
    pub closed_while_held: u64,
    pub connect_secs: f64,
    pub hold_secs: f64,
    pub server_pid: Option<u32>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    /// RSS growth divided by every connection the server held (phones and binaries).
    pub bytes_per_connection: Option<f64>,
    pub errors: Vec<String>,
    pub error_count: u64,
    pub ok: bool,
}

/// Thousands separators, for counts people read.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl EchoReport {
    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let pacing = match (self.window, self.rate) {
            (Some(w), _) => format!("closed-loop, window {w}"),
            (None, Some(r)) => format!("open-loop, {r} msg/s"),
            _ => self.pacing.to_owned(),
        };
        let l = &self.latency_us;
        // Writing to a String cannot fail.
        let _ = writeln!(
            t,
            "relay-load echo: {} {} ({pacing})",
            self.target, self.addr
        );
        let _ = writeln!(
            t,
            "  {:<18} {} binaries, {} phones, {} B messages, warmup {}s, measured {}s",
            "setup", self.binaries, self.phones, self.size, self.warmup_secs, self.duration_secs
        );
        let _ = writeln!(
            t,
            "  {:<18} {:.1} /s ({} in the window)",
            "round trips",
            self.round_trips_per_sec,
            group_digits(self.round_trips)
        );
        let _ = writeln!(
            t,
            "  {:<18} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (µs)", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let _ = writeln!(
            t,
            "  {:<18} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            "", l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if let Some(lag) = self.max_send_lag_us {
            let _ = writeln!(
                t,
                "  {:<18} {lag:.1} µs behind schedule at worst",
                "send lag"
            );
        }
        let _ = writeln!(
            t,
            "  {:<18} {} sent, {} received",
            "messages",
            group_digits(self.sent),
            group_digits(self.received)
        );
        let _ = writeln!(
            t,
            "  {:<18} lost {}, reordered {}, corrupt {}, failed connections {}, malformed envelopes {}",
            "checks", self.lost, self.reordered, self.corrupt, self.failed_connections, self.malformed_envelopes
        );
        write_errors(&mut t, &self.errors, self.error_count);
        let _ = writeln!(t, "  {:<18} {}", "result", verdict(self.ok));
        t
    }
}

impl IdleReport {
    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "relay-load idle: {} {}", self.target, self.addr);
        let _ = writeln!(
            t,
            "  {:<18} {} binaries, {} phones (held {}s)",
            "setup", self.binaries, self.phones, self.hold_secs
        );
        let _ = writeln!(
            t,
            "  {:<18} {} phones connected, {} failed, in {:.2}s; {} closed while held",
            "connections",
            group_digits(self.phones_connected),
            self.phones_failed,
            self.connect_secs,
            self.closed_while_held
        );
        match (self.server_pid, self.rss_before_bytes, self.rss_after_bytes) {
            (Some(pid), Some(before), Some(after)) => {
                let _ = writeln!(
                    t,
                    "  {:<18} pid {pid}: {} before, {} after",
                    "server RSS",
                    mib(before),
                    mib(after)
                );
                if let Some(per) = self.bytes_per_connection {
                    let _ = writeln!(t, "  {:<18} {per:.0} B", "RSS per connection");
                }
            }
            _ => {
                let _ = writeln!(t, "  {:<18} not measured (give --relay-pid)", "server RSS");
            }
        }
        write_errors(&mut t, &self.errors, self.error_count);
        let _ = writeln!(t, "  {:<18} {}", "result", verdict(self.ok));
        t
    }
}

fn write_errors(t: &mut String, errors: &[String], total: u64) {
    if errors.is_empty() {
        return;
    }
    let _ = writeln!(
        t,
        "  {:<18} {total} in total; first distinct ones:",
        "errors"
    );
    for e in errors {
        let _ = writeln!(t, "    - {e}");
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "FAILED (see checks and errors above)"
    }
}

/// The result of a `reconnect` run.
#[derive(Debug, Clone, Serialize)]
pub struct ReconnectReport {
    pub mode: &'static str,
    pub binaries: usize,
    pub phones: usize,
    pub duration_secs: f64,
    /// Successful upgrades, first ones included.
    pub binary_connects: u64,
    pub phone_connects: u64,
    /// Why attempts failed or connections ended: `http 503`, `close 4404`, `connect`, ...
    pub refusals: BTreeMap<String, u64>,
    /// Binaries closed 4409: never acceptable for a binary's own id.
    pub conflicts_4409: u64,
    pub sent: u64,
    pub received_by_binaries: u64,
    pub echoed: u64,
    /// Sends after which no echo came within `echo_wait` (in flight during a failover).
    pub echo_timeouts: u64,
    /// Delivered twice or after a later one, phone → binary and binary → phone.
    pub out_of_order_to_binary: u64,
    pub out_of_order_to_phone: u64,
    pub corrupt: u64,
    /// Phones that had an echo in the last moments of the run.
    pub phones_routing_at_end: usize,
    pub errors: Vec<String>,
    pub ok: bool,
}

impl ReconnectReport {
    /// The summary a person reads.
    pub fn table(&self) -> String {
        let mut out = format!(
            "reconnect: {} binaries, {} phones, {:.1} s\n\
             connects       binaries {}  phones {}\n\
             messages       sent {}  at binaries {}  echoed {}  echo timeouts {}\n\
             violations     4409 {}  out of order to binary {}  to phone {}  corrupt {}\n\
             routing at end {} of {} phones\n",
            self.binaries,
            self.phones,
            self.duration_secs,
            self.binary_connects,
            self.phone_connects,
            self.sent,
            self.received_by_binaries,
            self.echoed,
            self.echo_timeouts,
            self.conflicts_4409,
            self.out_of_order_to_binary,
            self.out_of_order_to_phone,
            self.corrupt,
            self.phones_routing_at_end,
            self.phones,
        );
        if !self.refusals.is_empty() {
            let r: Vec<String> = self
                .refusals
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out.push_str(&format!("refusals/ends   {}\n", r.join(", ")));
            if self.refusals.contains_key("http 429") {
                out.push_str(
                    "hint: 429 is the relay's per-IP limit; raise --rate-limit-per-minute, \
                     --rate-limit-burst and --max-connections-per-ip for load from one address\n",
                );
            }
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        out.push_str(if self.ok {
            "result: ok\n"
        } else {
            "result: FAILED\n"
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values_ns: &[u64]) -> Histogram<u64> {
        let mut h = super::super::stats::new_histogram();
        for &v in values_ns {
            h.record(v).expect("in range");
        }
        h
    }

    #[test]
    fn summary_reports_percentiles_in_microseconds() {
        // 1..=1000 µs, one sample each.
        let values: Vec<u64> = (1..=1000).map(|us| us * 1_000).collect();
        let s = LatencySummary::from_ns_histogram(&histogram(&values));
        assert_eq!(s.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(s.p50, 500.0), "{s:?}");
        assert!(close(s.p90, 900.0), "{s:?}");
        assert!(close(s.p99, 990.0), "{s:?}");
        assert!(close(s.p999, 999.0), "{s:?}");
        assert!(close(s.max, 1000.0), "{s:?}");
        assert!(close(s.mean, 500.5), "{s:?}");
    }

    #[test]
    fn empty_histogram_summarises_to_zeros() {
        assert_eq!(
            LatencySummary::from_ns_histogram(&histogram(&[])),
            LatencySummary::default()
        );
    }

    #[test]
    fn digits_are_grouped_in_thousands() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_000), "1,000");
        assert_eq!(group_digits(1_234_567), "1,234,567");
    }

    fn sample_report() -> EchoReport {
        EchoReport {
            mode: "echo",
            target: "direct",
            addr: "127.0.0.1:9".into(),
            pacing: "closed",
            window: Some(8),
            rate: None,
            binaries: 10,
            phones: 100,
            size: 64,
            warmup_secs: 1.0,
            duration_secs: 10.0,
            round_trips: 1_234_567,
            round_trips_per_sec: 123_456.7,
            latency_us: LatencySummary {
                count: 1_234_567,
                mean: 60.0,
                p50: 50.0,
                p90: 90.0,
                p99: 99.0,
                p999: 199.9,
                max: 1234.5,
            },
            max_send_lag_us: None,
            sent: 1_240_000,
            received: 1_240_000,
            lost: 0,
            reordered: 0,
            corrupt: 0,
            failed_connections: 0,
            malformed_envelopes: 0,
            errors: vec![],
            error_count: 0,
            ok: true,
        }
    }

    #[test]
    fn echo_table_shows_rate_percentiles_and_verdict() {
        let table = sample_report().table();
        assert!(
            table.contains("direct 127.0.0.1:9 (closed-loop, window 8)"),
            "{table}"
        );
        assert!(
            table.contains("123456.7 /s (1,234,567 in the window)"),
            "{table}"
        );
        assert!(table.contains("p99.9"), "{table}");
        assert!(table.contains("199.9"), "{table}");
        assert!(table.contains("1234.5"), "{table}");
        assert!(table.trim_end().ends_with("OK"), "{table}");
    }

    #[test]
    fn echo_table_lists_errors_and_fails() {
        let mut r = sample_report();
        r.lost = 3;
        r.ok = false;
        r.errors = vec!["phone closed by the server with 4404".into()];
        r.error_count = 5;
        let table = r.table();
        assert!(table.contains("lost 3"), "{table}");
        assert!(table.contains("5 in total"), "{table}");
        assert!(
            table.contains("- phone closed by the server with 4404"),
            "{table}"
        );
        assert!(table.contains("FAILED"), "{table}");
    }

    #[test]
    fn json_has_flat_fields_scripts_can_grep() {
        let json = serde_json::to_string(&sample_report()).expect("serialize");
        assert!(json.contains(r#""round_trips_per_sec":123456.7"#), "{json}");
        assert!(json.contains(r#""p99":99.0"#), "{json}");
        assert!(json.contains(r#""ok":true"#), "{json}");
    }
}
