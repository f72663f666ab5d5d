//! A binary's connection (protocol.md §6): claim its server-id (probing a live incumbent),
//! hand it what was held during grace, route its envelopes to phones, and put the slot in
//! grace when it leaves.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use relay_core::envelope::{self, close_notice, FromBinary};
use relay_core::{
    Backlog, BinaryLease, Claim, Close, Conn, Expiry, GraceTicket, Held, Installed, ServerId,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use crate::logging::throttle::Throttle;
use crate::metrics::PanicPoint;
use crate::metrics::{
    Direction, DropReason, Endpoint, Metrics, ReclaimPolicyLabel, RegisterFailure, UpgradeOutcome,
};
use crate::shared::Shared;
use crate::ws::peer::{Peer, Role};
use crate::ws::reader::{Inbound, Oversize};
use crate::ws::session;

pub struct BinaryHello {
    pub server_id: ServerId,
    pub version: String,
    pub remote: std::net::SocketAddr,
}

/// A binary whose claim (§6.1) was made before its 101 went out: once the binary sees the
/// 101, a phone it tells to connect finds the server-id held (or in grace), never 4404. Only a
/// conflict's probe (§6.2) is left for after the upgrade.
pub struct Claiming {
    hello: BinaryHello,
    peer: Peer,
    outcome: Claim<Peer>,
}

/// Claims `hello.server_id` for a new binary connection. Call right before answering 101.
pub fn claim_before_upgrade(shared: &Shared, hello: BinaryHello) -> Claiming {
    let peer = shared.new_peer(Role::Binary);
    let outcome = shared.registry.claim(&hello.server_id, peer.clone());
    Claiming {
        hello,
        peer,
        outcome,
    }
}

impl Claiming {
    /// The upgrade never completed: the binary is gone as soon as it came.
    pub fn abandon(self, shared: &Arc<Shared>) {
        self.peer.finish();
        if let Claim::Claimed(mut claimed) = self.outcome {
            claimed.apply();
            if let Some(ticket) = shared.registry.release(&claimed.lease) {
                tokio::spawn(grace_timer(shared.clone(), ticket));
            }
        }
    }
}

pub async fn serve<R, W>(shared: Arc<Shared>, claiming: Claiming, read: R, write: W, prefix: Bytes)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Claiming {
        hello,
        peer,
        outcome,
    } = claiming;
    info!(
        server_id = %hello.server_id,
        conn_id = %peer.id(),
        remote = %hello.remote,
        binary_version = %hello.version,
        "binary connected"
    );
    let lease: Arc<OnceLock<BinaryLease<Peer>>> = Arc::new(OnceLock::new());
    if let Claim::Claimed(claimed) = &outcome {
        let _ = lease.set(claimed.lease.clone());
    }
    let claim = tokio::spawn(claim(
        shared.clone(),
        hello.server_id.clone(),
        peer.clone(),
        lease.clone(),
        outcome,
    ));
    // From here on, however this task ends (a panic included), the slot is released.
    let exit = Exit {
        shared: shared.clone(),
        server_id: hello.server_id.clone(),
        peer: peer.clone(),
        lease: lease.clone(),
    };
    let max = shared.opts.max_binary_message();
    let mut warnings = Throttle::default();
    let ended = session::run(
        &shared,
        &peer,
        read,
        write,
        prefix,
        max,
        Oversize::Discard,
        |msg| {
            // Until the claim is decided the binary holds nothing: what it sends is discarded
            // (§6.2).
            match (lease.get(), msg) {
                (Some(lease), Inbound::Message(msg)) => {
                    route(&shared, lease, &peer, &msg, &mut warnings)
                }
                (Some(lease), Inbound::Oversize(first)) => {
                    oversize(&shared, lease, &first, &mut warnings)
                }
                (None, _) => shared.metrics.drops.inc(DropReason::DuringProbe),
            }
            std::future::ready(Ok(()))
        },
    )
    .await;
    drop(exit);
    // A claim still probing an incumbent finds the connection over and releases what it gets.
    drop(claim);
    info!(
        server_id = %hello.server_id,
        conn_id = %peer.id(),
        close_code = ended.log_fields().0,
        reason = ended.log_fields().1,
        "binary disconnected"
    );
}

