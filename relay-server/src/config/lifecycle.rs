//! Server-id lifecycle flags (protocol.md §6): grace, the conflict probe, the reclaim policy.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse::{duration, parse_duration};
use super::BootError;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server-id lifecycle")]
pub struct LifecycleArgs {
    /// How long a departed binary's server-id stays reclaimable.
    #[arg(long, env = "PYRYCODE_RELAY_GRACE_PERIOD", value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration)]
    pub grace_period: Duration,

    /// How long a claimed server-id's incumbent has to answer the liveness ping of a newcomer.
    #[arg(long, env = "PYRYCODE_RELAY_CONFLICT_PROBE_TIMEOUT", value_name = "DURATION",
          default_value = "10s", value_parser = parse_duration)]
    pub conflict_probe_timeout: Duration,

    /// What happens at reclaim to phones attached to the previous binary.
    #[arg(long, env = "PYRYCODE_RELAY_RECLAIM_POLICY", value_enum,
          default_value_t = ReclaimPolicyArg::Evict)]
    pub reclaim_policy: ReclaimPolicyArg,
}

/// `--reclaim-policy` (§6.4). Named `*Arg` so it does not clash with the registry's own type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReclaimPolicyArg {
    /// Close phones of the previous binary with 4404 "binary reclaimed server-id".
    Evict,
    /// Hand phones of the previous binary to the reclaiming one.
    Inherit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub grace_period: Duration,
    pub conflict_probe_timeout: Duration,
    pub reclaim_policy: ReclaimPolicyArg,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            grace_period: Duration::from_secs(30),
            conflict_probe_timeout: Duration::from_secs(10),
            reclaim_policy: ReclaimPolicyArg::Evict,
        }
    }
}

pub fn validate(args: &LifecycleArgs) -> Result<Lifecycle, BootError> {
    Ok(Lifecycle {
        grace_period: duration("--grace-period", args.grace_period)?,
        conflict_probe_timeout: duration("--conflict-probe-timeout", args.conflict_probe_timeout)?,
        reclaim_policy: args.reclaim_policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse::MAX_DURATION;
    use crate::config::testing::{err, ok};

    #[test]
    fn durations_over_a_day_are_refused() {
        assert!(matches!(
            err(&["--grace-period", "25h"]),
            BootError::InvalidValue {
                flag: "--grace-period",
                ..
            }
        ));
        assert_eq!(
            ok(&["--grace-period", "24h"]).lifecycle.grace_period,
            MAX_DURATION
        );
    }

    #[test]
    fn reclaim_policy_values() {
        assert_eq!(
            ok(&["--reclaim-policy", "inherit"])
                .lifecycle
                .reclaim_policy,
            ReclaimPolicyArg::Inherit
        );
    }
}
