//! CPU time of a process from `/proc/PID/stat`: how the tool reports server (and its own)
//! CPU-microseconds per request.

use std::io;

/// User and system CPU time of a process (all its threads), in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// utime.
    pub user_us: u64,
    /// stime.
    pub system_us: u64,
}

impl CpuTime {
    /// Both together.
    pub fn total_us(self) -> u64 {
        self.user_us + self.system_us
    }

    /// The time spent between `earlier` and `self`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            system_us: self.system_us.saturating_sub(earlier.system_us),
        }
    }
}

/// The CPU time of process `pid` (`None`: this process).
pub fn cpu_time(pid: Option<u32>) -> io::Result<CpuTime> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(&path)?;
    parse_stat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse {path}")))
}

/// utime and stime (fields 14 and 15) of a stat line, in microseconds.
fn parse_stat(text: &str) -> Option<CpuTime> {
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace();
    // After the name: field 3 (state) is the first; utime is field 14, the 12th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks_per_second = clock_ticks_per_second();
    Some(CpuTime {
        user_us: utime * 1_000_000 / ticks_per_second,
        system_us: stime * 1_000_000 / ticks_per_second,
    })
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let line = "1234 (shard (pay) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        let time = parse_stat(line).unwrap();
        let ticks = clock_ticks_per_second();
        assert_eq!(time.user_us, 250 * 1_000_000 / ticks);
        assert_eq!(time.system_us, 50 * 1_000_000 / ticks);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let mut spin = 0u64;
        for i in 0..10_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        std::hint::black_box(spin);
        assert!(cpu_time(None).unwrap().total_us() > 0);
    }
}
