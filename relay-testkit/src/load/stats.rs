//! Where measurements go while a run is live: the run's clock and measurement window, the
//! counters the progress line reads, the shared latency histogram, and the per-connection
//! [`Tally`] that batches updates so no lock or shared cache line is touched per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies are recorded in ns, from 1 ns to this, at 3 significant digits.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// A tally flushes when it holds this many samples...
const FLUSH_SAMPLES: usize = 256;
/// ...or when its last flush is this old, so the progress line stays live at low rates.
const FLUSH_EVERY_NS: u64 = 100_000_000;

/// Counters read once a second by the progress line and at the end by the report.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Round trips completed inside the measurement window.
    pub measured: AtomicU64,
    /// Connections that ended in an error.
    pub failed: AtomicU64,
}

impl Live {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One echo run's shared state, as the phone tasks see it.
pub struct RunCtx {
    /// Clock origin: every timestamp in a message is ns since this instant.
    pub origin: Instant,
    /// When phones send their first message (a little after the origin, so all start together).
    pub start: Instant,
    /// Message size in bytes.
    pub size: usize,
    /// Round trips completing in `[measure_start_ns, measure_end_ns)` are measured; phones stop
    /// sending at `measure_end_ns`.
    pub measure_start_ns: u64,
    pub measure_end_ns: u64,
    /// After the window, how long phones wait for what is still in flight.
    pub drain_deadline: Instant,
    pub live: Live,
    latency: Mutex<Histogram<u64>>,
}

impl RunCtx {
    pub fn new(size: usize, warmup: Duration, duration: Duration, drain: Duration) -> Self {
        let origin = Instant::now();
        // Time for every phone task to be spawned and parked before the first send.
        let lead = Duration::from_millis(20);
        let start = origin + lead;
        let measure_start_ns = nanos(lead + warmup);
        let measure_end_ns = nanos(lead + warmup + duration);
        Self {
            origin,
            start,
            size,
            measure_start_ns,
            measure_end_ns,
            drain_deadline: start + warmup + duration + drain,
            live: Live::default(),
            latency: Mutex::new(new_histogram()),
        }
    }

    /// ns since the origin.
    pub fn ns(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin))
    }

    pub fn now_ns(&self) -> u64 {
        self.ns(Instant::now())
    }

    /// A copy of the latencies recorded so far.
    pub fn latency(&self) -> Histogram<u64> {
        self.latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// A histogram for latencies in ns.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failing here is a programming error.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One connection's unflushed counts and latency samples.
#[derive(Debug)]
pub struct Tally {
    sent: u64,
    received: u64,
    measured: u64,
    samples: Vec<u64>,
    last_flush_ns: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            sent: 0,
            received: 0,
            measured: 0,
            samples: Vec::with_capacity(FLUSH_SAMPLES),
            last_flush_ns: 0,
        }
    }
}

impl Tally {
    pub fn on_sent(&mut self, ctx: &RunCtx, now_ns: u64) {
        self.sent += 1;
        self.maybe_flush(ctx, now_ns);
    }

    /// A round trip completed at `now_ns` for a message stamped `sent_ns`.
    pub fn on_received(&mut self, ctx: &RunCtx, now_ns: u64, sent_ns: u64) {
        self.received += 1;
        if (ctx.measure_start_ns..ctx.measure_end_ns).contains(&now_ns) {
            self.measured += 1;
            self.samples.push(now_ns.saturating_sub(sent_ns));
        }
        self.maybe_flush(ctx, now_ns);
    }

    fn maybe_flush(&mut self, ctx: &RunCtx, now_ns: u64) {
        if self.samples.len() >= FLUSH_SAMPLES
            || now_ns.saturating_sub(self.last_flush_ns) >= FLUSH_EVERY_NS
        {
            self.last_flush_ns = now_ns;
            self.flush(ctx);
        }
    }

    /// Publishes everything held; call once more when the connection ends.
    pub fn flush(&mut self, ctx: &RunCtx) {
        let live = &ctx.live;
        for (counter, pending) in [
            (&live.sent, &mut self.sent),
            (&live.received, &mut self.received),
            (&live.measured, &mut self.measured),
        ] {
            if *pending > 0 {
                counter.fetch_add(*pending, Ordering::Relaxed);
                *pending = 0;
            }
        }
        if !self.samples.is_empty() {
            let mut hist = ctx
                .latency
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for &sample in &self.samples {
                hist.saturating_record(sample.max(1));
            }
            drop(hist);
            self.samples.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_round_trips_inside_the_window_are_measured() {
        let ctx = RunCtx::new(
            64,
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        let (from, to) = (ctx.measure_start_ns, ctx.measure_end_ns);
        let mut tally = Tally::default();
        tally.on_received(&ctx, from - 1, 0); // warmup
        tally.on_received(&ctx, from, from - 500); // first measured, 500 ns
        tally.on_received(&ctx, to - 1, to - 1 - 2_000); // last measured, 2 µs
        tally.on_received(&ctx, to, 0); // drain
        tally.flush(&ctx);
        assert_eq!(Live::get(&ctx.live.received), 4);
        assert_eq!(Live::get(&ctx.live.measured), 2);
        let hist = ctx.latency();
        assert_eq!(hist.len(), 2);
        assert!(hist.equivalent(hist.min(), 500));
        assert!(hist.equivalent(hist.max(), 2_000));
    }
}