/// Releases the binary's slot into grace (§6.3, §6.5) when its connection task ends, however
/// it ends: normally, or unwinding from a panic.
struct Exit {
    shared: Arc<Shared>,
    server_id: ServerId,
    peer: Peer,
    lease: Arc<OnceLock<BinaryLease<Peer>>>,
}

impl Drop for Exit {
    fn drop(&mut self) {
        self.peer.finish();
        // Pairs with the fence in `claim`: of "connection over" and "lease installed", each
        // side writes one and reads the other, so at least one of them sees both.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if let Some(lease) = self.lease.get() {
            release(&self.shared, &self.server_id, &self.peer, lease);
        }
    }
}

/// Puts the slot in grace if `lease` still holds it; a stale or repeated release does nothing.
fn release(shared: &Arc<Shared>, server_id: &ServerId, peer: &Peer, lease: &BinaryLease<Peer>) {
    if let Some(ticket) = shared.registry.release(lease) {
        Metrics::count(&shared.metrics.grace_started);
        info!(server_id = %server_id, conn_id = %peer.id(), "binary gone, grace period started");
        tokio::spawn(grace_timer(shared.clone(), ticket));
    }
}

/// §4.2: one envelope from the binary, zero-copy to the phone; §4.4: a push wake, handed to
/// the push service with one call that never waits.
fn route(
    shared: &Shared,
    lease: &BinaryLease<Peer>,
    binary: &Peer,
    msg: &Bytes,
    warnings: &mut Throttle,
) {
    crate::faults::hit(&shared.opts.faults, PanicPoint::Routing);
    let env = match envelope::parse_from_binary(msg) {
        Ok(FromBinary::ToPhone(env)) => env,
        Ok(FromBinary::Wake(wake)) => {
            shared.push.wake(lease.server_id(), &wake);
            return;
        }
        Err(e) => {
            shared.metrics.malformed_envelope(e);
            // §4.2: at most a few per connection per second, with a count of the rest.
            if let Some(suppressed) = warnings.allow() {
                if e.is_wake() {
                    warn!(server_id = %lease.server_id(), reason = e.as_str(), suppressed, "malformed push wake dropped");
                } else {
                    warn!(server_id = %lease.server_id(), reason = e.as_str(), suppressed, "malformed envelope dropped");
                }
            }
            return;
        }
    };
    let Some(phone) = lease.route(&env.conn_id) else {
        shared.metrics.drops.inc(DropReason::UnknownConnId);
        debug!(server_id = %lease.server_id(), "envelope for unknown conn_id dropped");
        return;
    };
    if let Some(frame) = env.frame {
        // A full outbox closes the phone itself (1011 "phone backlog full").
        match phone.send(msg.slice_ref(frame)) {
            Ok(()) => {
                shared
                    .metrics
                    .forwarded(Direction::BinaryToPhone, binary.shard(), frame.len())
            }
            Err(relay_core::SendError::Full(_)) => {
                shared.metrics.drops.inc(DropReason::BacklogOverflow)
            }
            Err(relay_core::SendError::Closed(_)) => {}
        }
    }
    if let Some(code) = env.close {
        phone.close_by_binary(Close::requested(code));
    }
}

/// §7: a message over the binary leg's limit was discarded as it arrived. The binary stays
/// connected; if its first bytes name a phone of this server-id, that phone alone is closed
/// 1009, after what was queued for it before.
fn oversize(shared: &Shared, lease: &BinaryLease<Peer>, first: &[u8], warnings: &mut Throttle) {
    shared.metrics.drops.inc(DropReason::OversizeMessage);
    let phone = envelope::sniff_conn_id(first).and_then(|id| lease.route(&id));
    if let Some(suppressed) = warnings.allow() {
        match &phone {
            Some(phone) => warn!(
                server_id = %lease.server_id(),
                conn_id = %phone.id(),
                suppressed,
                "binary message over the size limit discarded; closing the phone it was for"
            ),
            None => warn!(
                server_id = %lease.server_id(),
                suppressed,
                "binary message over the size limit discarded"
            ),
        }
    }
    if let Some(phone) = phone {
        phone.close(Close::TOO_BIG);
    }
}

