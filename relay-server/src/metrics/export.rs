//! One scrape: every series of §10 read from its owner and encoded by prometheus-client
//! (OpenMetrics text: counters get their `_total` suffix, `# EOF` ends it).
//!
//! Series are listed here, in one place, so the dashboards and alerts under `deploy/` can be
//! checked against exactly what `/metrics` serves ([`series_names`]).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::labels::*;
use super::process::Process;
use super::{Metrics, MALFORMED_KINDS};
use crate::cluster::stats as cluster_stats;
use crate::listen::stats::PreUpgrade;
use crate::push;
use crate::shared::Shared;

/// The push service's own outcome for a `push_wakes_total` label (the push service counts;
/// the labels live here).
fn push_outcome(o: PushOutcome) -> push::Outcome {
    match o {
        PushOutcome::Sent => push::Outcome::Sent,
        PushOutcome::Unregistered => push::Outcome::Unregistered,
        PushOutcome::SendFailed => push::Outcome::SendFailed,
        PushOutcome::TokenFetchFailed => push::Outcome::TokenFetchFailed,
        PushOutcome::Dropped => push::Outcome::Dropped,
    }
}

/// The node's counter behind each `cluster_directory_operations_total` label pair.
fn cluster_op(
    op: ClusterOp,
    outcome: ClusterOutcome,
) -> (cluster_stats::Op, cluster_stats::Outcome) {
    let op = match op {
        ClusterOp::Claim => cluster_stats::Op::Claim,
        ClusterOp::Locate => cluster_stats::Op::Locate,
        ClusterOp::Release => cluster_stats::Op::Release,
        ClusterOp::Lease => cluster_stats::Op::Refresh,
        ClusterOp::Leave => cluster_stats::Op::Leave,
        ClusterOp::Join => cluster_stats::Op::Join,
        ClusterOp::Reassert => cluster_stats::Op::Reassert,
        ClusterOp::Purge => cluster_stats::Op::Purge,
    };
    let outcome = match outcome {
        ClusterOutcome::Ok => cluster_stats::Outcome::Ok,
        ClusterOutcome::Conflict => cluster_stats::Outcome::Conflict,
        ClusterOutcome::Error => cluster_stats::Outcome::Error,
        ClusterOutcome::Timeout => cluster_stats::Outcome::Timeout,
    };
    (op, outcome)
}

fn cluster_event(e: ClusterEvent) -> cluster_stats::Event {
    match e {
        ClusterEvent::Fenced => cluster_stats::Event::Fenced,
        ClusterEvent::SlotLost => cluster_stats::Event::SlotLost,
        ClusterEvent::Takeover => cluster_stats::Event::Takeover,
        ClusterEvent::Usurped => cluster_stats::Event::Usurped,
    }
}

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, Debug)]
enum Value {
    U(u64),
    F(f64),
}

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

#[derive(Debug, Default)]
struct Snapshot(Vec<Family>);

impl Snapshot {
    fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.push(name, help, MetricType::Counter, vec![(vec![], Value::U(v))]);
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, v: Value) {
        self.push(name, help, MetricType::Gauge, vec![(vec![], v)]);
    }

    fn by<L: Label>(&mut self, name: &'static str, help: &'static str, get: impl Fn(L) -> u64) {
        let samples = L::ALL
            .iter()
            .map(|&l| (vec![(L::NAME, l.as_str())], Value::U(get(l))))
            .collect();
        self.push(name, help, MetricType::Counter, samples);
    }

    fn by_two<A: Label, B: Label>(
        &mut self,
        name: &'static str,
        help: &'static str,
        get: impl Fn(A, B) -> u64,
    ) {
        let mut samples = Vec::new();
        for &a in A::ALL {
            for &b in B::ALL {
                samples.push((
                    vec![(A::NAME, a.as_str()), (B::NAME, b.as_str())],
                    Value::U(get(a, b)),
                ));
            }
        }
        self.push(name, help, MetricType::Counter, samples);
    }

    fn push(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        samples: Vec<(Labels, Value)>,
    ) {
        self.0.push(Family {
            name,
            help,
            kind,
            samples,
        });
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                if labels.is_empty() {
                    encode_value(&mut metric, family.kind, *value)?;
                } else {
                    let mut labelled = metric.encode_family(labels)?;
                    encode_value(&mut labelled, family.kind, *value)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    kind: MetricType,
    value: Value,
) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (MetricType::Counter, Value::U(v)) => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
        (MetricType::Counter, Value::F(v)) => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
        (_, Value::U(v)) => m.encode_gauge(&v),
        (_, Value::F(v)) => m.encode_gauge(&v),
    }
}

