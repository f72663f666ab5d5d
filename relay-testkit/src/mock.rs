//! A mock [`Conn`] that records what the relay sent it and how it was closed.
//!
//! Cheap to clone (clones share the record), so a test keeps one handle and gives the other
//! to the registry. Follows the `Conn` contract: `send` after `close` answers `Closed`, the
//! first close wins, and an optional byte budget answers `Full` and closes the conn
//! 1011 "phone backlog full", as a real phone's outbox does.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use relay_core::{Close, Conn, ConnId, SendError};

#[derive(Clone, Debug)]
pub struct MockConn {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: ConnId,
    budget: Option<usize>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    sent: Vec<Bytes>,
    queued_bytes: usize,
    closed: Option<Close>,
    close_calls: usize,
}

impl MockConn {
    /// A conn with a fresh random id and no queue budget.
    pub fn new() -> Self {
        Self::with_budget(None)
    }

    /// A conn whose queue holds at most `budget` bytes before it closes itself.
    pub fn with_budget(budget: Option<usize>) -> Self {
        MockConn {
            inner: Arc::new(Inner {
                id: ConnId::random(),
                budget,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every message accepted so far, in order.
    pub fn sent(&self) -> Vec<Bytes> {
        self.state().sent.clone()
    }

    /// The accepted messages as UTF-8 strings.
    pub fn sent_text(&self) -> Vec<String> {
        self.sent()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// Takes the accepted messages, leaving the record empty.
    pub fn take_sent(&self) -> Vec<Bytes> {
        let mut st = self.state();
        st.queued_bytes = 0;
        std::mem::take(&mut st.sent)
    }

    /// The close that won, if any.
    pub fn closed(&self) -> Option<Close> {
        self.state().closed
    }

    /// How many times `close` was called (the first one wins).
    pub fn close_calls(&self) -> usize {
        self.state().close_calls
    }
}

impl Default for MockConn {
    fn default() -> Self {
        Self::new()
    }
}

impl Conn for MockConn {
    fn id(&self) -> &ConnId {
        &self.inner.id
    }

    fn send(&self, msg: Bytes) -> Result<(), SendError> {
        let mut st = self.state();
        if st.closed.is_some() {
            return Err(SendError::Closed(msg));
        }
        if let Some(budget) = self.inner.budget {
            if st.queued_bytes + msg.len() > budget {
                st.closed = Some(Close::BACKLOG_FULL);
                st.close_calls += 1;
                return Err(SendError::Full(msg));
            }
        }
        st.queued_bytes += msg.len();
        st.sent.push(msg);
        Ok(())
    }

    fn close(&self, close: Close) {
        let mut st = self.state();
        st.close_calls += 1;
        if st.closed.is_none() {
            st.closed = Some(close);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_sends_and_first_close_wins() {
        let c = MockConn::new();
        c.send(Bytes::from_static(b"a")).unwrap();
        c.close(Close::NORMAL);
        c.close(Close::TOO_BIG);
        assert_eq!(c.closed(), Some(Close::NORMAL));
        assert_eq!(c.close_calls(), 2);
        assert!(matches!(
            c.send(Bytes::from_static(b"b")),
            Err(SendError::Closed(_))
        ));
        assert_eq!(c.sent_text(), vec!["a"]);
    }

    #[test]
    fn over_budget_is_full_and_closes_backlog_full() {
        let c = MockConn::with_budget(Some(3));
        c.send(Bytes::from_static(b"ab")).unwrap();
        assert!(matches!(
            c.send(Bytes::from_static(b"cd")),
            Err(SendError::Full(_))
        ));
        assert_eq!(c.closed(), Some(Close::BACKLOG_FULL));
    }
}
