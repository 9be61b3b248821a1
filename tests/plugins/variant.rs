//! Test plugins `patchbay-test-plugin-variant-a` and `-b`: two builds of one plugin named
//! `variant`, told apart by the last letter of the package name. The end-to-end tests replace one
//! library file with the other and check the new behaviour and the old instance's unload.
//!
//! Every message is answered with `/variant s LETTER s ADDRESS` on the channel in config `to`;
//! `init` and `on_unload` log `variant LETTER ready` and `variant LETTER unloaded`.

use patchbay_plugin_api::osc::{OscArg, OscMessage};
use patchbay_plugin_api::plugin::{Context, Origin, Plugin};

/// `a` or `b`, from the package name.
fn letter() -> &'static str {
    env!("CARGO_PKG_NAME").rsplit('-').next().unwrap_or("?")
}

pub struct Variant {
    to: String,
}

impl Plugin for Variant {
    fn init(config: &str, ctx: &mut Context<'_>) -> Result<Self, String> {
        let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let to = config["to"]
            .as_str()
            .ok_or("variant config needs to: CHANNEL")?
            .to_string();
        ctx.log_info(&format!("variant {} ready", letter()));
        Ok(Variant { to })
    }

    fn on_message(
        &mut self,
        msg: &OscMessage,
        _origin: Origin,
        ctx: &mut Context<'_>,
    ) -> Result<(), String> {
        let answer = OscMessage::new(
            "/variant",
            vec![
                OscArg::String(letter().to_string()),
                OscArg::String(msg.address.clone()),
            ],
        );
        ctx.send(&self.to, &answer)?;
        Ok(())
    }

    fn on_unload(&mut self, ctx: &mut Context<'_>) {
        ctx.log_info(&format!("variant {} unloaded", letter()));
    }
}

patchbay_plugin_api::export_plugin!(Variant, "variant", env!("CARGO_PKG_VERSION"));
