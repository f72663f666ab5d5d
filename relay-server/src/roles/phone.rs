//! A phone's connection (§4.1, §4.3, §6.3): register with its server-id, check and forward
//! its messages to the binary (waiting when the binary's inbox is full), and tell the binary
//! when it leaves.

use std::sync::Arc;

use bytes::Bytes;
use relay_core::envelope::{self, close_notice};
use relay_core::{Close, CloseCode, Conn, Departure, PhoneLease, Registration, ServerId, ToBinary};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use crate::metrics::{
    Direction, DropReason, Endpoint, PanicPoint, RegisterFailure, UpgradeOutcome,
};
use crate::shared::Shared;
use crate::ws::peer::{Peer, Role};
use crate::ws::reader::{Inbound, Oversize, ReadEnd};
use crate::ws::session::{self, Ended};

pub struct PhoneHello {
    pub server_id: ServerId,
    pub device_name: Option<String>,
    pub remote: std::net::SocketAddr,
}

pub async fn serve<R, W>(shared: Arc<Shared>, hello: PhoneHello, read: R, write: W, prefix: Bytes)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let peer = shared.new_peer(Role::Phone);
    let _outbox = shared.outboxes.register(&peer);
    let lease = match shared
        .registry
        .register_phone(&hello.server_id, peer.clone())
    {
        Registration::Attached(lease) | Registration::Pending(lease) => {
            let m = &shared.metrics;
            m.upgrades.inc(Endpoint::Client, UpgradeOutcome::Accept);
            Some(lease)
        }
        Registration::NoServer => {
            let m = &shared.metrics;
            m.upgrades.inc(Endpoint::Client, UpgradeOutcome::Reject404);
            m.register_failures.inc(RegisterFailure::NoServer);
            peer.close(Close::NO_SERVER);
            None
        }
        Registration::TooManyPhones => {
            let m = &shared.metrics;
            m.upgrades.inc(Endpoint::Client, UpgradeOutcome::Reject429);
            m.register_failures.inc(RegisterFailure::PhonesAtCap);
            peer.close(Close::TOO_MANY_PHONES);
            None
        }
    };
    match (&lease, peer.close_request()) {
        (Some(_), _) => info!(
            server_id = %hello.server_id,
            conn_id = %peer.id(),
            remote = %hello.remote,
            device_name = hello.device_name.as_deref().unwrap_or(""),
            "phone connected"
        ),
        (None, close) => info!(
            server_id = %hello.server_id,
            conn_id = %peer.id(),
            remote = %hello.remote,
            close_code = close.map_or(0, |c| c.close.code.as_u16()),
            reason = close.map_or("", |c| c.close.reason),
            "phone refused after the upgrade"
        ),
    }
    // From here on, however this task ends (a panic included), the phone is unregistered.
    let mut exit = Exit {
        shared: shared.clone(),
        peer: peer.clone(),
        lease,
        departure: Departure::Closed(Close::INTERNAL_ERROR.code),
    };
    let max = shared.opts.max_message_size;
    let ended = session::run(
        &shared,
        &peer,
        read,
        write,
        prefix,
        max,
        Oversize::Close,
        |msg| forward(&shared, &peer, exit.lease.as_ref(), msg),
    )
    .await;
    let registered = exit.lease.is_some();
    exit.departure = departure(&shared, &ended);
    drop(exit);
    if registered {
        let (close_code, reason) = ended.log_fields();
        info!(server_id = %hello.server_id, conn_id = %peer.id(), close_code, reason, "phone disconnected");
    }
}

/// Unregisters the phone (§4.3: and tells its binary how it left) when its connection task
/// ends, however it ends: normally, or unwinding from a panic (then as closed 1011).
struct Exit {
    shared: Arc<Shared>,
    peer: Peer,
    lease: Option<PhoneLease<Peer>>,
    departure: Departure,
}

impl Drop for Exit {
    fn drop(&mut self) {
        self.peer.finish();
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Some(notice) = self
            .shared
            .registry
            .unregister_phone(&lease, self.departure)
        {
            let msg = close_notice(self.peer.id(), notice.code);
            // Queued behind everything this phone already sent; waits if the inbox is full.
            tokio::spawn(async move {
                let _ = notice.binary.send_backpressured(msg).await;
            });
        }
    }
}

/// §4.1: check the message is JSON, then send it on (or hold it, during grace).
async fn forward(
    shared: &Shared,
    peer: &Peer,
    lease: Option<&PhoneLease<Peer>>,
    msg: Inbound,
) -> Result<(), Close> {
    crate::faults::hit(&shared.opts.faults, PanicPoint::Routing);
    // A phone's reader closes over-size messages itself (§7); it never reports one.
    let Inbound::Message(msg) = msg else {
        return Err(Close::TOO_BIG);
    };
    envelope::validate_phone_frame(&msg).map_err(|_| Close::NOT_JSON)?;
    let Some(lease) = lease else {
        return Ok(());
    };
    match lease.route(msg) {
        ToBinary::Forward { binary, frame } => {
            // Spliced around the phone's own bytes by the binary's writer: no copy (§4.1).
            let len = frame.len();
            let env = peer.envelope(frame);
            if binary.send_backpressured(env).await.is_err() {
                shared.metrics.drops.inc(DropReason::BinaryGone);
                debug!(server_id = %lease.server_id(), "binary gone, phone message dropped");
            } else {
                shared
                    .metrics
                    .forwarded(Direction::PhoneToBinary, peer.shard(), len);
            }
            Ok(())
        }
        ToBinary::Held | ToBinary::Gone => Ok(()),
        ToBinary::Dropped => {
            shared.metrics.drops.inc(DropReason::HeldThenDropped);
            Ok(())
        }
        ToBinary::Overflow => {
            shared.metrics.drops.inc(DropReason::BacklogOverflow);
            Err(Close::BACKLOG_FULL)
        }
    }
}

/// §4.3: which close code the binary hears about, if any: none for a close the binary asked
/// for or at shutdown; else the relay's code if the relay closed first, the phone's own code,
/// or 1001 when it vanished or sent no code.
fn departure(shared: &Shared, ended: &Ended) -> Departure {
    if shared.is_shutting_down() {
        return Departure::Silent;
    }
    match (ended.relay_close, ended.read) {
        (Some(req), _) if req.by_binary => Departure::Silent,
        (Some(req), _) => Departure::Closed(req.close.code),
        (None, ReadEnd::PeerClosed(Some(code))) => Departure::Closed(code),
        (None, ReadEnd::Violation(close)) => Departure::Closed(close.code),
        (None, _) => Departure::Closed(CloseCode::GOING_AWAY),
    }
}
