//! CPU time and peak memory of a process, read from /proc (Linux).

/// User + system CPU seconds of every thread of `pid` so far (`/proc/<pid>/stat`
/// fields 14 and 15, in clock ticks).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_seconds_from_stat(&stat, ticks_per_second())
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of `/proc`'s CPU times.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Parses a stat line; the command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
pub fn cpu_seconds_from_stat(stat: &str, ticks_per_s: f64) -> Option<f64> {
    let (_, utime, stime) = ticks_from_stat(stat)?;
    Some((utime + stime) as f64 / ticks_per_s)
}

/// Peak resident set size (`VmHWM`) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    vm_hwm_from_status(&status)
}

pub fn vm_hwm_from_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// This process's own CPU seconds (the load tool's share of the machine).
pub fn self_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id())
}

/// User and kernel CPU of one process, whole and by thread group, in clock ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadTicks {
    /// The process's own counters (live threads and those that have exited).
    pub total: (u64, u64),
    /// (group, user, kernel) summed over the live threads whose name the grouping
    /// function maps to the group.
    pub groups: Vec<(&'static str, u64, u64)>,
}

impl ThreadTicks {
    /// Reads `/proc/<pid>/stat` and every `/proc/<pid>/task/*/stat`; `group` names a
    /// thread's group from its name (`comm`), or leaves it out.
    pub fn read(pid: u32, group: fn(&str) -> Option<&'static str>) -> Option<ThreadTicks> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, total_u, total_k) = ticks_from_stat(&stat)?;
        let mut t = ThreadTicks {
            total: (total_u, total_k),
            groups: Vec::new(),
        };
        for e in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            // A thread may exit between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            if let Some((name, u, k)) = ticks_from_stat(&stat) {
                if let Some(g) = group(name) {
                    t.add(g, u, k);
                }
            }
        }
        Some(t)
    }

    fn add(&mut self, group: &'static str, u: u64, k: u64) {
        match self.groups.iter_mut().find(|(g, ..)| *g == group) {
            Some((_, gu, gk)) => {
                *gu += u;
                *gk += k;
            }
            None => self.groups.push((group, u, k)),
        }
    }

    /// (user, kernel) ticks of `group` (zero when it had no thread).
    pub fn group(&self, group: &str) -> (u64, u64) {
        self.groups
            .iter()
            .find(|(g, ..)| *g == group)
            .map_or((0, 0), |&(_, u, k)| (u, k))
    }
}

/// The thread or process name (field 2), utime and stime (fields 14 and 15) of a stat
/// line, in clock ticks.
fn ticks_from_stat(stat: &str) -> Option<(&str, u64, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let mut fields = stat[close + 1..].split_whitespace();
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((name, utime, stime))
}

/// The machine's CPU time so far from the first line of `/proc/stat`, in clock ticks
/// summed over all CPUs: (busy, all). Busy is everything but idle and iowait.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    machine_ticks_from(&stat)
}

fn machine_ticks_from(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already counted in user and nice.
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((all - idle, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line =
            "1234 (ricochet (w) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(cpu_seconds_from_stat(line, 100.0), Some(3.0));
        assert_eq!(cpu_seconds_from_stat("garbage", 100.0), None);
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_from_status(s), Some(2048));
        assert!(peak_rss_kib(std::process::id()).unwrap() > 0);
        assert!(self_cpu_seconds().is_some());
    }

    #[test]
    fn thread_ticks_group_by_name() {
        let line = "1234 (sink-0) S 1 1234 1234 0 -1 4194560 100 0 0 0 25 75 0 0 20 0 3 0 1 2 3";
        assert_eq!(ticks_from_stat(line), Some(("sink-0", 25, 75)));
        let me = std::thread::current().name().map(str::to_string);
        let t = ThreadTicks::read(std::process::id(), |n| {
            Some(if n.starts_with("sink") {
                "sink"
            } else {
                "other"
            })
        })
        .unwrap();
        assert!(t.groups.iter().any(|(g, ..)| *g == "other"), "{me:?} {t:?}");
        assert_eq!(t.group("nothing"), (0, 0));
        let mut t = ThreadTicks::default();
        t.add("a", 1, 2);
        t.add("a", 3, 4);
        assert_eq!(t.group("a"), (4, 6));
    }

    #[test]
    fn machine_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n";
        assert_eq!(machine_ticks_from(stat), Some((161, 1181)));
        assert_eq!(machine_ticks_from("intr 1 2"), None);
        let (busy, all) = machine_ticks().unwrap();
        assert!(busy <= all && all > 0);
    }
}
