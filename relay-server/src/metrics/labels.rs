//! The fixed label sets of every series (§10: "label values from fixed sets only"). Values
//! the Go relay's series have keep their spelling, so its dashboards keep working.

/// A label enum: every value, its index, its spelling on the wire.
pub trait Label: Copy + Eq + std::fmt::Debug + 'static {
    /// The label's name in the series.
    const NAME: &'static str;
    const ALL: &'static [Self];
    fn index(self) -> usize;
    fn as_str(self) -> &'static str;
}

macro_rules! label {
    ($(#[$doc:meta])* $name:ident = $label:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl Label for $name {
            const NAME: &'static str = $label;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn index(self) -> usize {
                self as usize
            }
            fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

label!(
    /// `frames_forwarded_total{direction}` (Go relay's names).
    Direction = "direction" {
        PhoneToBinary => "phone_to_binary",
        BinaryToPhone => "binary_to_phone",
    }
);

label!(
    /// `ws_upgrade_attempts_total{endpoint}` (Go relay's names).
    Endpoint = "endpoint" {
        Server => "server",
        Client => "client",
    }
);

label!(
    /// `ws_upgrade_attempts_total{outcome}`: the Go relay's six values first, then ours. Each
    /// attempt gets exactly one: an HTTP refusal, or the registry's decision after the upgrade.
    UpgradeOutcome = "outcome" {
        Accept => "accept",
        RejectHeaders => "reject_headers",
        Reject409 => "reject_409",
        Reject404 => "reject_404",
        Reject429 => "reject_429",
        RejectRateLimit => "reject_rate_limit",
        RejectIpConnections => "reject_ip_connections",
        RejectCapacity => "reject_capacity",
        RejectHost => "reject_host",
        RejectMethod => "reject_method",
        RejectUnavailable => "reject_unavailable",
        Forwarded => "forwarded",
    }
);

label!(
    /// `register_failures_total{kind}` (Go relay's names).
    RegisterFailure = "kind" {
        NoServer => "no_server",
        ServerInUse => "server_in_use",
        PhonesAtCap => "phones_at_cap",
        RateLimit => "ratelimit",
    }
);

label!(
    /// `closes_total{role}`.
    Role = "role" {
        Binary => "binary",
        Phone => "phone",
    }
);

label!(
    /// `closes_total{reason}`: every row of §5, and how peers end connections themselves.
    CloseReason = "reason" {
        Normal => "normal",
        ShuttingDown => "shutting_down",
        ProtocolError => "protocol_error",
        NotJson => "frame_not_json",
        InvalidUtf8 => "invalid_utf8",
        TooSlow => "message_too_slow",
        TooBig => "message_too_big",
        HeartbeatTimeout => "heartbeat_timeout",
        BacklogFull => "phone_backlog_full",
        WriteTimeout => "write_timeout",
        GraceExpired => "binary_did_not_reconnect",
        InternalError => "internal_error",
        ServiceRestart => "service_restart",
        NoServer => "no_server",
        Reclaimed => "binary_reclaimed",
        AlreadyClaimed => "already_claimed",
        TooManyPhones => "too_many_phones",
        ByBinary => "requested_by_binary",
        PeerClosed => "peer_closed",
        Vanished => "vanished",
        Other => "other",
    }
);

label!(
    /// `drops_total{reason}`: messages the relay did not deliver.
    DropReason = "reason" {
        MalformedEnvelope => "malformed_envelope",
        UnknownConnId => "unknown_conn_id",
        OversizeMessage => "oversize_binary_message",
        HeldThenDropped => "held_then_dropped",
        BacklogOverflow => "backlog_overflow",
        BinaryGone => "binary_gone",
        DuringProbe => "during_conflict_probe",
    }
);

label!(
    /// `reclaims_total{policy}`.
    ReclaimPolicyLabel = "policy" {
        Evict => "evict",
        Inherit => "inherit",
    }
);

label!(
    /// `admission_refusals_total{limit}` (§8).
    AdmissionLimit = "limit" {
        RatePerIp => "rate_per_ip",
        ConnectionsPerIp => "connections_per_ip",
        Connections => "connections",
        HeaderTimeout => "header_read_timeout",
        HandshakeTimeout => "handshake_timeout",
    }
);

label!(
    /// `push_wakes_total{outcome}` (§4.4, Go relay's names).
    PushOutcome = "outcome" {
        Sent => "sent",
        Unregistered => "unregistered",
        SendFailed => "send_failed",
        TokenFetchFailed => "token_fetch_failed",
        Dropped => "dropped",
    }
);

label!(
    /// `acme_orders_total{outcome}` (§9).
    AcmeOutcome = "outcome" {
        Issued => "issued",
        Renewed => "renewed",
        Failed => "failed",
    }
);

label!(
    /// `cluster_directory_operations_total{op}` (§11): `lease` is the liveness refresh.
    ClusterOp = "op" {
        Claim => "claim",
        Locate => "locate",
        Release => "release",
        Lease => "lease",
        Leave => "leave",
        Join => "join",
        Reassert => "reassert",
        Purge => "purge",
    }
);

label!(
    /// `cluster_directory_operations_total{outcome}`: `conflict` is the directory refusing
    /// because this node's lease is gone (or its id taken by another process).
    ClusterOutcome = "outcome" {
        Ok => "ok",
        Conflict => "conflict",
        Error => "error",
        Timeout => "timeout",
    }
);

label!(
    /// `cluster_forwarded_connections_total{outcome}`: `out` spliced to the holder, `in`
    /// arrived on the cluster listener with a valid link header, `refused` arrived without
    /// one (closed with no bytes), `failed` the holder could not be reached (503).
    ForwardOutcome = "outcome" {
        Out => "out",
        In => "in",
        Refused => "refused",
        Failed => "failed",
    }
);

label!(
    /// `cluster_events_total{event}` (§11): the node's rare moments in the directory.
    ClusterEvent = "event" {
        Fenced => "fenced",
        SlotLost => "slot_lost",
        Takeover => "takeover",
        Usurped => "usurped",
    }
);

label!(
    /// `panics_total{point}`: where a connection task panicked.
    PanicPoint = "point" {
        Reader => "reader",
        Writer => "writer",
        Routing => "routing",
        Other => "other",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check<L: Label>() {
        for (i, l) in L::ALL.iter().enumerate() {
            assert_eq!(l.index(), i);
            let s = l.as_str();
            assert!(
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{s}"
            );
        }
    }

    #[test]
    fn label_values_are_prometheus_friendly_and_indexed_in_order() {
        check::<Direction>();
        check::<Endpoint>();
        check::<UpgradeOutcome>();
        check::<RegisterFailure>();
        check::<Role>();
        check::<CloseReason>();
        check::<DropReason>();
        check::<ReclaimPolicyLabel>();
        check::<AdmissionLimit>();
        check::<PushOutcome>();
        check::<AcmeOutcome>();
        check::<ClusterOp>();
        check::<ClusterOutcome>();
        check::<ForwardOutcome>();
        check::<ClusterEvent>();
        check::<PanicPoint>();
    }
}
