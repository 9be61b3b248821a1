//! `throttle`: a per-address rate limit with send-on-change and a trailing send of the newest
//! value, for a controller that floods a device.
//!
//! ```yaml
//! - match: /desk/fader/*
//!   to: [ { plugin: throttle, config: { to: lights, interval_ms: 50 } } ]
//! ```
//!
//! For each address: the first message goes at once and opens a window of `interval_ms`; messages
//! inside the window are held, only the newest kept, and that newest one is sent when the window
//! ends (which opens the next window). A message identical to the last one sent for its address
//! (same type tags, bit-identical arguments) is not sent again. So a fader pushed for 3 seconds at
//! 1 kHz reaches the device at most once per interval, and always ends on its final position.
//!
//! Config: `to` (a channel; without it the messages answer their sender), `interval_ms` (default
//! 100), `max_addresses` (default 10000: beyond it idle addresses are forgotten, and if all are
//! busy a new address passes unthrottled).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::{encode_message, OscMessage};
use patchbay_plugin_api::plugin::{Context, Origin, Plugin};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    to: Option<String>,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_max_addresses")]
    max_addresses: usize,
}

fn default_interval_ms() -> u64 {
    100
}

fn default_max_addresses() -> usize {
    10_000
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send it now.
    Send,
    /// Held for the end of the window; arm `timer` to fire in `delay_ms` (`None`: already armed).
    Hold { schedule: Option<(u64, u64)> },
    /// Same as the last one sent for its address: nothing to do.
    Unchanged,
}

/// What to do when a timer fires.
#[derive(Debug, Clone, PartialEq)]
pub enum TimerAction {
    /// Send this held message (the trailing send).
    Send(OscMessage, Origin),
    /// The window is not over yet (a timer may fire a little early): arm `timer` again.
    Reschedule {
        delay_ms: u64,
        timer: u64,
    },
    Nothing,
}

struct Held {
    msg: OscMessage,
    origin: Origin,
    bytes: Vec<u8>,
}

struct AddressState {
    /// The encoding of the last message sent, compared whole so floats compare by their bits.
    last_sent: Option<Vec<u8>>,
    /// Until when a new message is held rather than sent.
    window_end: Instant,
    pending: Option<Held>,
    /// This address's timer id (stable), and whether a timer with it is outstanding. At most one
    /// is outstanding per address, so a firing timer is never stale.
    timer: u64,
    armed: bool,
}

/// The state machine, with the time passed in (no clock of its own, so tests need no sleeping).
pub struct Throttle {
    interval: Duration,
    max_addresses: usize,
    addresses: HashMap<String, AddressState>,
    by_timer: HashMap<u64, String>,
    next_timer: u64,
}

impl Throttle {
    pub fn new(interval: Duration, max_addresses: usize) -> Throttle {
        Throttle {
            interval,
            max_addresses,
            addresses: HashMap::new(),
            by_timer: HashMap::new(),
            next_timer: 0,
        }
    }

    /// Decides about `msg`, arrived at `now`. When the answer is `Hold`, the message is kept.
    pub fn offer(&mut self, msg: &OscMessage, origin: Origin, now: Instant) -> Action {
        let bytes = encode_message(msg);
        if !self.addresses.contains_key(&msg.address) && !self.make_room(now) {
            // Every tracked address is busy: better unthrottled than lost.
            return Action::Send;
        }
        let state = self
            .addresses
            .entry(msg.address.clone())
            .or_insert_with(|| {
                let timer = self.next_timer;
                self.next_timer += 1;
                self.by_timer.insert(timer, msg.address.clone());
                AddressState {
                    last_sent: None,
                    window_end: now,
                    pending: None,
                    timer,
                    armed: false,
                }
            });
        if state.last_sent.as_ref() == Some(&bytes) {
            // The newest value is what the device already has; a held older one is obsolete.
            state.pending = None;
            return Action::Unchanged;
        }
        if now >= state.window_end {
            state.last_sent = Some(bytes);
            state.window_end = now + self.interval;
            return Action::Send;
        }
        state.pending = Some(Held {
            msg: msg.clone(),
            origin,
            bytes,
        });
        if state.armed {
            return Action::Hold { schedule: None };
        }
        state.armed = true;
        Action::Hold {
            schedule: Some((delay_ms(state.window_end - now), state.timer)),
        }
    }

