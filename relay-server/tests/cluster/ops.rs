//! Driving a [`Directory`] with model operations, and the random operation sequences.

#![allow(dead_code)]

use std::time::Duration;

use proptest::prelude::*;
use relay_server::cluster::directory::{Directory, Epoch};

use super::model::{addr, node, sid, Answer, Model, Op, LEASE_MS, NODES, SIDS};

/// Runs one operation on `dir` with the arguments the model picks (epochs included), and
/// returns its answer. `Advance`, `Lapse` and `Wipe` are the caller's business.
pub async fn drive<D: Directory>(dir: &D, model: &Model, op: &Op) -> Answer {
    let lease = Duration::from_millis(LEASE_MS);
    match *op {
        Op::Join(n) => {
            let floor = model.had[n].iter().max().copied().unwrap_or(Epoch(0));
            Answer::Epoch(dir.join(&node(n), &addr(n), lease, floor).await.unwrap())
        }
        Op::Refresh(n) => Answer::Refresh(
            dir.refresh(&node(n), model.acting_epoch(n), lease)
                .await
                .unwrap(),
        ),
        Op::Claim(n, s) => Answer::Claim(
            dir.claim(&sid(s), &node(n), model.acting_epoch(n))
                .await
                .unwrap(),
        ),
        Op::Locate(n, s) => Answer::Holder(dir.locate(&sid(s), &node(n)).await.unwrap()),
        Op::Release(n, s, stale) => {
            let e = if stale {
                match model.stale_epoch(n) {
                    Some(e) => e,
                    None => return Answer::Skipped,
                }
            } else {
                model.acting_epoch(n)
            };
            Answer::Released(dir.release(&sid(s), &node(n), e).await.unwrap())
        }
        Op::Reassert(n, ref sids) => {
            let sids: Vec<_> = sids.iter().map(|&s| sid(s)).collect();
            Answer::Reassert(
                dir.reassert(&node(n), model.acting_epoch(n), &sids)
                    .await
                    .unwrap(),
            )
        }
        Op::Purge(n) => Answer::Purged(dir.purge(&node(n), model.acting_epoch(n)).await.unwrap()),
        Op::Leave(n) => {
            dir.leave(&node(n), model.acting_epoch(n)).await.unwrap();
            Answer::Done
        }
        Op::Advance(_) | Op::Lapse(_) | Op::Wipe => Answer::Done,
    }
}

fn n() -> impl Strategy<Value = usize> {
    0..NODES
}

fn s() -> impl Strategy<Value = usize> {
    // Most of the action on one server-id, so contested histories happen.
    prop_oneof![6 => Just(0usize), 1 => Just(1), 1 => Just(SIDS - 1)]
}

/// Operations for a directory with a clock (`with_time`) or without (Redis: expiry is
/// `Lapse`, exactly).
pub fn op(with_time: bool) -> BoxedStrategy<Op> {
    let advance = if with_time {
        prop_oneof![
            Just(1u64),
            Just(LEASE_MS / 3),
            Just(LEASE_MS - 1),
            Just(LEASE_MS)
        ]
        .prop_map(Op::Advance)
        .boxed()
    } else {
        n().prop_map(Op::Lapse).boxed()
    };
    prop_oneof![
        3 => n().prop_map(Op::Join),
        3 => n().prop_map(Op::Refresh),
        3 => advance,
        1 => n().prop_map(Op::Lapse),
        6 => (n(), s()).prop_map(|(n, s)| Op::Claim(n, s)),
        3 => (n(), s()).prop_map(|(n, s)| Op::Locate(n, s)),
        3 => (n(), s(), any::<bool>()).prop_map(|(n, s, st)| Op::Release(n, s, st)),
        2 => (n(), prop::collection::vec(0..SIDS, 0..4)).prop_map(|(n, v)| Op::Reassert(n, v)),
        1 => n().prop_map(Op::Purge),
        1 => n().prop_map(Op::Leave),
        1 => Just(Op::Wipe),
    ]
    .boxed()
}
