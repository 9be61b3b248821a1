//! `scale`: maps one numeric argument from an input range to an output range, with clamping and a
//! curve, and sends the message on (what ETC OSCRouter users get with inMin/inMax/outMin/outMax).
//!
//! ```yaml
//! - match: /desk/fader/*
//!   to: [ { plugin: scale, config: { in_min: 0, in_max: 127, out_min: 0.0, out_max: 1.0, to: lights } } ]
//! ```
//!
//! Config (JSON object; see `plugins/README.md`): `arg` (index, default 0), `in_min`, `in_max`,
//! `out_min`, `out_max` (required), `curve` (`"linear"` default, `"exponential"`, `"logarithmic"`
//! or a positive exponent), `clamp` (default true), `to` (a channel; without it the result answers
//! the sender), `address` (a new address; default the same), `as_int` (default false).

use patchbay_plugin_api::osc::{OscArg, OscMessage};
use patchbay_plugin_api::plugin::{Context, Origin, Plugin};
use serde::Deserialize;

/// Curvature of the named curves: `exponential` is `(e^(K·t) − 1) / (e^K − 1)` and `logarithmic`
/// its inverse. With 4, half travel gives 0.12 and 0.83: a fader that feels like a sound desk's
/// (fine control at the bottom) or its opposite, without the dead zone of a steeper curve.
const K: f64 = 4.0;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    arg: usize,
    in_min: f64,
    in_max: f64,
    out_min: f64,
    out_max: f64,
    #[serde(default)]
    curve: Option<CurveSpec>,
    #[serde(default = "default_clamp")]
    clamp: bool,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    as_int: bool,
}

fn default_clamp() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CurveSpec {
    Name(String),
    Exponent(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Curve {
    Linear,
    Exponential,
    Logarithmic,
    /// `t^n`, as Max's `[scale]` exponent.
    Power(f64),
}

impl Curve {
    /// Shapes `t` in 0..=1 (0 and 1 are fixed points). Outside that range (`clamp: false`) the
    /// mapping continues as a straight line, since the named curves are not defined there.
    pub fn shape(self, t: f64) -> f64 {
        if !(0.0..=1.0).contains(&t) {
            return t;
        }
        match self {
            Curve::Linear => t,
            Curve::Exponential => (K * t).exp_m1() / K.exp_m1(),
            Curve::Logarithmic => (t * K.exp_m1()).ln_1p() / K,
            Curve::Power(n) => t.powf(n),
        }
    }
}

/// The configured mapping, without the plugin around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaler {
    pub arg: usize,
    pub in_min: f64,
    pub in_max: f64,
    pub out_min: f64,
    pub out_max: f64,
    pub curve: Curve,
    pub clamp: bool,
    pub address: Option<String>,
    pub as_int: bool,
}

/// Why a message is passed over (counted as `skipped`, not an error: a stray message on a
/// matching address must not use up the plugin's error budget).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Skip {
    #[error("{address}: no argument {arg}")]
    MissingArg { address: String, arg: usize },
    #[error("{address}: argument {arg} has type {tag:?}, not a number")]
    NotNumeric {
        address: String,
        arg: usize,
        tag: String,
    },
    #[error("{address}: argument {arg} is not a finite number")]
    NotFinite { address: String, arg: usize },
}

impl Scaler {
    pub fn scale(&self, x: f64) -> f64 {
        let mut t = (x - self.in_min) / (self.in_max - self.in_min);
        if self.clamp {
            t = t.clamp(0.0, 1.0);
        }
        self.out_min + self.curve.shape(t) * (self.out_max - self.out_min)
    }

