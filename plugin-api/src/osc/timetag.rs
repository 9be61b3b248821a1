//! OSC time tags: 64-bit NTP timestamps. (SKELETON)

use std::time::{Duration, SystemTime};

/// NTP seconds since 1900 and a 32-bit binary fraction of a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimeTag {
    pub seconds: u32,
    pub fraction: u32,
}

impl TimeTag {
    /// The special value 0x00000000_00000001: "dispatch immediately".
    pub const IMMEDIATELY: TimeTag = TimeTag { seconds: 0, fraction: 1 };

    pub fn is_immediately(&self) -> bool {
        *self == Self::IMMEDIATELY
    }

    pub fn from_system_time(t: SystemTime) -> TimeTag {
        let _ = t;
        todo!()
    }

    /// `None` for "immediately".
    pub fn to_system_time(&self) -> Option<SystemTime> {
        todo!()
    }

    /// How far `self` lies after `now` (positive) or before it (negative), in signed nanoseconds.
    pub fn offset_from(&self, now: SystemTime) -> i128 {
        let _ = now;
        todo!()
    }

    pub fn after(now: SystemTime, delay: Duration) -> TimeTag {
        Self::from_system_time(now + delay)
    }
}