    /// A timer from [`Action::Hold`] or [`TimerAction::Reschedule`] fired at `now`.
    pub fn fire(&mut self, timer: u64, now: Instant) -> TimerAction {
        let Some(state) = self
            .by_timer
            .get(&timer)
            .and_then(|address| self.addresses.get_mut(address))
        else {
            return TimerAction::Nothing;
        };
        if !state.armed {
            return TimerAction::Nothing;
        }
        if now < state.window_end && state.pending.is_some() {
            return TimerAction::Reschedule {
                delay_ms: delay_ms(state.window_end - now),
                timer,
            };
        }
        state.armed = false;
        let Some(held) = state.pending.take() else {
            return TimerAction::Nothing;
        };
        state.last_sent = Some(held.bytes);
        state.window_end = now + self.interval;
        TimerAction::Send(held.msg, held.origin)
    }

    /// The host would not arm a timer: forget the armed flag so the next message tries again.
    pub fn timer_failed(&mut self, timer: u64) {
        if let Some(state) = self
            .by_timer
            .get(&timer)
            .and_then(|address| self.addresses.get_mut(address))
        {
            state.armed = false;
        }
    }

    /// Whether a new address can be tracked, forgetting idle ones (window over, nothing held) if
    /// the table is full. Forgetting one only loses its send-on-change memory.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.addresses.len() < self.max_addresses {
            return true;
        }
        let by_timer = &mut self.by_timer;
        self.addresses.retain(|_, s| {
            let busy = s.armed || s.pending.is_some() || now < s.window_end;
            if !busy {
                by_timer.remove(&s.timer);
            }
            busy
        });
        self.addresses.len() < self.max_addresses
    }

    pub fn tracked(&self) -> usize {
        self.addresses.len()
    }
}

