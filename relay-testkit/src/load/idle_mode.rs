//! `idle` mode: open many connections, hold them without traffic, and measure how much resident
//! memory the server spent on them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fastwebsockets::OpCode;
use tokio::sync::watch;

use super::conn::{self, Upgraded};
use super::progress::Progress;
use super::report::{group_digits, IdleReport};
use super::{
    connect_binaries, connect_many, phone_ids, server_ids, sys, ErrorSample, IdleConfig, LoadError,
    Role, Target,
};

/// Runs one `idle` load against `target` and reports it.
pub async fn run_idle(target: Target, cfg: &IdleConfig) -> Result<IdleReport, LoadError> {
    cfg.validate()?;
    let rss = |pid: u32| sys::rss_bytes(pid).map_err(LoadError::Rss);
    let rss_before = cfg.server_pid.map(rss).transpose()?;

    let ids = server_ids(cfg.binaries);
    let connected = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    // Dropping the sender (early return included) also releases every held connection.
    let (stop, stopped) = watch::channel(false);
    let began = Instant::now();

    let progress = Progress::start(cfg.progress, {
        let (connected, open) = (Arc::clone(&connected), Arc::clone(&open));
        let total = cfg.phones + if target.direct { 0 } else { cfg.binaries };
        let pid = cfg.server_pid;
        move |elapsed| {
            let connected = connected.load(Ordering::Relaxed);
            let phase = if connected < total as u64 {
                "connecting"
            } else {
                "holding"
            };
            let rss = pid
                .and_then(|pid| sys::rss_bytes(pid).ok())
                .map(|b| format!(" | server RSS {:.1} MiB", b as f64 / (1024.0 * 1024.0)))
                .unwrap_or_default();
            format!(
                "relay-load: {:>5.1}s {phase:<10} {}/{} connected | {} open{rss}",
                elapsed.as_secs_f64(),
                group_digits(connected),
                group_digits(total as u64),
                group_digits(open.load(Ordering::Relaxed)),
            )
        }
    });

    let mut holders = Vec::new();
    if !target.direct {
        let conns = connect_binaries(
            target.addr,
            &ids,
            cfg.connect_concurrency,
            Arc::clone(&connected),
        )
        .await?;
        for conn in conns {
            holders.push(tokio::spawn(hold(conn, stopped.clone(), Arc::clone(&open))));
        }
    }

    let mut errors = ErrorSample::default();
    let mut phones_failed = 0;
    let phones = connect_many(
        target.addr,
        Role::Phone,
        phone_ids(&ids, cfg.phones),
        cfg.connect_concurrency,
        Arc::clone(&connected),
    )
    .await;
    for conn in phones {
        match conn {
            Ok(conn) => holders.push(tokio::spawn(hold(conn, stopped.clone(), Arc::clone(&open)))),
            Err(e) => {
                phones_failed += 1;
                errors.add(format!("phone could not connect: {e}"));
            }
        }
    }
    let connect_secs = began.elapsed().as_secs_f64();

    tokio::time::sleep(cfg.hold).await;
    let rss_after = cfg.server_pid.map(rss).transpose()?;
    progress.finish().await;

    let _ = stop.send(true);
    let mut closed_while_held = 0;
    for holder in holders {
        let error = match holder.await {
            Ok(error) => error,
            Err(e) => Some(format!("connection task failed: {e}")),
        };
        if let Some(e) = error {
            closed_while_held += 1;
            errors.add(e);
        }
    }

    let binaries = if target.direct { 0 } else { cfg.binaries };
    let phones_connected = cfg.phones as u64 - phones_failed;
    let held = phones_connected + binaries as u64;
    let bytes_per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if held > 0 => {
            Some((after as f64 - before as f64) / held as f64)
        }
        _ => None,
    };
    Ok(IdleReport {
        mode: "idle",
        target: target.name(),
        addr: target.addr.to_string(),
        binaries,
        phones: cfg.phones,
        phones_connected,
        phones_failed,
        closed_while_held,
        connect_secs,
        hold_secs: cfg.hold.as_secs_f64(),
        server_pid: cfg.server_pid,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        bytes_per_connection,
        ok: errors.total == 0,
        errors: errors.kept,
        error_count: errors.total,
    })
}

/// Holds one connection open, answering the server's pings, until `stop`. Returns why it ended
/// early, if it did.
async fn hold(
    conn: Upgraded,
    mut stop: watch::Receiver<bool>,
    open: Arc<AtomicU64>,
) -> Option<String> {
    let mut ws = conn.into_ws();
    open.fetch_add(1, Ordering::Relaxed);
    let ended = loop {
        // Pings are answered inside read_frame; an idle peer sends nothing else, and a read cut
        // short by `stop` only loses what no one is waiting for.
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break None,
            frame = ws.read_frame() => match frame {
                Ok(frame) if frame.opcode == OpCode::Close => {
                    break Some(conn::unexpected_close(&frame.payload));
                }
                Ok(_) => {}
                Err(e) => break Some(format!("connection failed while held: {e}")),
            },
        }
    };
    open.fetch_sub(1, Ordering::Relaxed);
    if ended.is_none() {
        conn::close(&mut ws).await;
    }
    ended
}
