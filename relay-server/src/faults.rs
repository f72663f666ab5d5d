//! Test-only fault injection (issue 11): make the next connection task that reaches a point
//! panic, to prove that whatever a connection holds is released on every exit path.
//!
//! Reachable only through [`crate::RelayOptions::faults`], which no flag or environment
//! variable sets: the binary never has one. Disarmed, a hit is one branch on `None`.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::metrics::PanicPoint;

/// The points a panic can be injected at.
#[derive(Debug, Default)]
pub struct Faults {
    reader: AtomicU32,
    writer: AtomicU32,
    routing: AtomicU32,
}

impl Faults {
    /// The next `times` connection tasks that reach `point` panic there.
    pub fn arm(&self, point: PanicPoint, times: u32) {
        self.slot(point).store(times, Ordering::SeqCst);
    }

    fn slot(&self, point: PanicPoint) -> &AtomicU32 {
        match point {
            PanicPoint::Reader => &self.reader,
            PanicPoint::Writer => &self.writer,
            PanicPoint::Routing | PanicPoint::Other => &self.routing,
        }
    }

    /// Panics if `point` is armed (and disarms one shot of it).
    pub fn hit(&self, point: PanicPoint) {
        let armed = self
            .slot(point)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if armed {
            panic!("fault injected at {point:?}");
        }
    }
}

/// One cheap check on the hot path: nothing unless a test armed something.
pub fn hit(faults: &Option<std::sync::Arc<Faults>>, point: PanicPoint) {
    if let Some(f) = faults {
        f.hit(point);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_point_panics_exactly_as_many_times_as_armed() {
        let f = Faults::default();
        f.hit(PanicPoint::Reader);
        f.arm(PanicPoint::Reader, 2);
        for _ in 0..2 {
            let r = std::panic::catch_unwind(|| f.hit(PanicPoint::Reader));
            assert!(r.is_err());
        }
        f.hit(PanicPoint::Reader);
        f.hit(PanicPoint::Writer);
    }
}
