//! `reconnect` mode: fake binaries and phones that come back, as real ones do, while relay
//! nodes die, restart and fail over under them (protocol.md §11) — and proof of what the
//! relay delivered meanwhile.
//!
//! Every client reconnects on any close, refusal or dead connection, with a jittered
//! exponential backoff; a binary closed 4409 ("another binary holds your id", fatal for a
//! real daemon) is counted as a violation and reconnects anyway, so one run shows every one.
//! Phones send numbered load messages (phone index in the high bits of the sequence number,
//! which keeps counting across reconnects); binaries echo each frame back. Two checks per
//! (phone, direction), both across every reconnect of either side:
//! - the binary that holds a server-id sees each of its phones' sequence numbers strictly
//!   increase (phone → binary);
//! - each phone sees its echoes strictly increase (binary → phone).
//!
//! A message in flight when a connection breaks may be lost (the relay never accepted it, or
//! the connection it was for is gone); one delivered twice or after a later one is a
//! violation. [`Reconnecting::routing_since`] says which phones have had an echo since a
//! moment, i.e. are connected to a relay that routes them to a connected binary.
//!
//! Built on `crate::client` (tokio-tungstenite): this mode measures correctness under churn,
//! not throughput, so it favours clients whose every wait has a timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::message::{self, Stamp};
use super::report::ReconnectReport;
use super::seq::Ascending;
use super::server_ids;
use crate::client::{ClientError, FakeBinary, FakePhone};

/// Bits of a sequence number that count a phone's messages; the phone index sits above.
const SEQ_BITS: u32 = 40;
/// How long one connection attempt may take (an edge may wait 2 s on the directory).
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// How long a binary's read waits before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(250);

/// `reconnect` mode's knobs.
#[derive(Debug, Clone)]
pub struct ReconnectConfig {
    /// Server-ids, one fake binary each.
    pub binaries: usize,
    /// Phones in total, round-robin over the server-ids.
    pub phones: usize,
    /// Exact size of every phone message.
    pub size: usize,
    /// Pause after each echo before a phone's next message.
    pub interval: Duration,
    /// How long a phone waits for an echo before sending the next message anyway.
    pub echo_wait: Duration,
    /// Reconnect backoff: first delay, and ceiling.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Phones connect here instead of the binaries' address (to force forwarding).
    pub phone_addr: Option<SocketAddr>,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            binaries: 4,
            phones: 16,
            size: 64,
            interval: Duration::from_millis(50),
            echo_wait: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            phone_addr: None,
        }
    }
}

impl ReconnectConfig {
    pub fn validate(&self) -> Result<(), super::LoadError> {
        let bad = |m: &str| Err(super::LoadError::Config(m.to_owned()));
        if self.binaries == 0 || self.phones == 0 {
            return bad("--binaries and --phones must be at least 1");
        }
        if self.phones >= 1 << (64 - SEQ_BITS) {
            return bad("--phones must be below 2^24");
        }
        if self.size < message::MIN_SIZE {
            return bad("--size must be at least 64 bytes");
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("the backoff must be positive, its ceiling at least its start");
        }
        if self.echo_wait.is_zero() {
            return bad("--echo-wait must be more than 0");
        }
        Ok(())
    }
}

/// Counters the tasks share while the run is live.
struct Live {
    origin: Instant,
    /// Per phone: ns since `origin` of its last echo, plus one (0: never).
    last_echo: Vec<AtomicU64>,
    binary_up: Vec<AtomicBool>,
    /// The first few violations, described.
    errors: Mutex<Vec<String>>,
}

impl Live {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn violation(&self, what: String) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 16 {
            e.push(what);
        }
    }
}

/// What one fake binary saw over the run.
#[derive(Debug, Default)]
struct BinaryTally {
    connects: u64,
    refusals: BTreeMap<String, u64>,
    conflicts: u64,
    received: u64,
    echoed: u64,
    out_of_order: u64,
    corrupt: u64,
}

/// What one phone saw over the run.
#[derive(Debug, Default)]
struct PhoneTally {
    connects: u64,
    refusals: BTreeMap<String, u64>,
    sent: u64,
    echoed: u64,
    echo_timeouts: u64,
    out_of_order: u64,
    corrupt: u64,
}

