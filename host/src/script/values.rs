//! Rhai values <-> OSC arguments. (SKELETON: the values helper fills in; signatures are the contract.)

use patchbay_plugin_api::osc::OscArg;
use rhai::{Array, Dynamic, Engine};

/// `peer.send_osc` options (TouchDesigner's keyword arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOscOptions {
    pub as_bundle: bool,
    pub use_non_standard_types: bool,
    pub use_64bit_precision: bool,
}

impl Default for SendOscOptions {
    fn default() -> Self {
        SendOscOptions { as_bundle: false, use_non_standard_types: true, use_64bit_precision: false }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0}")]
    Other(String),
}

pub fn osc_to_dynamic(arg: &OscArg) -> Dynamic {
    let _ = arg;
    todo!()
}

pub fn dynamic_to_osc(value: &Dynamic, options: &SendOscOptions) -> Result<OscArg, ValueError> {
    let _ = (value, options);
    todo!()
}

pub fn register(engine: &mut Engine) {
    let _ = engine;
}

pub fn bytes_for_send_bytes(values: &Array) -> Result<Vec<u8>, ValueError> {
    let _ = values;
    todo!()
}

pub fn bytes_for_send(strings: &Array, terminator: Option<&str>) -> Result<Vec<u8>, ValueError> {
    let _ = (strings, terminator);
    todo!()
}
