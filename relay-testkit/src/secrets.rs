//! What the test clients sent that the relay must never log (protocol.md §10): tokens,
//! `User-Agent` strings, message payloads. The clients register them here as they send them;
//! a log-hygiene check (relay-server's `tests/support/hygiene.rs`) looks for every one of them
//! in every line the relay logs.
//!
//! A payload is registered by its first [`PREFIX`] bytes, so even a truncated leak is found;
//! short ones (under [`MIN`] bytes: `1`, `"hi"`) are not, as they would match by accident.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

/// Shortest value registered (tokens and User-Agents too: shorter ones would match by chance).
pub const MIN: usize = 10;
/// How much of a payload is registered.
pub const PREFIX: usize = 32;
/// Most values kept (the check is per log line; bulk tests repeat themselves anyway).
const CAP: usize = 20_000;

/// Every registered value, indexed by its first [`MIN`] bytes: a check is one hash probe per
/// byte of the line, however many values there are.
#[derive(Default)]
struct Registry {
    all: HashSet<String>,
    by_head: HashMap<Vec<u8>, Vec<String>>,
}

static SECRETS: Mutex<Option<Registry>> = Mutex::new(None);

fn add(value: &str) {
    let mut guard = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    let reg = guard.get_or_insert_with(Registry::default);
    if reg.all.len() < CAP && value.len() >= MIN && reg.all.insert(value.to_owned()) {
        reg.by_head
            .entry(value.as_bytes()[..MIN].to_vec())
            .or_default()
            .push(value.to_owned());
    }
}

/// A header value that is a credential or may identify a user (token, User-Agent).
pub fn header(value: &[u8]) {
    if let Ok(s) = std::str::from_utf8(value) {
        add(s.trim());
    }
}

/// A message payload (its first [`PREFIX`] bytes).
pub fn payload(bytes: &[u8]) {
    if bytes.len() < MIN {
        return;
    }
    let head = &bytes[..bytes.len().min(PREFIX)];
    // Cut at a character boundary; a payload that is not UTF-8 cannot appear in a log line.
    let head = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) => match std::str::from_utf8(&head[..e.valid_up_to()]) {
            Ok(s) => s,
            Err(_) => return,
        },
    };
    if head.len() >= MIN {
        add(head);
    }
}

/// The first registered value found in `text`, if any.
pub fn found_in(text: &str) -> Option<String> {
    let guard = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    let reg = guard.as_ref()?;
    let bytes = text.as_bytes();
    if bytes.len() < MIN {
        return None;
    }
    (0..=bytes.len() - MIN).find_map(|i| {
        reg.by_head
            .get(&bytes[i..i + MIN])?
            .iter()
            .find(|secret| bytes[i..].starts_with(secret.as_bytes()))
            .cloned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_found_and_short_ones_ignored() {
        payload(b"{\"unique-payload-7f3a\":\"a value long enough to cut at thirty-two\"}");
        header(b"tok-unique-91c2");
        payload(b"short");
        assert!(found_in("x {\"unique-payload-7f3a\":\"a value lo y").is_some());
        assert!(found_in("token=tok-unique-91c2").is_some());
        assert!(found_in("nothing here").is_none());
        assert!(found_in("short").is_none());
    }
}
