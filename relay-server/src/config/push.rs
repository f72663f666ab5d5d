//! Push wake flags (protocol.md §4.4): the FCM service-account key and where to send.
//!
//! The key itself comes from `PYRYCODE_RELAY_FCM_CREDENTIALS` (the JSON, as §4.4 says) or
//! from the file `--fcm-credentials` names. Nothing here reads or parses it; `--help` never
//! shows the variable's value and no error quotes it.

use std::fmt;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use super::parse::invalid;
use super::BootError;

/// FCM HTTP v1's endpoint (§4.4).
pub const FCM_ENDPOINT: &str = "https://fcm.googleapis.com";

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Push wake")]
pub struct PushArgs {
    /// Google service-account key (JSON) for FCM: a FILE on the command line; the variable
    /// holds the JSON itself. Unset = push wake off. [default: unset]
    #[arg(
        long,
        env = "PYRYCODE_RELAY_FCM_CREDENTIALS",
        value_name = "FILE",
        hide_env_values = true
    )]
    pub fcm_credentials: Option<String>,

    /// FCM project to send through. [default: the key's project_id]
    #[arg(long, env = "PYRYCODE_RELAY_FCM_PROJECT_ID", value_name = "ID")]
    pub fcm_project_id: Option<String>,

    /// Base URL of the FCM HTTP v1 API. [default: https://fcm.googleapis.com]
    #[arg(long, env = "PYRYCODE_RELAY_FCM_ENDPOINT", value_name = "URL")]
    pub fcm_endpoint: Option<String>,

    /// Extra PEM root certificate to trust for FCM and the token endpoint (tests).
    /// [default: the built-in web PKI roots]
    #[arg(long, env = "PYRYCODE_RELAY_FCM_CA_ROOT", value_name = "FILE")]
    pub fcm_ca_root: Option<PathBuf>,
}

/// Where the service-account key is. Its `Debug` never shows the inline JSON.
#[derive(Clone, PartialEq, Eq)]
pub enum FcmCredentials {
    /// `--fcm-credentials FILE`.
    File(PathBuf),
    /// `PYRYCODE_RELAY_FCM_CREDENTIALS`: the JSON itself.
    Inline(String),
}

impl fmt::Debug for FcmCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FcmCredentials::File(path) => f.debug_tuple("File").field(path).finish(),
            FcmCredentials::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub credentials: FcmCredentials,
    /// `None`: the key's `project_id`.
    pub project_id: Option<String>,
    /// Without a trailing slash.
    pub endpoint: String,
    pub ca_root: Option<PathBuf>,
}

/// `None` when no key is configured (push wake off); then the other push flags are refused
/// rather than ignored.
pub fn validate(args: &PushArgs, matches: &ArgMatches) -> Result<Option<Push>, BootError> {
    let credentials = match args.fcm_credentials.as_deref() {
        None => None,
        Some(raw) if raw.trim().is_empty() => None,
        Some(raw) => Some(match matches.value_source("fcm_credentials") {
            Some(ValueSource::EnvVariable) => FcmCredentials::Inline(raw.to_owned()),
            _ => FcmCredentials::File(PathBuf::from(raw)),
        }),
    };
    let Some(credentials) = credentials else {
        let given = [
            ("--fcm-project-id", args.fcm_project_id.is_some()),
            ("--fcm-endpoint", args.fcm_endpoint.is_some()),
            ("--fcm-ca-root", args.fcm_ca_root.is_some()),
        ];
        return match given.into_iter().find(|(_, set)| *set) {
            Some((flag, _)) => Err(BootError::NotApplicable {
                flag,
                applies: "with --fcm-credentials or PYRYCODE_RELAY_FCM_CREDENTIALS",
            }),
            None => Ok(None),
        };
    };
    let project_id = match &args.fcm_project_id {
        Some(id) => Some(validate_project_id(id)?),
        None => None,
    };
    let endpoint = match &args.fcm_endpoint {
        Some(url) => validate_endpoint(url)?,
        None => FCM_ENDPOINT.to_owned(),
    };
    Ok(Some(Push {
        credentials,
        project_id,
        endpoint,
        ca_root: args.fcm_ca_root.clone(),
    }))
}

