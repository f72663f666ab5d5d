//! The heartbeat schedule of one connection (§7): a ping every interval, and a deadline for
//! its pong. Pure: the writer feeds it the time and the pong count.

use std::sync::atomic::Ordering;
use std::time::Duration;

use relay_core::Close;
use tokio::time::Instant;

use super::peer::{Peer, PeerLimits};

/// The heartbeat schedule of one connection (§7): a ping every interval, and a deadline for
/// its pong.
pub(super) struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    /// The unanswered ping: its pong deadline and the pong count when it went out.
    awaiting: Option<(Instant, u64)>,
}

pub(super) enum Beat {
    Nothing,
    Ping,
    TimedOut,
}

impl Heartbeat {
    pub(super) fn new(limits: PeerLimits, now: Instant) -> Self {
        Heartbeat {
            interval: limits.heartbeat_interval,
            timeout: limits.heartbeat_timeout,
            next_ping: now + limits.heartbeat_interval,
            awaiting: None,
        }
    }

    /// When something is next due.
    pub(super) fn deadline(&self) -> Instant {
        match self.awaiting {
            Some((deadline, _)) => deadline.min(self.next_ping),
            None => self.next_ping,
        }
    }

    pub(super) fn tick(&mut self, now: Instant, pongs: u64) -> Beat {
        if let Some((deadline, seen)) = self.awaiting {
            if pongs > seen {
                self.awaiting = None;
            } else if now >= deadline {
                return Beat::TimedOut;
            }
        }
        if now >= self.next_ping {
            self.next_ping = now + self.interval;
            if self.awaiting.is_none() {
                self.awaiting = Some((now + self.timeout, pongs));
                return Beat::Ping;
            }
        }
        Beat::Nothing
    }
}

impl Peer {
    pub(super) fn heartbeat(&self, beat: &mut Heartbeat) {
        match beat.tick(Instant::now(), self.inner.pongs.load(Ordering::Acquire)) {
            Beat::Nothing => {}
            Beat::Ping => self.outbox().ping = true,
            Beat::TimedOut => self.close_now(Close::HEARTBEAT_TIMEOUT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_pings_every_interval_and_times_out_without_a_pong() {
        let limits = PeerLimits {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            queue_bytes: 1,
        };
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(limits, t0);
        assert!(matches!(hb.tick(t0, 0), Beat::Nothing));
        assert_eq!(hb.deadline(), t0 + Duration::from_secs(30));
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(30), 0),
            Beat::Ping
        ));
        assert_eq!(hb.deadline(), t0 + Duration::from_secs(40));
        // A pong arrives: no timeout, next ping at 60 s.
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(40), 1),
            Beat::Nothing
        ));
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(60), 1),
            Beat::Ping
        ));
        // No pong this time: timed out at 70 s.
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(69), 1),
            Beat::Nothing
        ));
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(70), 1),
            Beat::TimedOut
        ));
    }
}
