//! `echo` mode, start to finish: connect the fake binaries, then the phones, run the window, drain,
//! close everything, and turn what every task saw into one [`EchoReport`].

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::binary::{self, BinaryOutcome};
use super::phone::{self, PhoneOutcome};
use super::progress::Progress;
use super::report::{group_digits, EchoReport, LatencySummary};
use super::stats::{Live, RunCtx};
use super::{
    connect_binaries, connect_many, phone_ids, server_ids, EchoConfig, ErrorSample, LoadError,
    Pacing, Role, Target,
};

/// Runs one `echo` load against `target` and reports it.
///
/// Returns `Err` only when the run could not take place (bad configuration, a client could not
/// connect); loss, reordering and connection errors during the run are in the report.
pub async fn run_echo(target: Target, cfg: &EchoConfig) -> Result<EchoReport, LoadError> {
    cfg.validate()?;
    let ids = server_ids(cfg.binaries);
    let connected = Arc::new(AtomicU64::new(0));

    // Binaries first: a phone whose server-id has no binary is closed 4404 (§5).
    let (stop_binaries, binaries_stop) = watch::channel(false);
    let mut binaries = Vec::new();
    if !target.direct {
        let conns = connect_binaries(
            target.addr,
            &ids,
            cfg.connect_concurrency,
            Arc::clone(&connected),
        )
        .await?;
        for conn in conns {
            binaries.push(tokio::spawn(binary::run(
                conn.into_ws(),
                binaries_stop.clone(),
            )));
        }
    }

    let phones = connect_many(
        cfg.phone_addr.unwrap_or(target.addr),
        Role::Phone,
        phone_ids(&ids, cfg.phones),
        cfg.connect_concurrency,
        Arc::clone(&connected),
    )
    .await;
    let phones = phones
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            conn.map_err(|source| LoadError::Connect {
                who: format!("phone {i}"),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let ctx = Arc::new(RunCtx::new(
        cfg.size,
        cfg.warmup,
        cfg.duration,
        cfg.drain_timeout,
    ));
    let tasks: Vec<_> = phones
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let ctx = Arc::clone(&ctx);
            match cfg.pacing {
                Pacing::Closed { window } => tokio::spawn(phone::closed_loop(conn, ctx, window)),
                Pacing::Open { rate } => {
                    // Phone i sends at (i + k·phones) / rate: together, one evenly spaced
                    // schedule at exactly `rate`.
                    let period = Duration::from_secs_f64(cfg.phones as f64 / rate);
                    let first = ctx.start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::spawn(phone::open_loop(conn, ctx, first, period))
                }
            }
        })
        .collect();

    let progress = Progress::start(cfg.progress, {
        let ctx = Arc::clone(&ctx);
        let mut last = 0;
        move |_| {
            let received = Live::get(&ctx.live.received);
            let line = progress_line(&ctx, received - last);
            last = received;
            line
        }
    });

    let mut errors = ErrorSample::default();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => errors.add(format!("phone task failed: {e}")),
        }
    }
    progress.finish().await;

    let _ = stop_binaries.send(true);
    let mut binary_outcomes = Vec::with_capacity(binaries.len());
    for task in binaries {
        match task.await {
            Ok(outcome) => binary_outcomes.push(outcome),
            Err(e) => errors.add(format!("binary task failed: {e}")),
        }
    }

    Ok(build_report(
        target,
        cfg,
        &ctx,
        &outcomes,
        &binary_outcomes,
        errors,
    ))
}

fn progress_line(ctx: &RunCtx, last_second: u64) -> String {
    let now_ns = ctx.now_ns();
    let phase = if now_ns < ctx.measure_start_ns {
        "warmup"
    } else if now_ns < ctx.measure_end_ns {
        "measure"
    } else {
        "drain"
    };
    let sent = Live::get(&ctx.live.sent);
    let received = Live::get(&ctx.live.received);
    format!(
        "relay-load: {:>5.1}s {phase:<7} {:>9} rt/s | {} round trips | {} in flight | {} failed",
        now_ns as f64 / 1e9,
        group_digits(last_second),
        group_digits(received),
        group_digits(sent.saturating_sub(received)),
        Live::get(&ctx.live.failed),
    )
}

fn build_report(
    target: Target,
    cfg: &EchoConfig,
    ctx: &RunCtx,
    phones: &[PhoneOutcome],
    binaries: &[BinaryOutcome],
    mut errors: ErrorSample,
) -> EchoReport {
    let mut failed = 0;
    let (mut sent, mut received, mut lost, mut reordered, mut corrupt) = (0, 0, 0, 0, 0);
    for (i, p) in phones.iter().enumerate() {
        sent += p.sent;
        received += p.arrived;
        lost += p.lost();
        reordered += p.checker.late();
        corrupt += p.corrupt;
        if let Some(e) = &p.error {
            failed += 1;
            errors.add(e.clone());
        }
        if p.lost() > 0 {
            errors.add(format!(
                "phone {i}: {} of {} messages never came back within the drain wait",
                p.lost(),
                p.sent
            ));
        }
    }
    let mut malformed = 0;
    for b in binaries {
        malformed += b.malformed;
        if let Some(e) = &b.error {
            failed += 1;
            errors.add(e.clone());
        }
    }
    if malformed > 0 {
        errors.add(format!("fake binaries got {malformed} malformed envelopes"));
    }

    let latency = ctx.latency();
    let round_trips = Live::get(&ctx.live.measured);
    let duration_secs = cfg.duration.as_secs_f64();
    let (pacing, window, rate) = match cfg.pacing {
        Pacing::Closed { window } => ("closed", Some(window), None),
        Pacing::Open { rate } => ("open", None, Some(rate)),
    };
    let ok = lost == 0
        && reordered == 0
        && corrupt == 0
        && failed == 0
        && malformed == 0
        && errors.total == 0;
    EchoReport {
        mode: "echo",
        target: target.name(),
        addr: target.addr.to_string(),
        pacing,
        window,
        rate,
        binaries: if target.direct { 0 } else { cfg.binaries },
        phones: cfg.phones,
        size: cfg.size,
        warmup_secs: cfg.warmup.as_secs_f64(),
        duration_secs,
        round_trips,
        round_trips_per_sec: round_trips as f64 / duration_secs,
        latency_us: LatencySummary::from_ns_histogram(&latency),
        max_send_lag_us: matches!(cfg.pacing, Pacing::Open { .. }).then(|| {
            let worst = phones.iter().map(|p| p.max_send_lag_ns).max().unwrap_or(0);
            worst as f64 / 1_000.0
        }),
        sent,
        received,
        lost,
        reordered,
        corrupt,
        failed_connections: failed,
        malformed_envelopes: malformed,
        errors: errors.kept,
        error_count: errors.total,
        ok,
    }
}