/// Google project ids are 6–30 of `[a-z0-9-]`; accept a little more, never a path separator.
pub fn validate_project_id(raw: &str) -> Result<String, BootError> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b':' || b == b'.'
        });
    if !ok {
        return Err(invalid(
            "--fcm-project-id",
            "expected a Google project id such as my-project-123",
        ));
    }
    Ok(raw.to_owned())
}

fn validate_endpoint(raw: &str) -> Result<String, BootError> {
    let url = raw.trim_end_matches('/');
    let rest = url.strip_prefix("https://").unwrap_or("");
    if rest.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(invalid(
            "--fcm-endpoint",
            "expected an https:// URL such as https://fcm.googleapis.com",
        ));
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{ok, parse_env};
    use crate::config::BootContext;

    #[test]
    fn no_key_means_push_off_and_other_push_flags_are_refused() {
        assert_eq!(ok(&[]).push, None);
        for (args, flag) in [
            (&["--fcm-project-id", "p"][..], "--fcm-project-id"),
            (&["--fcm-endpoint", "https://x"][..], "--fcm-endpoint"),
            (&["--fcm-ca-root", "ca.pem"][..], "--fcm-ca-root"),
        ] {
            let e = parse_env(args, &[], BootContext::default()).expect_err("refused");
            assert!(
                matches!(e, BootError::NotApplicable { flag: f, .. } if f == flag),
                "{args:?}: {e}"
            );
        }
    }

    #[test]
    fn the_variable_holds_the_json_and_the_flag_a_file() {
        let json = r#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----"}"#;
        let from_env = validate_cli(&[], &[("PYRYCODE_RELAY_FCM_CREDENTIALS", json)]);
        assert_eq!(
            from_env.map(|p| p.credentials),
            Some(FcmCredentials::Inline(json.to_owned()))
        );
        let from_flag = validate_cli(&["--fcm-credentials", "/etc/relay/fcm.json"], &[]);
        assert_eq!(
            from_flag.map(|p| p.credentials),
            Some(FcmCredentials::File("/etc/relay/fcm.json".into()))
        );
        // The inline JSON never shows in Debug.
        let debug = format!("{:?}", FcmCredentials::Inline(json.to_owned()));
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn endpoint_and_project_id_are_checked() {
        let p = validate_cli(
            &[
                "--fcm-credentials",
                "k.json",
                "--fcm-endpoint",
                "https://127.0.0.1:4443/",
                "--fcm-project-id",
                "demo-project",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(p.endpoint, "https://127.0.0.1:4443");
        assert_eq!(p.project_id.as_deref(), Some("demo-project"));
        assert_eq!(
            validate_cli(&["--fcm-credentials", "k.json"], &[])
                .unwrap()
                .endpoint,
            FCM_ENDPOINT
        );
        for bad in [
            "http://fcm",
            "fcm.googleapis.com",
            "https://",
            "https://a?b",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad}");
        }
        for bad in ["", "a/b", "Proj", "../x"] {
            assert!(validate_project_id(bad).is_err(), "{bad}");
        }
    }

    fn validate_cli(args: &[&str], env: &[(&str, &str)]) -> Option<Push> {
        use clap::{CommandFactory, FromArgMatches};
        crate::config::testing::with_env(env, || {
            let matches = crate::config::Cli::command()
                .try_get_matches_from(std::iter::once("relay-server").chain(args.iter().copied()))
                .expect("parses");
            let cli = crate::config::Cli::from_arg_matches(&matches).expect("parses");
            validate(&cli.push, &matches).expect("valid")
        })
    }
}
