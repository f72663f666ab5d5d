//! Test helpers shared by every config test: parse with a staged environment, expect success
//! or a given error, read `--help`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use clap::CommandFactory;

use super::{BootContext, BootError, Cli, Config};

/// clap reads `PYRYCODE_RELAY_*` from the process environment, which tests share; every
/// parse goes through [`parse_env`] and holds this lock while the environment is staged.
static ENV_LOCK: Mutex<()> = Mutex::new(());

pub fn parse_env(
    args: &[&str],
    env: &[(&str, &str)],
    ctx: BootContext,
) -> Result<Config, BootError> {
    with_env(env, || {
        Config::from_args(
            std::iter::once("relay-server").chain(args.iter().copied()),
            &ctx,
        )
    })
}

/// The parsed (not yet validated) command line, for tests of one subsystem's resolution.
pub fn cli(args: &[&str]) -> Cli {
    use clap::FromArgMatches;
    with_env(&[], || {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("relay-server").chain(args.iter().copied()))
            .expect("parses");
        Cli::from_arg_matches(&matches).expect("parses")
    })
}

/// Runs `f` with exactly `env` as the `PYRYCODE_RELAY_*` environment.
pub fn with_env<T>(env: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let _guard = ENV_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    // The developer's shell may export some of these; tests start from nothing.
    let inherited: Vec<OsString> = std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.to_string_lossy().starts_with("PYRYCODE_RELAY_"))
        .collect();
    for name in inherited {
        std::env::remove_var(name);
    }
    for (name, value) in env {
        std::env::set_var(name, value);
    }
    let result = f();
    for (name, _) in env {
        std::env::remove_var(name);
    }
    result
}

pub fn parse(args: &[&str]) -> Result<Config, BootError> {
    parse_env(args, &[], BootContext::default())
}

pub fn ok(args: &[&str]) -> Config {
    match parse(args) {
        Ok(config) => config,
        Err(err) => panic!("{args:?} refused: {err}"),
    }
}

pub fn err(args: &[&str]) -> BootError {
    match parse(args) {
        Ok(config) => panic!("{args:?} accepted: {config:?}"),
        Err(err) => err,
    }
}

pub fn usage_err(args: &[&str]) -> clap::Error {
    match err(args) {
        BootError::Usage(err) => err,
        other => panic!("{args:?}: expected a clap error, got {other}"),
    }
}

pub fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((a, port))
}

pub fn production(is_root: bool) -> BootContext {
    BootContext {
        production: true,
        is_root,
        hostname: String::new(),
    }
}

/// The lines `--help` prints for one flag: its header line and the indented text below.
pub fn help_entry(flag: &str) -> String {
    let help = Cli::command().render_long_help().to_string();
    let mut entry: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        // Flag headers are indented at most 6 columns; "Possible values" items deeper.
        if trimmed.starts_with('-') && line.len() - trimmed.len() <= 6 {
            if entry.is_some() {
                break;
            }
            if trimmed.split([' ', ',', '=']).any(|token| token == flag) {
                entry = Some(String::new());
            }
        }
        if let Some(entry) = entry.as_mut() {
            entry.push_str(line);
            entry.push('\n');
        }
    }
    entry.unwrap_or_else(|| panic!("{flag} missing from --help"))
}
