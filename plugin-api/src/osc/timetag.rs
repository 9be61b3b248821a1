//! OSC time tags: 64-bit NTP timestamps (RFC 5905 format).
//!
//! A time tag is 32 bits of seconds since 1900-01-01 00:00:00 UTC and 32 bits of binary fraction
//! (units of 2^-32 s, about 0.23 ns). The value `0x00000000_00000001` means "immediately".
//!
//! # Which era?
//!
//! 32 bits of seconds wrap every 136 years (the first wrap is 2036-02-07 06:28:16 UTC), so the wire
//! value alone is ambiguous. Like SNTP (RFC 4330, section 3) we read it in a 136-year window:
//! seconds with the top bit set are NTP era 0 (1968-01-20 ..= 2036-02-07), seconds with the top
//! bit clear are era 1 (2036-02-07 .. 2104-02-26). That window covers every clock a show will run
//! on, including ones set slightly before 1970, and keeps working past 2036. Converting a time
//! outside the window keeps the low 32 bits of the seconds (what would be on the wire anyway); it
//! never panics. All conversions are plain integer arithmetic on signed nanoseconds since the
//! Unix epoch, so every `(seconds, fraction)` pair converts without overflow.
//!
//! (`rosc` 0.11.4, by contrast, refuses `SystemTime`s before 1970 and its
//! `From<OscTime> for SystemTime` panics on a Duration underflow for any tag before 1970 —
//! [`TimeTag::IMMEDIATELY`] included — reading everything in era 0 only.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01), RFC 5905.
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const TWO_POW_32: i128 = 1 << 32;

/// NTP seconds since 1900 and a 32-bit binary fraction of a second.
///
/// The derived ordering compares the raw `(seconds, fraction)` pair, which matches time order only
/// within one NTP era; use [`TimeTag::to_unix_nanos`] to compare across the 2036 wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimeTag {
    pub seconds: u32,
    pub fraction: u32,
}

impl TimeTag {
    /// The special value 0x00000000_00000001: "dispatch immediately".
    pub const IMMEDIATELY: TimeTag = TimeTag {
        seconds: 0,
        fraction: 1,
    };

    pub const fn new(seconds: u32, fraction: u32) -> TimeTag {
        TimeTag { seconds, fraction }
    }

    pub fn is_immediately(&self) -> bool {
        *self == Self::IMMEDIATELY
    }

    /// The 8 wire bytes (big-endian seconds, then fraction).
    pub const fn to_be_bytes(&self) -> [u8; 8] {
        let s = self.seconds.to_be_bytes();
        let f = self.fraction.to_be_bytes();
        [s[0], s[1], s[2], s[3], f[0], f[1], f[2], f[3]]
    }

    pub const fn from_be_bytes(b: [u8; 8]) -> TimeTag {
        TimeTag {
            seconds: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            fraction: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// Signed nanoseconds since the Unix epoch, reading the seconds in the era window described in
    /// the module docs. Exact to the nearest nanosecond. Not special-cased for
    /// [`TimeTag::IMMEDIATELY`] (callers decide what "immediately" means).
    pub fn to_unix_nanos(&self) -> i128 {
        let ntp_secs = if self.seconds & 0x8000_0000 != 0 {
            i128::from(self.seconds)
        } else {
            // Era 1: past the 2036 wrap.
            i128::from(self.seconds) + TWO_POW_32
        };
        let unix_secs = ntp_secs - NTP_UNIX_OFFSET_SECS as i128;
        // Round to the nearest nanosecond; may yield exactly 1e9, which the addition absorbs.
        let nanos = (i128::from(self.fraction) * NANOS_PER_SEC + (TWO_POW_32 / 2)) >> 32;
        unix_secs * NANOS_PER_SEC + nanos
    }

    /// The time tag for `nanos` signed nanoseconds since the Unix epoch. Seconds outside the era
    /// window keep their low 32 bits (NTP wrap-around).
    pub fn from_unix_nanos(nanos: i128) -> TimeTag {
        let ntp_nanos = nanos + NTP_UNIX_OFFSET_SECS as i128 * NANOS_PER_SEC;
        let secs = ntp_nanos.div_euclid(NANOS_PER_SEC);
        let sub = ntp_nanos.rem_euclid(NANOS_PER_SEC);
        // sub <= 999_999_999, so the rounded fraction stays below 2^32 (no carry into seconds).
        let fraction = ((sub << 32) + NANOS_PER_SEC / 2) / NANOS_PER_SEC;
        TimeTag {
            seconds: secs.rem_euclid(TWO_POW_32) as u32,
            fraction: fraction as u32,
        }
    }

    pub fn from_system_time(t: SystemTime) -> TimeTag {
        Self::from_unix_nanos(system_time_to_unix_nanos(t))
    }

    /// `None` for "immediately" (and, on platforms whose `SystemTime` cannot reach the era window,
    /// for times it cannot represent).
    pub fn to_system_time(&self) -> Option<SystemTime> {
        if self.is_immediately() {
            return None;
        }
        let nanos = self.to_unix_nanos();
        let magnitude = Duration::new(
            (nanos.unsigned_abs() / NANOS_PER_SEC as u128) as u64,
            (nanos.unsigned_abs() % NANOS_PER_SEC as u128) as u32,
        );
        if nanos >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// How far `self` lies after `now` (positive) or before it (negative), in signed nanoseconds.
    /// [`TimeTag::IMMEDIATELY`] is always 0 ("now").
    pub fn offset_from(&self, now: SystemTime) -> i128 {
        if self.is_immediately() {
            return 0;
        }
        self.to_unix_nanos() - system_time_to_unix_nanos(now)
    }

    pub fn after(now: SystemTime, delay: Duration) -> TimeTag {
        Self::from_system_time(now + delay)
    }

    /// Seconds since the Unix epoch as `f64` (sub-microsecond precision for current dates).
    pub fn to_unix_secs_f64(&self) -> f64 {
        let whole = self.to_unix_nanos().div_euclid(NANOS_PER_SEC);
        // Use the exact binary fraction rather than the rounded nanoseconds.
        whole as f64 + f64::from(self.fraction) / TWO_POW_32 as f64
    }

    /// The time tag for `secs` seconds since the Unix epoch. Non-finite input gives a valid but
    /// meaningless tag (NaN gives `{0, 0}`) rather than a panic.
    pub fn from_unix_secs_f64(secs: f64) -> TimeTag {
        let t = secs + NTP_UNIX_OFFSET_SECS as f64;
        let whole = t.floor();
        let mut frac = ((t - whole) * TWO_POW_32 as f64).round();
        let mut whole = whole as i128; // saturating cast; NaN -> 0
        if frac >= TWO_POW_32 as f64 {
            frac = 0.0;
            whole += 1;
        }
        TimeTag {
            seconds: whole.rem_euclid(TWO_POW_32) as u32,
            fraction: frac as u32,
        }
    }
}

fn system_time_to_unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}
