//! The cluster secret (`--cluster-secret-file`, protocol.md §11): loading rules, and the key
//! the forwarding link's HMAC is made with.
//!
//! Owns reading the file once at boot and refusing one that others could read or that is too
//! short to be a key. It never logs, prints or returns the secret's bytes, not even in an
//! error: a boot error names the file and the rule it broke.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use ring::hmac;

/// Shortest accepted secret, after trailing whitespace is trimmed: a 256-bit key.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest accepted secret file: anything bigger is not a key file.
const MAX_SECRET_BYTES: u64 = 4096;

/// The HMAC-SHA256 key every node of the cluster shares.
#[derive(Clone)]
pub struct ClusterSecret {
    key: hmac::Key,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// A key from bytes already loaded (tests, and [`load`]).
    pub fn from_bytes(secret: &[u8]) -> Result<ClusterSecret, SecretError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort {
                path: None,
                len: secret.len(),
            });
        }
        Ok(ClusterSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    pub(crate) fn key(&self) -> &hmac::Key {
        &self.key
    }
}

/// Why the secret file was refused. `main` prints `relay-server: <this>` and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("--cluster-secret-file {}: cannot read it: {kind}", path.display())]
    Unreadable {
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    #[error("--cluster-secret-file {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("--cluster-secret-file {}: readable by group or others (mode {mode:03o}); chmod 600 it", path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("--cluster-secret-file{}: {len} bytes, at least {MIN_SECRET_BYTES} needed (e.g. `openssl rand -hex 32`)",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    TooShort { path: Option<PathBuf>, len: usize },
    #[error("--cluster-secret-file {}: larger than {MAX_SECRET_BYTES} bytes, not a key file", path.display())]
    TooLong { path: PathBuf },
}

/// Reads and checks the secret file: a regular file (symlinks followed), no permission
/// bits for group or others, at least [`MIN_SECRET_BYTES`] once trailing whitespace (the
/// newline `echo` and editors add) is trimmed. The permission check is on the open file,
/// so a file swapped between the check and the read cannot slip through.
pub fn load(path: &Path) -> Result<ClusterSecret, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |e: std::io::Error| SecretError::Unreadable {
        path: path.to_owned(),
        kind: e.kind(),
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(SecretError::TooLong {
            path: path.to_owned(),
        });
    }
    let mut raw = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(unreadable)?;
    let trimmed = raw.trim_ascii_end();
    let secret = ClusterSecret::from_bytes(trimmed).map_err(|e| match e {
        SecretError::TooShort { len, .. } => SecretError::TooShort {
            path: Some(path.to_owned()),
            len,
        },
        other => other,
    });
    // The bytes are copied into the key; do not leave them in a freed buffer.
    raw.iter_mut().for_each(|b| *b = 0);
    secret
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn tempdir() -> PathBuf {
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).unwrap();
        let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let d = std::env::temp_dir().join(format!("relay-secret-test-{hex}"));
        std::fs::create_dir(&d).unwrap();
        d
    }

    const GOOD: &[u8] = b"0123456789abcdef0123456789abcdef\n";

    #[test]
    fn a_private_file_of_32_bytes_or_more_is_accepted_with_its_newline_trimmed() {
        let d = tempdir();
        let p = write(&d, "s", GOOD, 0o600);
        let a = load(&p).expect("accepted");
        let b = ClusterSecret::from_bytes(&GOOD[..32]).unwrap();
        // Same key: the trailing newline is not part of it.
        let tag = hmac::sign(a.key(), b"x");
        assert!(hmac::verify(b.key(), b"x", tag.as_ref()).is_ok());
        let p = write(&d, "r", GOOD, 0o400);
        assert!(load(&p).is_ok());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn group_or_world_access_is_refused_without_quoting_the_secret() {
        let d = tempdir();
        for mode in [0o640, 0o604, 0o660, 0o620, 0o644, 0o602] {
            let p = write(&d, "s", GOOD, mode);
            let e = load(&p).unwrap_err();
            assert!(matches!(e, SecretError::TooOpen { .. }), "{mode:o}: {e}");
            let line = e.to_string();
            assert!(
                line.contains("chmod 600") && !line.contains("0123456789"),
                "{line}"
            );
            assert!(!line.contains('\n'));
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn short_missing_and_non_files_are_refused() {
        let d = tempdir();
        let p = write(&d, "short", b"0123456789abcdef0123456789abcde\n\n", 0o600);
        let e = load(&p).unwrap_err();
        assert!(matches!(e, SecretError::TooShort { len: 31, .. }), "{e}");
        assert!(e.to_string().contains("31 bytes"), "{e}");
        let e = load(&d.join("missing")).unwrap_err();
        assert!(matches!(e, SecretError::Unreadable { .. }), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            load(&d).unwrap_err(),
            SecretError::NotAFile { .. }
        ));
        let big = write(&d, "big", &[b'a'; 5000], 0o600);
        assert!(matches!(
            load(&big).unwrap_err(),
            SecretError::TooLong { .. }
        ));
        assert!(format!("{:?}", ClusterSecret::from_bytes(GOOD).unwrap()).contains("redacted"));
        std::fs::remove_dir_all(d).unwrap();
    }
}