async fn claim(
    shared: Arc<Shared>,
    server_id: ServerId,
    peer: Peer,
    lease: Arc<OnceLock<BinaryLease<Peer>>>,
    mut outcome: Claim<Peer>,
) {
    loop {
        match outcome {
            Claim::Claimed(mut claimed) => {
                let evicted = claimed.evicted.len();
                claimed.apply();
                let _ = lease.set(claimed.lease.clone());
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                if peer.is_done() {
                    // The connection ended while the claim was being decided: its exit found
                    // no lease to release, so this does it.
                    release(&shared, &server_id, &peer, &claimed.lease);
                    return;
                }
                shared
                    .metrics
                    .upgrades
                    .inc(Endpoint::Server, UpgradeOutcome::Accept);
                match claimed.how {
                    Installed::Fresh => {}
                    Installed::Reclaimed => {
                        shared
                            .metrics
                            .reclaims
                            .inc(match shared.opts.reclaim_policy {
                                relay_core::ReclaimPolicy::Evict => ReclaimPolicyLabel::Evict,
                                relay_core::ReclaimPolicy::Inherit => ReclaimPolicyLabel::Inherit,
                            })
                    }
                    Installed::TookOver => Metrics::count(&shared.metrics.takeovers),
                }
                match claimed.how {
                    Installed::Fresh => {}
                    Installed::Reclaimed => info!(
                        server_id = %server_id,
                        conn_id = %peer.id(),
                        evicted,
                        "server-id reclaimed during grace"
                    ),
                    Installed::TookOver => info!(
                        server_id = %server_id,
                        conn_id = %peer.id(),
                        evicted,
                        "incumbent failed the liveness probe, server-id taken over"
                    ),
                }
                if claimed.has_backlog {
                    deliver_backlog(&shared, &claimed.lease, &peer).await;
                }
                return;
            }
            Claim::Conflict(incumbent) => {
                if incumbent
                    .binary
                    .probe(shared.opts.conflict_probe_timeout)
                    .await
                {
                    info!(server_id = %server_id, conn_id = %peer.id(), "server-id already claimed by a live binary");
                    shared
                        .metrics
                        .upgrades
                        .inc(Endpoint::Server, UpgradeOutcome::Reject409);
                    shared
                        .metrics
                        .register_failures
                        .inc(RegisterFailure::ServerInUse);
                    peer.close(Close::ALREADY_CLAIMED);
                    return;
                }
                if peer.is_done() {
                    return;
                }
                // §11: the directory may have moved the server-id while the probe ran.
                let Ok(_still_ours) =
                    crate::cluster::runtime::before_takeover(&shared, &server_id).await
                else {
                    peer.close(Close::SERVICE_RESTART);
                    return;
                };
                outcome = shared
                    .registry
                    .takeover(&server_id, &incumbent, peer.clone());
            }
        }
    }
}

/// §6.4: messages held during grace go to the new binary first, in order.
async fn deliver_backlog(shared: &Shared, lease: &BinaryLease<Peer>, binary: &Peer) {
    loop {
        match shared.registry.take_backlog(lease) {
            Backlog::Items(items) => {
                for item in items {
                    let msg = match item.kind {
                        Held::Frame(frame) => item.phone.envelope(frame),
                        Held::Notice(code) => close_notice(item.phone.id(), code).into(),
                    };
                    if binary.send_backpressured(msg).await.is_err() {
                        return;
                    }
                }
            }
            Backlog::Done | Backlog::Lost => return,
        }
    }
}

/// §6.3: when the grace period ends unclaimed, close the server-id's phones.
async fn grace_timer(shared: Arc<Shared>, ticket: GraceTicket) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let deadline = tokio::time::Instant::from_std(ticket.deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = crate::shared::shutdown_signalled(&mut shutdown) => return,
        }
        match shared.registry.expire(&ticket) {
            Expiry::NotYet => continue,
            Expiry::Stale => return,
            mut expired @ Expiry::Expired(_) => {
                if let Expiry::Expired(phones) = &expired {
                    Metrics::count(&shared.metrics.grace_expiries);
                    info!(server_id = %ticket.server_id, phones = phones.len(), "grace period expired");
                }
                expired.apply();
                // §11 "Release": the slot is free here; the directory entry goes too.
                if let Some(cluster) = shared.cluster() {
                    cluster.node.slot_freed(&ticket.server_id).await;
                }
                return;
            }
        }
    }
}
