//! What the relay lets in and how much it holds for the peers it let in (protocol.md §8).
//!
//! `ip` holds the per-client-IP upgrade rate and live-connection cap (IPv6 per prefix);
//! `budget` is the relay-wide memory budget: one account of every byte held for peers, with
//! back-pressure on the connections that hold the most; `shed` closes the largest phone
//! outboxes when the binary→phone side is what fills it. The per-message path touches it only
//! through the reader's charge on each socket read and the release when a chunk is dropped.

pub mod budget;
pub mod ip;
pub mod shed;
