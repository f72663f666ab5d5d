//! A panic is logged once (issue 11). Inside a connection task the task's own guard logs it,
//! with the connection's id and where it was; anywhere else the panic hook does.
//!
//! The hook runs on the panicking thread before unwinding starts; a connection task polls
//! under [`Guarded`], which marks the thread, so the hook only stashes the location for the
//! guard to pick up ([`take_location`]) while unwinding runs the guard's `Drop`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the hook. Never logs a panic's message (it could quote data), only where it was.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if GUARDED.with(Cell::get) {
            LOCATION.with(|l| *l.borrow_mut() = Some(at));
            return;
        }
        let thread = std::thread::current();
        tracing::error!(err = %at, reason = thread.name().unwrap_or("unnamed"), "a task panicked");
    }));
}

/// Where the panic now unwinding this thread happened, if a guarded task's hook stashed it.
pub fn take_location() -> String {
    LOCATION
        .with(|l| l.borrow_mut().take())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Polls `F` with the thread marked as running a connection task.
pub struct Guarded<F>(pub Pin<Box<F>>);

impl<F: Future> Future for Guarded<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        struct Unmark;
        impl Drop for Unmark {
            fn drop(&mut self) {
                GUARDED.with(|g| g.set(false));
            }
        }
        GUARDED.with(|g| g.set(true));
        let _unmark = Unmark;
        self.0.as_mut().poll(cx)
    }
}
