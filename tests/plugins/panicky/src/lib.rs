//! Test plugin `panicky`: panics on every message. The end-to-end tests use it to check that the
//! host contains the panic (the shim turns it into an error code), counts and logs it with the
//! plugin's name, keeps serving other routes, and disables the instance by its error budget.

use patchbay_plugin_api::osc::OscMessage;
use patchbay_plugin_api::plugin::{Context, Origin, Plugin};

pub struct Panicky;

impl Plugin for Panicky {
    fn init(_config: &str, ctx: &mut Context<'_>) -> Result<Self, String> {
        ctx.log_info("panicky ready");
        Ok(Panicky)
    }

    fn on_message(
        &mut self,
        msg: &OscMessage,
        _origin: Origin,
        _ctx: &mut Context<'_>,
    ) -> Result<(), String> {
        panic!("panicky: boom on {}", msg.address);
    }
}

patchbay_plugin_api::export_plugin!(Panicky, "panicky", env!("CARGO_PKG_VERSION"));
