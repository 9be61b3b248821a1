//! Owned OSC values. The forward path never builds these (it works on [`super::PacketRef`] views);
//! scripts, plugins and tools do.

use super::timetag::TimeTag;

/// One OSC argument, named after its type tag.
#[derive(Debug, Clone, PartialEq)]
pub enum OscArg {
    /// `i`: 32-bit integer.
    Int(i32),
    /// `f`: 32-bit float.
    Float(f32),
    /// `s`: string.
    String(String),
    /// `b`: blob.
    Blob(Vec<u8>),
    /// `h`: 64-bit integer.
    Long(i64),
    /// `d`: 64-bit float.
    Double(f64),
    /// `t`: time tag.
    Time(TimeTag),
    /// `S`: symbol (an alternate string type).
    Symbol(String),
    /// `c`: an ASCII character sent as 32 bits.
    Char(char),
    /// `r`: 32-bit RGBA color.
    Rgba(Rgba),
    /// `m`: 4-byte MIDI message.
    Midi(Midi),
    /// `T`.
    True,
    /// `F`.
    False,
    /// `N`: nil.
    Nil,
    /// `I`: infinitum (impulse, bang).
    Inf,
    /// `[` ... `]`: an array of arguments.
    Array(Vec<OscArg>),
}

/// `r` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rgba {
    pub r: u8,
    pub g: u8,
    pub b: u8,
    pub a: u8,
}

/// `m` argument: port id, status byte, data1, data2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Midi {
    pub port: u8,
    pub status: u8,
    pub data1: u8,
    pub data2: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OscMessage {
    pub address: String,
    pub args: Vec<OscArg>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OscBundle {
    pub timetag: TimeTag,
    pub content: Vec<OscPacket>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OscPacket {
    Message(OscMessage),
    Bundle(OscBundle),
}

impl OscArg {
    /// The type tag(s) of this argument as they appear in a type-tag string (arrays include brackets).
    pub fn push_type_tags(&self, out: &mut String) {
        match self {
            OscArg::Int(_) => out.push('i'),
            OscArg::Float(_) => out.push('f'),
            OscArg::String(_) => out.push('s'),
            OscArg::Blob(_) => out.push('b'),
            OscArg::Long(_) => out.push('h'),
            OscArg::Double(_) => out.push('d'),
            OscArg::Time(_) => out.push('t'),
            OscArg::Symbol(_) => out.push('S'),
            OscArg::Char(_) => out.push('c'),
            OscArg::Rgba(_) => out.push('r'),
            OscArg::Midi(_) => out.push('m'),
            OscArg::True => out.push('T'),
            OscArg::False => out.push('F'),
            OscArg::Nil => out.push('N'),
            OscArg::Inf => out.push('I'),
            OscArg::Array(items) => {
                out.push('[');
                for item in items {
                    item.push_type_tags(out);
                }
                out.push(']');
            }
        }
    }
}

impl OscMessage {
    pub fn new(address: impl Into<String>, args: Vec<OscArg>) -> Self {
        OscMessage {
            address: address.into(),
            args,
        }
    }

    /// The type-tag string without its leading comma.
    pub fn type_tags(&self) -> String {
        let mut tags = String::with_capacity(self.args.len());
        for arg in &self.args {
            arg.push_type_tags(&mut tags);
        }
        tags
    }
}
