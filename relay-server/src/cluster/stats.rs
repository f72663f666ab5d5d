//! Counters of the cluster node (protocol.md §10 "cluster directory operations (§11)"): plain
//! atomics, touched once per directory call or event, never per message.
//!
//! `metrics/export.rs` serves them as:
//! - `pyrycode_relay_cluster_directory_operations_total{op,outcome}` ([`Op`] × [`Outcome`];
//!   `op="lease"` is [`Op::Refresh`]);
//! - `pyrycode_relay_cluster_events_total{event}` ([`Event`]);
//! - `pyrycode_relay_cluster_degraded` (gauge, 0/1, from `ClusterNode::health`).
//!
//! Forwarded connections are counted by the request path in `Metrics::cluster_forwarded`.

use std::sync::atomic::{AtomicU64, Ordering};

/// A kind of directory call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Join,
    Refresh,
    Claim,
    Locate,
    Release,
    Reassert,
    Purge,
    Leave,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Join,
        Op::Refresh,
        Op::Claim,
        Op::Locate,
        Op::Release,
        Op::Reassert,
        Op::Purge,
        Op::Leave,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Join => "join",
            Op::Refresh => "refresh",
            Op::Claim => "claim",
            Op::Locate => "locate",
            Op::Release => "release",
            Op::Reassert => "reassert",
            Op::Purge => "purge",
            Op::Leave => "leave",
        }
    }
}

/// How a directory call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The directory answered no because of this node's own state: its lease is gone
    /// (claim or reassert refused, refresh found it gone) or another process holds its id.
    Conflict,
    /// Unreachable, a server error, or an unexpected reply.
    Error,
    /// No answer within the request path's bound (2 s).
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Conflict,
        Outcome::Error,
        Outcome::Timeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Rare events of the node's life in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A refresh found our liveness entry gone: we rejoined with a fresh epoch.
    Fenced,
    /// A slot another node took while our lease was gone, closed with 1012.
    SlotLost,
    /// A claim took over an entry whose node was dead.
    Takeover,
    /// Another process joined under our node id; this one stopped claiming.
    Usurped,
}

impl Event {
    pub const ALL: [Event; 4] = [
        Event::Fenced,
        Event::SlotLost,
        Event::Takeover,
        Event::Usurped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Fenced => "fenced",
            Event::SlotLost => "slot_lost",
            Event::Takeover => "takeover",
            Event::Usurped => "usurped",
        }
    }
}

#[derive(Debug, Default)]
pub struct ClusterStats {
    ops: [[AtomicU64; 4]; 8],
    events: [AtomicU64; 4],
}

fn index<T: PartialEq>(all: &[T], v: &T) -> usize {
    all.iter().position(|x| x == v).unwrap_or(0)
}

impl ClusterStats {
    pub fn op(&self, op: Op, outcome: Outcome) {
        self.ops[index(&Op::ALL, &op)][index(&Outcome::ALL, &outcome)]
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn event(&self, e: Event) {
        self.events[index(&Event::ALL, &e)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn ops(&self, op: Op, outcome: Outcome) -> u64 {
        self.ops[index(&Op::ALL, &op)][index(&Outcome::ALL, &outcome)].load(Ordering::Relaxed)
    }

    pub fn events(&self, e: Event) -> u64 {
        self.events[index(&Event::ALL, &e)].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_its_own() {
        let s = ClusterStats::default();
        for (i, op) in Op::ALL.iter().enumerate() {
            for (j, o) in Outcome::ALL.iter().enumerate() {
                for _ in 0..(i * 4 + j + 1) {
                    s.op(*op, *o);
                }
            }
        }
        for (i, op) in Op::ALL.iter().enumerate() {
            for (j, o) in Outcome::ALL.iter().enumerate() {
                assert_eq!(s.ops(*op, *o), (i * 4 + j + 1) as u64);
            }
        }
        s.event(Event::SlotLost);
        assert_eq!(s.events(Event::SlotLost), 1);
        assert_eq!(s.events(Event::Fenced), 0);
    }
}