/// Whole milliseconds, rounded up so a timer never fires before the window ends, and at least 1.
fn delay_ms(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

pub struct ThrottlePlugin {
    logic: Throttle,
    to: Option<String>,
}

impl ThrottlePlugin {
    fn deliver(
        &self,
        msg: &OscMessage,
        origin: Origin,
        ctx: &mut Context<'_>,
    ) -> Result<(), String> {
        match &self.to {
            Some(channel) => ctx.send(channel, msg)?,
            None => ctx.reply(origin, msg)?,
        }
        Ok(())
    }
}

impl Plugin for ThrottlePlugin {
    fn init(config: &str, _ctx: &mut Context<'_>) -> Result<Self, String> {
        let c: Config =
            serde_json::from_str(config).map_err(|e| format!("throttle config: {e}"))?;
        if c.interval_ms == 0 {
            return Err("throttle config: interval_ms must be at least 1".into());
        }
        if c.max_addresses == 0 {
            return Err("throttle config: max_addresses must be at least 1".into());
        }
        if c.to.as_deref() == Some("") {
            return Err("throttle config: to must name a channel".into());
        }
        Ok(ThrottlePlugin {
            logic: Throttle::new(Duration::from_millis(c.interval_ms), c.max_addresses),
            to: c.to,
        })
    }

    fn on_message(
        &mut self,
        msg: &OscMessage,
        origin: Origin,
        ctx: &mut Context<'_>,
    ) -> Result<(), String> {
        match self.logic.offer(msg, origin, Instant::now()) {
            Action::Send => self.deliver(msg, origin, ctx),
            Action::Unchanged => {
                ctx.count("unchanged", 1);
                Ok(())
            }
            Action::Hold { schedule } => {
                ctx.count("held", 1);
                if let Some((delay_ms, timer)) = schedule {
                    if let Err(e) = ctx.schedule(delay_ms, timer) {
                        self.logic.timer_failed(timer);
                        return Err(e.into());
                    }
                }
                Ok(())
            }
        }
    }

    fn on_timer(&mut self, timer: u64, ctx: &mut Context<'_>) -> Result<(), String> {
        match self.logic.fire(timer, Instant::now()) {
            TimerAction::Send(msg, origin) => {
                ctx.count("trailing", 1);
                self.deliver(&msg, origin, ctx)
            }
            TimerAction::Reschedule { delay_ms, timer } => {
                if let Err(e) = ctx.schedule(delay_ms, timer) {
                    self.logic.timer_failed(timer);
                    return Err(e.into());
                }
                Ok(())
            }
            TimerAction::Nothing => Ok(()),
        }
    }
}

patchbay_plugin_api::export_plugin!(ThrottlePlugin, "throttle", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_plugin_api::osc::OscArg;

    /// A fake clock: milliseconds after a fixed start.
    struct Clock(Instant);

    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn fader(address: &str, v: f32) -> OscMessage {
        OscMessage::new(address, vec![OscArg::Float(v)])
    }

    const O: Origin = Origin(1);

    #[test]
    fn first_goes_at_once_then_only_the_newest_at_the_end_of_the_window() {
        let clock = Clock(Instant::now());
        let mut t = Throttle::new(Duration::from_millis(100), 100);
        assert_eq!(t.offer(&fader("/f/1", 0.1), O, clock.at(0)), Action::Send);
        assert_eq!(
            t.offer(&fader("/f/1", 0.2), O, clock.at(10)),
            Action::Hold {
                schedule: Some((90, 0))
            }
        );
        assert_eq!(
            t.offer(&fader("/f/1", 0.3), Origin(2), clock.at(50)),
            Action::Hold { schedule: None }
        );
        assert_eq!(
            t.fire(0, clock.at(100)),
            TimerAction::Send(fader("/f/1", 0.3), Origin(2))
        );
        // The trailing send opened a new window.
        assert_eq!(
            t.offer(&fader("/f/1", 0.4), O, clock.at(150)),
            Action::Hold {
                schedule: Some((50, 0))
            }
        );
        assert_eq!(
            t.fire(0, clock.at(200)),
            TimerAction::Send(fader("/f/1", 0.4), O)
        );
        // Quiet after the window: nothing held, the timer has nothing to do, the next one goes.
        assert_eq!(t.fire(0, clock.at(300)), TimerAction::Nothing);
        assert_eq!(t.offer(&fader("/f/1", 0.5), O, clock.at(400)), Action::Send);
    }

    #[test]
    fn addresses_are_throttled_independently() {
        let clock = Clock(Instant::now());
        let mut t = Throttle::new(Duration::from_millis(100), 100);
        assert_eq!(t.offer(&fader("/f/1", 0.1), O, clock.at(0)), Action::Send);
        assert_eq!(t.offer(&fader("/f/2", 0.1), O, clock.at(1)), Action::Send);
        assert_eq!(
            t.offer(&fader("/f/2", 0.2), O, clock.at(2)),
            Action::Hold {
                schedule: Some((99, 1))
            }
        );
        assert_eq!(t.fire(0, clock.at(100)), TimerAction::Nothing);
        assert_eq!(
            t.fire(1, clock.at(101)),
            TimerAction::Send(fader("/f/2", 0.2), O)
        );
    }

    #[test]
    fn an_unchanged_value_is_not_sent_again() {
        let clock = Clock(Instant::now());
        let mut t = Throttle::new(Duration::from_millis(100), 100);
        assert_eq!(t.offer(&fader("/f", 0.5), O, clock.at(0)), Action::Send);
        assert_eq!(
            t.offer(&fader("/f", 0.5), O, clock.at(500)),
            Action::Unchanged
        );
        // Moved away and back within the window: the newest equals what was sent, so the held
        // value is dropped and the timer finds nothing.
        assert_eq!(t.offer(&fader("/f", 0.7), O, clock.at(501)), Action::Send);
        assert!(matches!(
            t.offer(&fader("/f", 0.6), O, clock.at(510)),
            Action::Hold { schedule: Some(_) }
        ));
        assert_eq!(
            t.offer(&fader("/f", 0.7), O, clock.at(520)),
            Action::Unchanged
        );
        assert_eq!(t.fire(0, clock.at(601)), TimerAction::Nothing);
        // Same value, different type: a change.
        let int = OscMessage::new("/f", vec![OscArg::Int(0)]);
        assert_eq!(t.offer(&int, O, clock.at(700)), Action::Send);
        // NaN compares by bits, so a repeated NaN is unchanged rather than always "new".
        assert_eq!(
            t.offer(&fader("/f", f32::NAN), O, clock.at(800)),
            Action::Send
        );
        assert_eq!(
            t.offer(&fader("/f", f32::NAN), O, clock.at(900)),
            Action::Unchanged
        );
    }

    #[test]
    fn an_early_timer_is_rearmed_for_the_rest_of_the_window() {
        let clock = Clock(Instant::now());
        let mut t = Throttle::new(Duration::from_millis(100), 100);
        t.offer(&fader("/f", 0.1), O, clock.at(0));
        t.offer(&fader("/f", 0.2), O, clock.at(10));
        assert_eq!(
            t.fire(0, clock.at(98)),
            TimerAction::Reschedule {
                delay_ms: 2,
                timer: 0
            }
        );
        assert_eq!(
            t.fire(0, clock.at(100)),
            TimerAction::Send(fader("/f", 0.2), O)
        );
    }

    #[test]
    fn a_failed_schedule_lets_the_next_message_arm_again() {
        let clock = Clock(Instant::now());
        let mut t = Throttle::new(Duration::from_millis(100), 100);
        t.offer(&fader("/f", 0.1), O, clock.at(0));
        let Action::Hold {
            schedule: Some((_, timer)),
        } = t.offer(&fader("/f", 0.2), O, clock.at(10))
        else {
            panic!("expected a hold with a timer")
        };
        t.timer_failed(timer);
        assert!(matches!(
            t.offer(&fader("/f", 0.3), O, clock.at(20)),
            Action::Hold { schedule: Some(_) }
        ));
    }

    #[test]
    fn a_full_table_forgets_idle_addresses_and_lets_new_ones_through_when_all_are_busy() {
        let clock = Clock(Instant::now());
        let mut t = Throttle::new(Duration::from_millis(100), 2);
        t.offer(&fader("/a", 0.1), O, clock.at(0));
        t.offer(&fader("/b", 0.1), O, clock.at(0));
        // Both windows are open: /c is not tracked, and passes.
        assert_eq!(t.offer(&fader("/c", 0.1), O, clock.at(50)), Action::Send);
        assert_eq!(t.offer(&fader("/c", 0.1), O, clock.at(51)), Action::Send);
        assert_eq!(t.tracked(), 2);
        // Later both are idle and are forgotten to make room.
        assert_eq!(t.offer(&fader("/c", 0.1), O, clock.at(200)), Action::Send);
        assert_eq!(t.tracked(), 1);
        assert_eq!(
            t.offer(&fader("/c", 0.1), O, clock.at(300)),
            Action::Unchanged
        );
        // A forgotten address only lost its send-on-change memory.
        assert_eq!(t.offer(&fader("/a", 0.1), O, clock.at(300)), Action::Send);
    }

    #[test]
    fn a_flood_reaches_the_device_once_per_interval_and_ends_on_its_last_value() {
        let clock = Clock(Instant::now());
        let mut t = Throttle::new(Duration::from_millis(50), 100);
        let mut sent = Vec::new();
        let mut due: Option<(u64, u64)> = None; // (at ms, timer)
        for ms in 0..1000_u64 {
            if let Some((at, timer)) = due {
                if at <= ms {
                    due = None;
                    match t.fire(timer, clock.at(ms)) {
                        TimerAction::Send(m, _) => sent.push((ms, m)),
                        TimerAction::Reschedule { delay_ms, timer } => {
                            due = Some((ms + delay_ms, timer))
                        }
                        TimerAction::Nothing => {}
                    }
                }
            }
            let m = fader("/f", ms as f32);
            match t.offer(&m, O, clock.at(ms)) {
                Action::Send => sent.push((ms, m)),
                Action::Hold {
                    schedule: Some((delay, timer)),
                } => due = Some((ms + delay, timer)),
                _ => {}
            }
        }
        while let Some((at, timer)) = due.take() {
            if let TimerAction::Send(m, _) = t.fire(timer, clock.at(at)) {
                sent.push((at, m));
            }
        }
        assert!(sent.len() <= 21, "{}", sent.len());
        for pair in sent.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 50, "{:?}", (pair[0].0, pair[1].0));
        }
        assert_eq!(sent.last().unwrap().1, fader("/f", 999.0));
    }

    #[test]
    fn delays_round_up_and_are_never_zero() {
        assert_eq!(delay_ms(Duration::from_micros(1)), 1);
        assert_eq!(delay_ms(Duration::from_micros(1500)), 2);
        assert_eq!(delay_ms(Duration::ZERO), 1);
        assert_eq!(delay_ms(Duration::from_millis(90)), 90);
    }
}