/// A running `reconnect` load: probe it while it runs, then [`finish`](Self::finish) it.
pub struct Reconnecting {
    live: Arc<Live>,
    stop: watch::Sender<bool>,
    binaries: Vec<JoinHandle<BinaryTally>>,
    phones: Vec<JoinHandle<PhoneTally>>,
    cfg: ReconnectConfig,
    started: Instant,
}

impl Reconnecting {
    /// Starts every client at once; they connect (and keep reconnecting) on their own.
    pub fn start(addr: SocketAddr, cfg: ReconnectConfig) -> Result<Reconnecting, super::LoadError> {
        cfg.validate()?;
        let ids = server_ids(cfg.binaries);
        let live = Arc::new(Live {
            origin: Instant::now(),
            last_echo: (0..cfg.phones).map(|_| AtomicU64::new(0)).collect(),
            binary_up: (0..cfg.binaries).map(|_| AtomicBool::new(false)).collect(),
            errors: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let binaries = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                tokio::spawn(binary_task(
                    addr,
                    id.clone(),
                    i,
                    live.clone(),
                    stopped.clone(),
                    cfg.clone(),
                ))
            })
            .collect();
        let phone_addr = cfg.phone_addr.unwrap_or(addr);
        let phones = (0..cfg.phones)
            .map(|i| {
                tokio::spawn(phone_task(
                    phone_addr,
                    ids[i % ids.len()].clone(),
                    i,
                    live.clone(),
                    stopped.clone(),
                    cfg.clone(),
                ))
            })
            .collect();
        Ok(Reconnecting {
            live,
            stop,
            binaries,
            phones,
            cfg,
            started: Instant::now(),
        })
    }

    /// Phones that have had an echo after `since`.
    pub fn routing_since(&self, since: Instant) -> usize {
        let at = u64::try_from(since.saturating_duration_since(self.live.origin).as_nanos())
            .unwrap_or(u64::MAX);
        self.live
            .last_echo
            .iter()
            .filter(|e| e.load(Ordering::Relaxed) > at)
            .count()
    }

    /// Binaries connected right now.
    pub fn binaries_up(&self) -> usize {
        self.live
            .binary_up
            .iter()
            .filter(|b| b.load(Ordering::Relaxed))
            .count()
    }

    pub fn phones(&self) -> usize {
        self.cfg.phones
    }

