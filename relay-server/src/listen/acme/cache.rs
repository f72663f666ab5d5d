//! The certificate cache directory, `--cert-cache` (protocol.md §9): who may own it, its
//! modes, and the files the relay keeps in it.
//!
//! Owns every byte ACME mode writes to disk: the account credentials and, per domain, the
//! private key with its certificate chain. Rules: the directory is created 0700; one owned by
//! us but open to group or world is tightened to 0700; one owned by another user is refused
//! (a boot error); every file is written 0600, whole or not at all (temporary file, fsync,
//! rename). It never talks to the network and never logs file contents.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the cache directory cannot be used. Each message is one line naming the flag.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("--cert-cache {}: owned by uid {owner}, not by the user the relay runs as (uid {uid}); refusing to keep private keys there (chown it or choose another directory)", path.display())]
    ForeignOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error("--cert-cache {}: exists and is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("--cert-cache {}: cannot {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

/// What [`CertCache::open`] had to do, for the boot log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The directory did not exist and was created 0700.
    Created,
    /// It existed with group/world bits (`from`, e.g. 0o755) and was tightened to 0700.
    Tightened { from: u32 },
    /// It existed, ours and private already.
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct CertCache {
    dir: PathBuf,
}

impl CertCache {
    /// Applies the §9 directory rules and returns the cache. Symlinks are followed: the rules
    /// apply to the directory the keys actually land in.
    pub fn open(dir: &Path) -> Result<(CertCache, Opened), CacheError> {
        let io_err = |what, source| CacheError::Io {
            path: dir.to_path_buf(),
            what,
            source,
        };
        let (meta, opened) = match fs::metadata(dir) {
            Ok(meta) => (meta, None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io_err("create the directory", e))?;
                // The umask can only have removed bits; make the result exactly 0700.
                fs::set_permissions(dir, Permissions::from_mode(0o700))
                    .map_err(|e| io_err("set mode 0700", e))?;
                let meta = fs::metadata(dir).map_err(|e| io_err("stat the directory", e))?;
                (meta, Some(Opened::Created))
            }
            Err(e) => return Err(io_err("stat the directory", e)),
        };
        if !meta.is_dir() {
            return Err(CacheError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        let uid = effective_uid();
        if meta.uid() != uid {
            return Err(CacheError::ForeignOwner {
                path: dir.to_path_buf(),
                owner: meta.uid(),
                uid,
            });
        }
        let mode = meta.mode() & 0o7777;
        let opened = match opened {
            Some(created) => created,
            None if mode & 0o077 != 0 => {
                fs::set_permissions(dir, Permissions::from_mode(0o700))
                    .map_err(|e| io_err("tighten the mode to 0700", e))?;
                Opened::Tightened { from: mode }
            }
            None => Opened::Unchanged,
        };
        Ok((
            CertCache {
                dir: dir.to_path_buf(),
            },
            opened,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ACME account for `directory_url` (JSON credentials, which hold the account key).
    pub fn account_path(&self, directory_url: &str) -> PathBuf {
        self.dir
            .join(format!("account-{}.json", ca_tag(directory_url)))
    }

    /// The certificate for `domain` from `directory_url`: private key then chain, one PEM.
    /// Keyed by CA too, so pointing the relay at another CA never serves the old CA's
    /// certificate as if it were current.
    pub fn certificate_path(&self, directory_url: &str, domain: &str) -> PathBuf {
        self.dir
            .join(format!("{domain}-{}.pem", ca_tag(directory_url)))
    }

    /// Reads a cache file; a missing file is `None`.
    pub fn read(&self, path: &Path) -> io::Result<Option<String>> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `contents` to `path` (inside the cache) with mode 0600, atomically: readers see
    /// the old file or the new one, never half of either.
    pub fn write_private(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = self.dir.join(tmp_name);
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // create_new's mode is filtered by the umask; 0600 exactly, never more.
            file.set_permissions(Permissions::from_mode(0o600))?;
            file.write_all(contents)?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Short, stable, file-name-safe name for a CA directory URL.
fn ca_tag(directory_url: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, directory_url.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The effective uid, which owns what the relay creates.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("relay-cache-unit-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn files_are_written_0600_and_replaced_whole() {
        let scratch = Scratch::new("files");
        let (cache, _) = CertCache::open(&scratch.0.join("c")).unwrap();
        let path = cache.certificate_path("https://ca.example/dir", "relay.example.com");
        cache.write_private(&path, b"first").unwrap();
        assert_eq!(mode(&path), 0o600);
        cache.write_private(&path, b"second").unwrap();
        assert_eq!(cache.read(&path).unwrap().as_deref(), Some("second"));
        assert_eq!(mode(&path), 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 1);
    }

    #[test]
    fn cache_files_are_keyed_by_ca_and_domain() {
        let scratch = Scratch::new("keys");
        let (cache, _) = CertCache::open(&scratch.0).unwrap();
        let a = cache.certificate_path("https://a.example/dir", "relay.example.com");
        let b = cache.certificate_path("https://b.example/dir", "relay.example.com");
        assert_ne!(a, b);
        assert_ne!(
            cache.account_path("https://a.example/dir"),
            cache.account_path("https://b.example/dir")
        );
        assert_eq!(cache.read(&a).unwrap(), None);
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let scratch = Scratch::new("notdir");
        let file = scratch.0.join("file");
        fs::write(&file, b"x").unwrap();
        let err = CertCache::open(&file).unwrap_err();
        assert!(matches!(err, CacheError::NotADirectory { .. }), "{err}");
        assert!(err.to_string().starts_with("--cert-cache "));
    }
}
