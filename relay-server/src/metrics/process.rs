//! The standard `process_*` series (resident memory, open fds, CPU seconds, start time), read
//! from Linux's /proc at scrape time. Elsewhere they read as zero.

/// One reading of the process's own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
}

impl Process {
    pub fn read() -> Process {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        let mut p = parse(&stat, boot, &limits, ticks(), page_size());
        // The directory listing holds a descriptor of its own while it is read.
        p.open_fds = open_fds.saturating_sub(1);
        p
    }
}

fn ticks() -> f64 {
    // SAFETY: sysconf has no preconditions; a negative answer means "unknown".
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// `/proc/self/stat` fields after the command name (which may hold spaces and parentheses).
fn parse(stat: &str, boot: u64, limits: &str, ticks: f64, page: u64) -> Process {
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    // Field 3 (state) is the first after the name; fields are numbered from 1.
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |field: usize| -> u64 { f.get(field - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Process {
        cpu_seconds: (num(14) + num(15)) as f64 / ticks,
        threads: num(20),
        start_time_seconds: boot as f64 + num(22) as f64 / ticks,
        virtual_bytes: num(23),
        resident_bytes: num(24) * page,
        open_fds: 0,
        max_fds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces() {
        let stat =
            "1234 (relay (x) y) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 7 0 5000 104857600 2560 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                20000                files\n";
        let p = parse(stat, 1_700_000_000, limits, 100.0, 4096);
        assert_eq!(p.cpu_seconds, 4.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.start_time_seconds, 1_700_000_050.0);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.resident_bytes, 2560 * 4096);
        assert_eq!(p.max_fds, 20000);
    }

    #[test]
    fn this_process_reads_as_alive() {
        let p = Process::read();
        assert!(
            p.resident_bytes > 0 && p.open_fds > 0 && p.threads > 0,
            "{p:?}"
        );
    }
}