    /// The message with its argument scaled (other arguments as they were) and, if configured,
    /// its new address.
    pub fn apply(&self, msg: &OscMessage) -> Result<OscMessage, Skip> {
        let Some(arg) = msg.args.get(self.arg) else {
            return Err(Skip::MissingArg {
                address: msg.address.clone(),
                arg: self.arg,
            });
        };
        let x = match *arg {
            OscArg::Int(v) => f64::from(v),
            OscArg::Float(v) => f64::from(v),
            OscArg::Long(v) => v as f64,
            OscArg::Double(v) => v,
            // Toggle buttons send T/F.
            OscArg::True => 1.0,
            OscArg::False => 0.0,
            _ => {
                return Err(Skip::NotNumeric {
                    address: msg.address.clone(),
                    arg: self.arg,
                    tag: arg_tag(arg),
                })
            }
        };
        let y = self.scale(x);
        if !y.is_finite() {
            return Err(Skip::NotFinite {
                address: msg.address.clone(),
                arg: self.arg,
            });
        }
        // The output keeps the input's width: a 64-bit input stays 64-bit.
        let out = match (self.as_int, arg) {
            // `as` saturates, which is the right thing at the ends of an int range.
            (true, OscArg::Long(_)) => OscArg::Long(y.round() as i64),
            (true, _) => OscArg::Int(y.round() as i32),
            (false, OscArg::Double(_) | OscArg::Long(_)) => OscArg::Double(y),
            (false, _) => OscArg::Float(y as f32),
        };
        let mut args = msg.args.clone();
        args[self.arg] = out;
        let address = self.address.as_ref().unwrap_or(&msg.address).clone();
        Ok(OscMessage { address, args })
    }
}

fn arg_tag(arg: &OscArg) -> String {
    let mut tag = String::new();
    arg.push_type_tags(&mut tag);
    tag
}

/// Parses and checks the config; every message names the key at fault.
pub fn parse_config(json: &str) -> Result<(Scaler, Option<String>), String> {
    let c: Config = serde_json::from_str(json).map_err(|e| format!("scale config: {e}"))?;
    for (name, v) in [
        ("in_min", c.in_min),
        ("in_max", c.in_max),
        ("out_min", c.out_min),
        ("out_max", c.out_max),
    ] {
        if !v.is_finite() {
            return Err(format!("scale config: {name} must be a finite number"));
        }
    }
    if c.in_min == c.in_max {
        return Err(format!(
            "scale config: in_min and in_max are both {}; the input range must not be empty",
            c.in_min
        ));
    }
    let curve = match c.curve {
        None => Curve::Linear,
        Some(CurveSpec::Name(name)) => match name.as_str() {
            "linear" => Curve::Linear,
            "exponential" => Curve::Exponential,
            "logarithmic" => Curve::Logarithmic,
            other => {
                return Err(format!(
                    "scale config: unknown curve {other:?}: use \"linear\", \"exponential\", \"logarithmic\" or a positive exponent"
                ))
            }
        },
        Some(CurveSpec::Exponent(n)) if n.is_finite() && n > 0.0 => Curve::Power(n),
        Some(CurveSpec::Exponent(n)) => {
            return Err(format!(
                "scale config: curve exponent {n} must be a positive number"
            ))
        }
    };
    if let Some(address) = &c.address {
        if !address.starts_with('/') {
            return Err(format!(
                "scale config: address {address:?} must start with '/'"
            ));
        }
    }
    if c.to.as_deref() == Some("") {
        return Err("scale config: to must name a channel".into());
    }
    let scaler = Scaler {
        arg: c.arg,
        in_min: c.in_min,
        in_max: c.in_max,
        out_min: c.out_min,
        out_max: c.out_max,
        curve,
        clamp: c.clamp,
        address: c.address,
        as_int: c.as_int,
    };
    Ok((scaler, c.to))
}

pub struct Scale {
    scaler: Scaler,
    to: Option<String>,
    /// One warning per instance for skipped messages; after that only the counter, so a
    /// controller sending the wrong type at 100 Hz does not flood the log.
    warned: bool,
}

impl Plugin for Scale {
    fn init(config: &str, ctx: &mut Context<'_>) -> Result<Self, String> {
        let (scaler, to) = parse_config(config)?;
        ctx.log_debug(&format!("scale {scaler:?} to {to:?}"));
        Ok(Scale {
            scaler,
            to,
            warned: false,
        })
    }

    fn on_message(
        &mut self,
        msg: &OscMessage,
        origin: Origin,
        ctx: &mut Context<'_>,
    ) -> Result<(), String> {
        match self.scaler.apply(msg) {
            Ok(out) => match &self.to {
                Some(channel) => ctx.send(channel, &out)?,
                None => ctx.reply(origin, &out)?,
            },
            Err(skip) => {
                ctx.count("skipped", 1);
                if !self.warned {
                    self.warned = true;
                    ctx.log_warn(&format!(
                        "{skip}; skipped (further ones are only counted as skipped)"
                    ));
                }
            }
        }
        Ok(())
    }
}

