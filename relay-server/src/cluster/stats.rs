//! Counters of the cluster subsystem (protocol.md §10 "cluster directory operations and
//! forwarded connections (§11)"): plain atomics, touched once per directory call or
//! forwarded connection, never per message.
//!
//! The metrics exporter maps them to:
//! - `pyrycode_relay_cluster_directory_ops_total{op=<Op::name>,outcome=<Outcome::name>}`
//! - `pyrycode_relay_cluster_events_total{event=<Event::name>}` (fencing, slots lost, ...)
//! - `pyrycode_relay_cluster_forwarded_total{outcome=<Forwarded::name>}`
//! - `pyrycode_relay_cluster_degraded` (gauge, 0/1, from `ClusterNode::health`).

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
    /// Unreachable, refused, or an unexpected reply.
    Error,
    /// No answer within the request path's bound (2 s).
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Error, Outcome::Timeout];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
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

/// What happened to a connection this node forwarded, or one that arrived on its cluster
/// listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Sent on to the holder and spliced.
    Out,
    /// The holder's cluster listener could not be reached (the client got 503).
    ConnectFailed,
    /// Arrived on our cluster listener with a valid header.
    In,
    /// Arrived on our cluster listener without a valid header: closed with no bytes.
    Rejected,
}

impl Forwarded {
    pub const ALL: [Forwarded; 4] = [
        Forwarded::Out,
        Forwarded::ConnectFailed,
        Forwarded::In,
        Forwarded::Rejected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Forwarded::Out => "out",
            Forwarded::ConnectFailed => "connect_failed",
            Forwarded::In => "in",
            Forwarded::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Default)]
pub struct ClusterStats {
    ops: [[AtomicU64; 3]; 8],
    events: [AtomicU64; 4],
    forwarded: [AtomicU64; 4],
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

    pub fn forwarded(&self, f: Forwarded) {
        self.forwarded[index(&Forwarded::ALL, &f)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn ops(&self, op: Op, outcome: Outcome) -> u64 {
        self.ops[index(&Op::ALL, &op)][index(&Outcome::ALL, &outcome)].load(Ordering::Relaxed)
    }

    pub fn events(&self, e: Event) -> u64 {
        self.events[index(&Event::ALL, &e)].load(Ordering::Relaxed)
    }

    pub fn forwards(&self, f: Forwarded) -> u64 {
        self.forwarded[index(&Forwarded::ALL, &f)].load(Ordering::Relaxed)
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
                for _ in 0..(i * 3 + j + 1) {
                    s.op(*op, *o);
                }
            }
        }
        for (i, op) in Op::ALL.iter().enumerate() {
            for (j, o) in Outcome::ALL.iter().enumerate() {
                assert_eq!(s.ops(*op, *o), (i * 3 + j + 1) as u64);
            }
        }
        s.event(Event::SlotLost);
        s.forwarded(Forwarded::Rejected);
        assert_eq!(s.events(Event::SlotLost), 1);
        assert_eq!(s.events(Event::Fenced), 0);
        assert_eq!(s.forwards(Forwarded::Rejected), 1);
        assert_eq!(s.forwards(Forwarded::In), 0);
    }
}
