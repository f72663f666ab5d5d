//! The synchronisation primitives the registry uses, swapped for loom's under `--cfg loom`
//! so the model checker can explore every interleaving of the registry's locks and atomics.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};

/// Locks `m`, recovering from poisoning: every registry critical section leaves the state
/// consistent before anything that can panic, so a panic elsewhere must not wedge a server-id.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