fn snapshot(shared: &Shared) -> Snapshot {
    let m: &Metrics = &shared.metrics;
    let counts = shared.registry.counts();
    let mut s = Snapshot::default();

    s.gauge(
        "pyrycode_relay_connected_binaries",
        "Binaries holding a server-id (binaries in grace are not counted).",
        Value::U(counts.binaries as u64),
    );
    s.gauge(
        "pyrycode_relay_binaries_in_grace",
        "Server-ids whose binary left and whose grace period runs.",
        Value::U(counts.server_ids.saturating_sub(counts.binaries) as u64),
    );
    s.gauge(
        "pyrycode_relay_connected_phones",
        "Phones registered with a server-id (during grace too).",
        Value::U(counts.phones as u64),
    );
    let max = shared.opts.max_connections;
    s.gauge(
        "pyrycode_relay_connections",
        "Live WebSocket connections holding a slot of --max-connections.",
        Value::U(max.saturating_sub(shared.conn_slots.available_permits()) as u64),
    );
    s.gauge(
        "pyrycode_relay_connections_limit",
        "--max-connections.",
        Value::U(max as u64),
    );
    s.by(
        "pyrycode_relay_frames_forwarded",
        "Messages forwarded, by direction.",
        |d: Direction| m.frames_forwarded(d),
    );
    s.by(
        "pyrycode_relay_bytes_forwarded",
        "Payload bytes of the messages forwarded, by direction.",
        |d: Direction| m.bytes_forwarded(d),
    );
    s.by_two(
        "pyrycode_relay_ws_upgrade_attempts",
        "Upgrade attempts by endpoint and outcome (an HTTP refusal, or the registry's decision).",
        |e: Endpoint, o: UpgradeOutcome| m.upgrades.get(e, o),
    );
    s.by(
        "pyrycode_relay_register_failures",
        "Registrations refused after the upgrade, by kind.",
        |k: RegisterFailure| m.register_failures.get(k),
    );
    s.by_two(
        "pyrycode_relay_closes",
        "Connections ended, by role and reason (protocol.md section 5).",
        |r: Role, c: CloseReason| m.closes.get(r, c),
    );
    s.by(
        "pyrycode_relay_drops",
        "Messages not delivered, by reason.",
        |r: DropReason| m.drops.get(r),
    );
    let malformed = MALFORMED_KINDS
        .iter()
        .map(|k| (vec![("kind", k.as_str())], Value::U(m.malformed(*k))))
        .collect();
    s.push(
        "pyrycode_relay_malformed_envelopes",
        "Binary envelopes dropped as malformed, by kind.",
        MetricType::Counter,
        malformed,
    );
    s.counter(
        "pyrycode_relay_grace_periods_started",
        "Binaries that left while holding their server-id (grace started).",
        Metrics::read(&m.grace_started),
    );
    s.by(
        "pyrycode_relay_reclaims",
        "Server-ids claimed again during grace, by reclaim policy.",
        |p: ReclaimPolicyLabel| m.reclaims.get(p),
    );
    s.counter(
        "pyrycode_relay_takeovers",
        "Incumbents that failed the liveness probe and lost their server-id.",
        Metrics::read(&m.takeovers),
    );
    s.counter(
        "pyrycode_relay_grace_expiries",
        "Grace periods that ended with no reclaim.",
        Metrics::read(&m.grace_expiries),
    );
    s.by(
        "pyrycode_relay_admission_refusals",
        "Connections refused or dropped before the upgrade, by limit (protocol.md section 8).",
        |l: AdmissionLimit| m.admission_refusals.get(l),
    );
    s.gauge(
        "pyrycode_relay_buffered_bytes",
        "Bytes held for peers against the memory budget.",
        Value::U(shared.budget.used() as u64),
    );
    s.gauge(
        "pyrycode_relay_buffered_bytes_limit",
        "--max-buffered-bytes.",
        Value::U(shared.budget.limit() as u64),
    );
    s.counter(
        "pyrycode_relay_budget_pauses",
        "Times a connection's reads were paused at the memory budget.",
        shared.budget.pauses(),
    );
    s.counter(
        "pyrycode_relay_budget_sheds",
        "Phones closed because their outbox was the largest at the memory budget.",
        shared.outboxes.sheds(),
    );
    s.by(
        "pyrycode_relay_push_wakes",
        "Push wakes by outcome (protocol.md section 4.4).",
        |o: PushOutcome| shared.push.counters().get(push_outcome(o)),
    );
    let (reloaded, reload_failed) = m.certificate_reloads();
    s.push(
        "pyrycode_relay_certificate_reloads",
        "SIGHUP reloads of --tls-cert/--tls-key, by outcome (failed: the old pair is kept).",
        MetricType::Counter,
        vec![
            (vec![("outcome", "ok")], Value::U(reloaded)),
            (vec![("outcome", "failed")], Value::U(reload_failed)),
        ],
    );
    let pre = &shared.listen_stats;
    s.counter(
        "pyrycode_relay_tls_handshake_failures",
        "TLS handshakes that failed (old versions, unknown SNI, garbage, resets).",
        pre.count(PreUpgrade::TlsHandshakeFailed),
    );
    s.counter(
        "pyrycode_relay_proxy_header_refusals",
        "Connections closed for a missing, late or invalid PROXY v2 header.",
        pre.count(PreUpgrade::ProxyRefused),
    );
    s.by(
        "pyrycode_relay_acme_orders",
        "ACME certificate orders by outcome.",
        |o: AcmeOutcome| m.acme_orders(o),
    );
    s.gauge(
        "pyrycode_relay_certificate_expiry_timestamp_seconds",
        "Unix time the served certificate expires (0: none).",
        Value::U(m.certificate_expiry()),
    );
    // A single node serves these at zero, like every other series (§10).
    let node = shared.cluster().map(|c| &c.node);
    s.by_two(
        "pyrycode_relay_cluster_directory_operations",
        "Cluster directory operations by kind and outcome (protocol.md section 11).",
        |o: ClusterOp, r: ClusterOutcome| {
            let (op, outcome) = cluster_op(o, r);
            node.map_or(0, |n| n.stats().ops(op, outcome))
        },
    );
    s.by(
        "pyrycode_relay_cluster_events",
        "Rare cluster events: lease found gone, slots lost to another node, takeovers, usurped.",
        |e: ClusterEvent| node.map_or(0, |n| n.stats().events(cluster_event(e))),
    );
    s.gauge(
        "pyrycode_relay_cluster_degraded",
        "1 while this node cannot use the cluster directory (/healthz says degraded).",
        Value::U(u64::from(
            node.is_some_and(|n| n.health() == crate::cluster::Health::Degraded),
        )),
    );
    s.by(
        "pyrycode_relay_cluster_forwarded_connections",
        "Connections spliced to or from another node, and forwards refused or failed.",
        |o: ForwardOutcome| m.cluster_forwarded.get(o),
    );
    s.counter(
        "pyrycode_relay_log_lines_dropped",
        "Log lines dropped because the log sink was full or gone.",
        crate::logging::dropped_lines(),
    );
    s.by(
        "pyrycode_relay_panics",
        "Connection tasks that panicked, by where (each closed that connection 1011).",
        |p: PanicPoint| m.panics.get(p),
    );
    s.gauge(
        "pyrycode_relay_uptime_seconds",
        "Seconds since the relay started.",
        Value::U(shared.started.elapsed().as_secs()),
    );

    let p = Process::read();
    s.push(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds.",
        MetricType::Counter,
        vec![(vec![], Value::F(p.cpu_seconds))],
    );
    s.gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        Value::U(p.resident_bytes),
    );
    s.gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        Value::U(p.virtual_bytes),
    );
    s.gauge(
        "process_open_fds",
        "Number of open file descriptors.",
        Value::U(p.open_fds),
    );
    s.gauge(
        "process_max_fds",
        "Maximum number of open file descriptors.",
        Value::U(p.max_fds),
    );
    s.gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        Value::F(p.start_time_seconds),
    );
    s.gauge(
        "process_threads",
        "Number of OS threads in the process.",
        Value::U(p.threads),
    );
    s
}

/// The text of one scrape.
pub fn render(shared: &Shared) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot(shared)));
    let mut out = String::with_capacity(32 << 10);
    // Writing to a String cannot fail; an encoder error would be a bug in a label value.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Every sample name a scrape serves (`_total` included on counters), for checking that
/// dashboards and alerts name only real series.
pub fn series_names(shared: &Shared) -> Vec<String> {
    snapshot(shared)
        .0
        .iter()
        .map(|f| match f.kind {
            MetricType::Counter => format!("{}_total", f.name),
            _ => f.name.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod push_tests {
    use super::*;

    #[test]
    fn every_push_wakes_label_reads_the_push_outcome_of_the_same_name() {
        assert_eq!(PushOutcome::ALL.len(), push::Outcome::ALL.len());
        for o in PushOutcome::ALL {
            assert_eq!(o.as_str(), push_outcome(*o).as_str());
        }
    }
}
