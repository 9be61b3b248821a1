//! Test plugin `sleepy`: a call that does not return in time. The end-to-end tests use it to check
//! the host's stuck watchdog (`call_timeout_ms`).
//!
//! By the last part of the address:
//! - `.../hang`: does not return for 60 s (long past any test's deadline, yet bounded, so a
//!   leftover host process still gets to exit), then answers like any other message.
//! - `.../nap i MS`: sleeps `MS` milliseconds (at most 60 s), then answers.
//! - anything else: answers at once.
//!
//! The answer is `/sleepy/done s ADDRESS`, sent to the channel in config `to`, or to the sender
//! without one.

use std::thread;
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::{OscArg, OscMessage};
use patchbay_plugin_api::plugin::{Context, Origin, Plugin};

/// The longest any call sleeps.
const MAX_SLEEP: Duration = Duration::from_secs(60);

pub struct Sleepy {
    to: Option<String>,
}

/// Sleeps `total` in short steps (so a debugger or a profiler sees where it is).
fn sleep_for(total: Duration) {
    let until = Instant::now() + total.min(MAX_SLEEP);
    while Instant::now() < until {
        thread::sleep(
            Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())),
        );
    }
}

impl Plugin for Sleepy {
    fn init(config: &str, _ctx: &mut Context<'_>) -> Result<Self, String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let to = config["to"].as_str().map(str::to_string);
        Ok(Sleepy { to })
    }

    fn on_message(
        &mut self,
        msg: &OscMessage,
        origin: Origin,
        ctx: &mut Context<'_>,
    ) -> Result<(), String> {
        match msg.address.rsplit('/').next() {
            Some("hang") => sleep_for(MAX_SLEEP),
            Some("nap") => {
                let ms = match msg.args.first() {
                    Some(OscArg::Int(ms)) => u64::try_from(*ms).unwrap_or(0),
                    _ => return Err("nap needs an int of milliseconds".into()),
                };
                sleep_for(Duration::from_millis(ms));
            }
            _ => {}
        }
        let done = OscMessage::new("/sleepy/done", vec![OscArg::String(msg.address.clone())]);
        match &self.to {
            Some(channel) => ctx.send(channel, &done)?,
            None => ctx.reply(origin, &done)?,
        }
        Ok(())
    }
}

patchbay_plugin_api::export_plugin!(Sleepy, "sleepy", env!("CARGO_PKG_VERSION"));