    /// Waits (polling every 20 ms, at most `within`) until every phone has had an echo after
    /// `since`; returns how long that took from `since`.
    pub async fn wait_all_routing_since(
        &self,
        since: Instant,
        within: Duration,
    ) -> Result<Duration, String> {
        let deadline = since + within;
        loop {
            let n = self.routing_since(since);
            if n == self.cfg.phones {
                return Ok(since.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{n} of {} phones routing {within:?} after the step ({} of {} binaries up)",
                    self.cfg.phones,
                    self.binaries_up(),
                    self.cfg.binaries
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every client (phones first, then binaries) and reports. `ok` needs no
    /// violation and every phone routing within the last `echo_wait * 2` before the stop.
    pub async fn finish(self) -> ReconnectReport {
        let end = Instant::now();
        let window = self.cfg.echo_wait * 2 + self.cfg.interval;
        let routing = self.routing_since(end.checked_sub(window).unwrap_or(self.started));
        let _ = self.stop.send(true);
        let mut errors: Vec<String> = Vec::new();
        let mut phones = Vec::new();
        for t in self.phones {
            match t.await {
                Ok(p) => phones.push(p),
                Err(e) => errors.push(format!("phone task failed: {e}")),
            }
        }
        let mut binaries = Vec::new();
        for t in self.binaries {
            match t.await {
                Ok(b) => binaries.push(b),
                Err(e) => errors.push(format!("binary task failed: {e}")),
            }
        }
        errors.extend(
            self.live
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..),
        );
        let mut refusals = BTreeMap::new();
        let mut merge = |m: &BTreeMap<String, u64>| {
            for (k, v) in m {
                *refusals.entry(k.clone()).or_insert(0) += v;
            }
        };
        for b in &binaries {
            merge(&b.refusals);
        }
        for p in &phones {
            merge(&p.refusals);
        }
        let sum_b = |f: fn(&BinaryTally) -> u64| binaries.iter().map(f).sum::<u64>();
        let sum_p = |f: fn(&PhoneTally) -> u64| phones.iter().map(f).sum::<u64>();
        let conflicts = sum_b(|b| b.conflicts);
        let ooo_b = sum_b(|b| b.out_of_order);
        let ooo_p = sum_p(|p| p.out_of_order);
        let corrupt = sum_b(|b| b.corrupt) + sum_p(|p| p.corrupt);
        if routing < self.cfg.phones {
            errors.push(format!(
                "only {routing} of {} phones were routing at the end",
                self.cfg.phones
            ));
        }
        let ok = conflicts == 0 && ooo_b == 0 && ooo_p == 0 && corrupt == 0 && errors.is_empty();
        ReconnectReport {
            mode: "reconnect",
            binaries: self.cfg.binaries,
            phones: self.cfg.phones,
            duration_secs: self.started.elapsed().as_secs_f64(),
            binary_connects: sum_b(|b| b.connects),
            phone_connects: sum_p(|p| p.connects),
            refusals,
            conflicts_4409: conflicts,
            sent: sum_p(|p| p.sent),
            received_by_binaries: sum_b(|b| b.received),
            echoed: sum_p(|p| p.echoed),
            echo_timeouts: sum_p(|p| p.echo_timeouts),
            out_of_order_to_binary: ooo_b,
            out_of_order_to_phone: ooo_p,
            corrupt,
            phones_routing_at_end: routing,
            errors,
            ok,
        }
    }
}

/// Jittered exponential backoff.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    fn new(cfg: &ReconnectConfig, seed: u64) -> Backoff {
        Backoff {
            min: cfg.backoff_min,
            max: cfg.backoff_max,
            next: cfg.backoff_min,
            rng: crate::client::splitmix(seed ^ 0x9e37_79b9),
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay: the current step, jittered into [step/2, step], then doubled.
    fn step(&mut self) -> Duration {
        self.rng = crate::client::splitmix(self.rng);
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }

    /// Sleeps one step, or returns early (false) if the run stops.
    async fn wait(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let d = self.step();
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }
}

/// A refused or broken connection, as a counter key.
fn why(e: &ClientError) -> String {
    match e {
        ClientError::Refused(r) => format!("http {}", r.status),
        ClientError::Closed { code, .. } => format!("close {code}"),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Disconnected => "disconnected".into(),
        ClientError::Upgrade(_) => "connect".into(),
        _ => "other".into(),
    }
}

fn bump(m: &mut BTreeMap<String, u64>, k: String) {
    *m.entry(k).or_insert(0) += 1;
}

async fn binary_task(
    addr: SocketAddr,
    sid: String,
    idx: usize,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
    cfg: ReconnectConfig,
) -> BinaryTally {
    let mut t = BinaryTally::default();
    let mut backoff = Backoff::new(&cfg, idx as u64);
    // Per phone, kept across this binary's reconnects.
    let mut order = Ascending::default();
    'run: while !*stop.borrow() {
        let mut b = match FakeBinary::builder(addr, &sid)
            .timeout(CONNECT_WAIT)
            .connect()
            .await
        {
            Ok(b) => b,
            Err(e) => {
                bump(&mut t.refusals, why(&e));
                if !backoff.wait(&mut stop).await {
                    break;
                }
                continue;
            }
        };
        t.connects += 1;
        backoff.reset();
        b.set_timeout(POLL);
        live.binary_up[idx].store(true, Ordering::Relaxed);
        let ended = loop {
            if *stop.borrow() {
                let _ = b.close(1000).await;
                live.binary_up[idx].store(false, Ordering::Relaxed);
                break 'run;
            }
            let env = match b.recv_envelope().await {
                Ok(env) => env,
                Err(ClientError::Timeout { .. }) => continue,
                Err(e) => break e,
            };
            let Some(frame) = env.frame() else {
                continue; // a close notice (§4.3)
            };
            t.received += 1;
            match message::decode(frame.as_bytes()) {
                Some(Stamp { seq, .. }) if frame.len() == cfg.size => {
                    let phone = seq >> SEQ_BITS;
                    if let Err(prev) = order.see(phone, seq) {
                        t.out_of_order += 1;
                        live.violation(format!(
                            "binary {idx}: phone {phone}'s message {} after {} (phone → binary)",
                            seq & ((1 << SEQ_BITS) - 1),
                            prev & ((1 << SEQ_BITS) - 1)
                        ));
                    }
                }
                _ => t.corrupt += 1,
            }
            // The envelope's frame is the phone's bytes: echo them to that phone.
            if let Err(e) = b.send_to(&env.conn_id, frame).await {
                break e;
            }
            t.echoed += 1;
        };
        live.binary_up[idx].store(false, Ordering::Relaxed);
        if let ClientError::Closed { code: 4409, .. } = ended {
            t.conflicts += 1;
            live.violation(format!(
                "binary {idx} was closed 4409 for its own server-id"
            ));
        }
        bump(&mut t.refusals, why(&ended));
        if !backoff.wait(&mut stop).await {
            break;
        }
    }
    t
}

async fn phone_task(
    addr: SocketAddr,
    sid: String,
    idx: usize,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
    cfg: ReconnectConfig,
) -> PhoneTally {
    let mut t = PhoneTally::default();
    let mut backoff = Backoff::new(&cfg, (idx as u64) << 32);
    let mut n = 0u64;
    let mut order = Ascending::default();
    let mut buf = Vec::with_capacity(cfg.size);
    'run: while !*stop.borrow() {
        let mut p = match FakePhone::builder(addr, &sid)
            .timeout(CONNECT_WAIT)
            .connect()
            .await
        {
            Ok(p) => p,
            Err(e) => {
                bump(&mut t.refusals, why(&e));
                if !backoff.wait(&mut stop).await {
                    break;
                }
                continue;
            }
        };
        t.connects += 1;
        p.set_timeout(cfg.echo_wait);
        let mut echoed_here = false;
        let ended = loop {
            if *stop.borrow() {
                let _ = p.close(1000).await;
                break 'run;
            }
            let seq = ((idx as u64) << SEQ_BITS) | n;
            if !message::encode(
                &mut buf,
                cfg.size,
                Stamp {
                    seq,
                    sent_ns: live.now_ns(),
                },
            ) {
                t.corrupt += 1;
                break 'run;
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Err(e) = p.send_text(&text).await {
                break e;
            }
            n += 1;
            t.sent += 1;
            match p.recv_text().await {
                Ok(echo) => {
                    match message::decode(echo.as_bytes()) {
                        Some(Stamp { seq, .. })
                            if echo.len() == cfg.size && seq >> SEQ_BITS == idx as u64 =>
                        {
                            if let Err(prev) = order.see(0, seq) {
                                t.out_of_order += 1;
                                live.violation(format!(
                                    "phone {idx}: echo of {} after {} (binary → phone)",
                                    seq & ((1 << SEQ_BITS) - 1),
                                    prev & ((1 << SEQ_BITS) - 1)
                                ));
                            }
                        }
                        _ => t.corrupt += 1,
                    }
                    t.echoed += 1;
                    live.last_echo[idx].store(live.now_ns() + 1, Ordering::Relaxed);
                    if !echoed_here {
                        echoed_here = true;
                        backoff.reset();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(cfg.interval) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
                Err(ClientError::Timeout { .. }) => t.echo_timeouts += 1,
                Err(e) => break e,
            }
        };
        bump(&mut t.refusals, why(&ended));
        if !backoff.wait(&mut stop).await {
            break;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_to_its_ceiling_and_resets() {
        let cfg = ReconnectConfig {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(800),
            ..ReconnectConfig::default()
        };
        let mut b = Backoff::new(&cfg, 1);
        let steps: Vec<Duration> = (0..6).map(|_| b.step()).collect();
        for (i, s) in steps.iter().enumerate() {
            let full = Duration::from_millis(100 << i.min(3));
            assert!(*s >= full / 2 && *s <= full, "step {i}: {s:?}");
        }
        b.reset();
        assert!(b.step() <= Duration::from_millis(100));
    }

    #[test]
    fn config_validation_rejects_what_cannot_run() {
        assert!(ReconnectConfig::default().validate().is_ok());
        for bad in [
            ReconnectConfig {
                phones: 0,
                ..Default::default()
            },
            ReconnectConfig {
                size: 10,
                ..Default::default()
            },
            ReconnectConfig {
                backoff_min: Duration::ZERO,
                ..Default::default()
            },
            ReconnectConfig {
                phones: 1 << 24,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
