//! Finding the real programs some tests need (Pebble, Redis, HAProxy, ...).
//!
//! A test that needs a service calls [`require`] first. Outside CI a missing program skips the
//! test with a note; under `CI=true` it fails the test, so CI never passes by skipping.

use std::path::{Path, PathBuf};

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
        .unwrap_or(false)
}

/// The path of `program` on `PATH`, or `None` (outside CI) after printing why the test is
/// skipped. Under CI a missing program panics.
pub fn require(program: &str) -> Option<PathBuf> {
    match find(program) {
        Some(path) => Some(path),
        None if in_ci() => panic!("{program} is not installed, and CI=true: .ci/run installs it"),
        None => {
            println!("note: {program} is not installed; test skipped (it runs in CI)");
            None
        }
    }
}

/// `program` looked up on `PATH` like a shell would.
pub fn find(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_program_everyone_has_and_not_one_nobody_has() {
        assert!(find("sh").is_some());
        assert!(find("definitely-not-a-program-xyz").is_none());
        assert!(find("/bin/sh").is_some());
    }
}
