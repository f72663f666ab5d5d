//! The two things the load generator asks the OS directly: its file-descriptor limit and another
//! process's resident memory. Linux-specific where it has to be (`/proc`); nothing else here.

use std::io;

/// The process's `RLIMIT_NOFILE` as (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((widen(lim.rlim_cur), widen(lim.rlim_max)))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new (soft, hard).
///
/// Every connection is a descriptor; the default soft limit (often 1024) is far below what
/// `idle` needs, while the hard limit usually is not.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Linux refuses a soft limit above fs.nr_open even when the hard limit is "unlimited".
    let target = match nr_open() {
        Some(cap) => lim.rlim_max.min(cap),
        None => lim.rlim_max,
    };
    if lim.rlim_cur < target {
        lim.rlim_cur = target;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((widen(lim.rlim_cur), widen(lim.rlim_max)))
}

/// `rlim_t` is `u64` on 64-bit Linux but narrower on some targets.
#[allow(clippy::unnecessary_cast)]
fn widen(v: libc::rlim_t) -> u64 {
    v as u64
}

fn nr_open() -> Option<libc::rlim_t> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Resident set size of process `pid` in bytes, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e} (is {pid} running?)")))?;
    parse_vm_rss(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS line in /proc/{pid}/status"),
        )
    })
}

/// Extracts `VmRSS:  1234 kB` from a `/proc/PID/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss_in_kilobytes() {
        let status = "Name:\trelay-server\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
    }

    #[test]
    fn missing_or_odd_vm_rss_is_none() {
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        let rss = rss_bytes(std::process::id()).expect("own /proc status");
        assert!(rss > 0);
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        let (soft, hard) = raise_nofile_limit().expect("setrlimit");
        assert!(soft <= hard);
        assert_eq!(nofile_limit().expect("getrlimit"), (soft, hard));
    }
}
