//! Kernel timestamps (CLOCK_MONOTONIC, from `bpf_ktime_get_ns`) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{clock_gettime, ClockId};

fn now_ns(clock: ClockId) -> i128 {
    clock_gettime(clock)
        .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
        .unwrap_or(0)
}

/// Converts monotonic kernel timestamps to wall-clock time, with the offset between the two
/// clocks taken once at start-up.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            realtime_minus_monotonic_ns: now_ns(ClockId::CLOCK_REALTIME)
                - now_ns(ClockId::CLOCK_MONOTONIC),
        }
    }

    /// Wall-clock time of a kernel timestamp.
    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        let ns = (ktime_ns as i128 + self.realtime_minus_monotonic_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }

    /// The current CLOCK_MONOTONIC time, comparable with kernel timestamps.
    pub fn monotonic_now_ns() -> u64 {
        now_ns(ClockId::CLOCK_MONOTONIC) as u64
    }
}

/// RFC 3339 with microseconds, UTC: `2026-11-25T12:34:56.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// The time of day part of an [`rfc3339`] string: `12:34:56.123456`.
pub fn time_of_day(rfc3339: &str) -> &str {
    rfc3339.get(11..26).unwrap_or(rfc3339)
}

/// A short human duration: `850ms`, `12.3s`, `4m05s`, `3h12m`, `2d04h`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations() {
        assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(short_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(short_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(
            short_duration(Duration::from_secs(3 * 3600 + 12 * 60)),
            "3h12m"
        );
        assert_eq!(
            short_duration(Duration::from_secs(2 * 86400 + 4 * 3600)),
            "2d04h"
        );
    }

    #[test]
    fn wall_clock_is_near_now() {
        let clock = Clock::new();
        let wall = clock.wall(Clock::monotonic_now_ns());
        let diff = wall
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(1), "{diff:?}");
        let t = rfc3339(UNIX_EPOCH + Duration::from_micros(1_500_000));
        assert_eq!(time_of_day(&t), "00:00:01.500000");
    }
}