patchbay_plugin_api::export_plugin!(Scale, "scale", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler(json: &str) -> Scaler {
        parse_config(json).expect("valid config").0
    }

    const MIDI: &str = r#"{"in_min": 0, "in_max": 127, "out_min": 0.0, "out_max": 1.0}"#;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn linear_maps_the_ends_and_the_middle() {
        let s = scaler(MIDI);
        assert_eq!(s.scale(0.0), 0.0);
        assert_eq!(s.scale(127.0), 1.0);
        assert!(close(s.scale(63.5), 0.5));
        let s = scaler(r#"{"in_min": 0, "in_max": 1, "out_min": -100, "out_max": 100}"#);
        assert!(close(s.scale(0.25), -50.0));
    }

    #[test]
    fn clamping_holds_the_output_range_and_can_be_turned_off() {
        let s = scaler(MIDI);
        assert_eq!(s.scale(-10.0), 0.0);
        assert_eq!(s.scale(500.0), 1.0);
        let s = scaler(
            r#"{"in_min": 0, "in_max": 10, "out_min": 0, "out_max": 100, "clamp": false, "curve": "exponential"}"#,
        );
        assert!(close(s.scale(20.0), 200.0));
        assert!(close(s.scale(-5.0), -50.0));
    }

    #[test]
    fn inverted_ranges_work_both_ways() {
        let s = scaler(r#"{"in_min": 127, "in_max": 0, "out_min": 0, "out_max": 1}"#);
        assert_eq!(s.scale(127.0), 0.0);
        assert_eq!(s.scale(0.0), 1.0);
        let s = scaler(r#"{"in_min": 0, "in_max": 1, "out_min": 1, "out_max": 0}"#);
        assert!(close(s.scale(0.25), 0.75));
        assert_eq!(s.scale(7.0), 0.0);
    }

    #[test]
    fn curves_fix_the_ends_and_bend_the_middle() {
        for curve in [
            Curve::Linear,
            Curve::Exponential,
            Curve::Logarithmic,
            Curve::Power(2.0),
            Curve::Power(0.3),
        ] {
            assert!(close(curve.shape(0.0), 0.0), "{curve:?}");
            assert!(close(curve.shape(1.0), 1.0), "{curve:?}");
            let mut last = 0.0;
            for i in 1..=100 {
                let y = curve.shape(f64::from(i) / 100.0);
                assert!(y > last, "{curve:?} is increasing");
                last = y;
            }
        }
        let exp = Curve::Exponential.shape(0.5);
        let log = Curve::Logarithmic.shape(0.5);
        assert!((exp - 0.1192).abs() < 1e-4, "{exp}");
        assert!((log - 0.8313).abs() < 1e-4, "{log}");
        // Logarithmic undoes exponential.
        for i in 0..=10 {
            let t = f64::from(i) / 10.0;
            assert!(close(
                Curve::Logarithmic.shape(Curve::Exponential.shape(t)),
                t
            ));
        }
        assert!(close(Curve::Power(2.0).shape(0.5), 0.25));
        let s = scaler(r#"{"in_min": 0, "in_max": 100, "out_min": 0, "out_max": 1, "curve": 3}"#);
        assert!(close(s.scale(50.0), 0.125));
    }

    #[test]
    fn apply_replaces_only_the_chosen_argument_and_keeps_the_width() {
        let s = scaler(
            r#"{"arg": 1, "in_min": 0, "in_max": 127, "out_min": 0, "out_max": 1, "address": "/lx/sub/1"}"#,
        );
        let msg = OscMessage::new(
            "/desk/fader/1",
            vec![OscArg::String("ch".into()), OscArg::Int(127), OscArg::True],
        );
        let out = s.apply(&msg).unwrap();
        assert_eq!(
            out,
            OscMessage::new(
                "/lx/sub/1",
                vec![
                    OscArg::String("ch".into()),
                    OscArg::Float(1.0),
                    OscArg::True
                ]
            )
        );
        let s = scaler(MIDI);
        let out = s
            .apply(&OscMessage::new("/a", vec![OscArg::Double(127.0)]))
            .unwrap();
        assert_eq!(out, OscMessage::new("/a", vec![OscArg::Double(1.0)]));
        let out = s
            .apply(&OscMessage::new("/a", vec![OscArg::Long(0)]))
            .unwrap();
        assert_eq!(out.args, vec![OscArg::Double(0.0)]);
        let out = s.apply(&OscMessage::new("/a", vec![OscArg::True])).unwrap();
        assert!(matches!(out.args[0], OscArg::Float(v) if (v - 1.0 / 127.0).abs() < 1e-6));
    }

    #[test]
    fn as_int_rounds_and_saturates() {
        let s =
            scaler(r#"{"in_min": 0, "in_max": 1, "out_min": 0, "out_max": 255, "as_int": true}"#);
        let apply = |arg| s.apply(&OscMessage::new("/dmx", vec![arg])).unwrap().args[0].clone();
        assert_eq!(apply(OscArg::Float(0.5)), OscArg::Int(128));
        assert_eq!(apply(OscArg::Float(0.1)), OscArg::Int(26));
        assert_eq!(apply(OscArg::Long(1)), OscArg::Long(255));
        let s = scaler(
            r#"{"in_min": 0, "in_max": 1, "out_min": 0, "out_max": 1e12, "as_int": true, "clamp": false}"#,
        );
        let out = s
            .apply(&OscMessage::new("/x", vec![OscArg::Float(1.0)]))
            .unwrap();
        assert_eq!(out.args, vec![OscArg::Int(i32::MAX)]);
    }

    #[test]
    fn messages_without_a_number_there_are_skipped_with_a_reason() {
        let s = scaler(MIDI);
        assert_eq!(
            s.apply(&OscMessage::new("/a", vec![]))
                .unwrap_err()
                .to_string(),
            "/a: no argument 0"
        );
        assert_eq!(
            s.apply(&OscMessage::new("/a", vec![OscArg::String("x".into())]))
                .unwrap_err()
                .to_string(),
            "/a: argument 0 has type \"s\", not a number"
        );
        assert_eq!(
            s.apply(&OscMessage::new("/a", vec![OscArg::Float(f32::NAN)]))
                .unwrap_err()
                .to_string(),
            "/a: argument 0 is not a finite number"
        );
    }

    #[test]
    fn config_errors_name_what_is_wrong() {
        let err = |json: &str| parse_config(json).unwrap_err();
        assert!(
            err(r#"{"in_min": 0, "in_max": 1, "out_min": 0}"#).contains("missing field `out_max`")
        );
        assert!(
            err(r#"{"in_min": 0, "in_max": 1, "out_min": 0, "out_max": 1, "inMin": 3}"#)
                .contains("unknown field `inMin`")
        );
        assert_eq!(
            err(r#"{"in_min": 5, "in_max": 5, "out_min": 0, "out_max": 1}"#),
            "scale config: in_min and in_max are both 5; the input range must not be empty"
        );
        assert!(
            err(r#"{"in_min": 0, "in_max": 1, "out_min": 0, "out_max": 1, "curve": "s"}"#)
                .starts_with("scale config: unknown curve \"s\"")
        );
        assert_eq!(
            err(r#"{"in_min": 0, "in_max": 1, "out_min": 0, "out_max": 1, "curve": -1}"#),
            "scale config: curve exponent -1 must be a positive number"
        );
        assert_eq!(
            err(r#"{"in_min": 0, "in_max": 1, "out_min": 0, "out_max": 1, "address": "x"}"#),
            "scale config: address \"x\" must start with '/'"
        );
        let (s, to) = parse_config(
            r#"{"in_min": 0, "in_max": 1, "out_min": 0, "out_max": 1, "to": "lights"}"#,
        )
        .unwrap();
        assert_eq!(to.as_deref(), Some("lights"));
        assert_eq!(
            (s.arg, s.curve, s.clamp, s.as_int),
            (0, Curve::Linear, true, false)
        );
    }
}
