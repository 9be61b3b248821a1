//! `raw` payloads: Python pickles of plain data, decoded without executing anything.
//!
//! peerpy sends `pickle.dumps(value)` (the default protocol: 4 on Python 3.8 to 3.13, 5 from 3.14)
//! and reads with `pickle.loads`, which runs whatever code a pickle names.
//!
//! # Why a hand-written decoder
//!
//! serde-pickle (1.2) never runs code, and we use its [`Value`] type and its writer, but its reader
//! is not fit for hostile input from the network, nor for all honest input:
//!
//! - it turns class instances (`NEWOBJ`, `OBJ`, `INST`, `BUILD`, `copyreg._reconstructor`) into
//!   empty dicts or their state without a word, where we must refuse and say what was asked for;
//! - it has no size limit, and its values are trees, so each memo reference is decoded as a full
//!   copy: `[[x] * 1000] * 1000` is a few kilobytes of pickle and a million copies of `x`;
//! - it reserves room for 128 values at every `MARK`, so a pickle of `MARK`s costs 5 KB per byte;
//! - it refuses honest data with shared references two levels deep (`a = [1]; b = [a, a];
//!   pickle.dumps([b, b])` fails with "recursive structure found": its memo reference counts assume
//!   every reference is resolved once, but copies are resolved again).
//!
//! So [`decode`] is a small unpickler of its own for the opcodes of protocols 0 to 5. It keeps the
//! unpickler's stack and memo as Python does, with references (a memo get is the same object, and
//! a later `APPEND` to it is seen everywhere, as in Python), and builds the [`Value`] tree only at
//! the end, after counting what that tree will hold.
//!
//! # What is refused
//!
//! - **Code.** Any global except the few constructors Python itself uses to write plain data at
//!   protocols 0 to 4: `_codecs.encode` and `bytes` (bytes at protocols 0 to 2), `builtins.set`,
//!   `frozenset` and `bytearray` (also spelled `__builtin__.*`), each only with the arguments
//!   Python writes. Any other global (`os.system`, a class,
//!   `datetime`, `complex`), object construction (`NEWOBJ`, `OBJ`, `INST`, `BUILD`), persistent ids,
//!   extension codes and out-of-band buffers are refused with an error naming what was asked for.
//! - **Size.** The tree is counted before it is built: every item (value, element, key) and every
//!   byte of strings, bytes and big integers, through memo references as often as they are copied,
//!   against [`PickleLimits`]; nesting depth too. A container inside itself is refused (a tree cannot
//!   hold it). While reading, every value pushed, every element a constructor copies and every
//!   byte of every scalar count against twice the limits, so reading costs no more. Integers over
//!   4300 digits are refused (Python's own limit for int/str conversion).
//! - **Python 2 byte strings** (`STRING`, `BINSTRING`, `SHORT_BINSTRING`): Python 3, which peerpy
//!   needs, never writes them.
//! - Anything malformed: a length past the end, a stack underflow, bytes after `STOP`, an unhashable
//!   dict key or set element, a string that is not valid Unicode.
//!
//! # Conversions
//!
//! [`to_json`] and [`to_osc_args`] convert a decoded value for scripts and for routing, with the
//! same rules as json payloads (see [`super::values`]), plus: bytes are a blob (`b`) in OSC and an
//! array of byte values in JSON; tuples and sets are arrays (sets in serde-pickle's order); dict
//! keys become strings as Python's `json.dumps` makes them (`1` -> `"1"`, `True` -> `"true"`,
//! `None` -> `"null"`; other keys their JSON text); integers beyond 64 bits are float64.
//!
//! [`encode`] writes a pickle with serde-pickle (protocol 3, which every Python 3 reads).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use num_bigint::BigInt;
use num_traits::ToPrimitive;
use patchbay_plugin_api::osc::OscArg;
use serde_pickle::{HashableValue, Value};

/// How large a decoded pickle may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickleLimits {
    /// Values, elements and keys, counting every copy a memo reference makes.
    pub max_items: usize,
    /// Bytes of strings, bytes objects and big integers, counting every copy.
    pub max_bytes: usize,
    /// Containers inside containers (a flat list is depth 1).
    pub max_depth: usize,
}

impl Default for PickleLimits {
    fn default() -> Self {
        PickleLimits {
            max_items: 1_000_000,
            max_bytes: 64 << 20,
            max_depth: 100,
        }
    }
}

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    #[error("pickle needs the global `{0}`: only plain data is accepted (no classes, functions or objects)")]
    Global(String),
    #[error("pickle builds an instance of `{0}`: only plain data is accepted")]
    Instance(String),
    #[error("pickle builds an object ({0}): only plain data is accepted")]
    Object(&'static str),
    #[error("pickle uses {0}, which only the sender's own program can resolve")]
    External(&'static str),
    #[error("pickle holds a Python 2 byte string ({0}), which Python 3 never writes")]
    Python2String(&'static str),
    #[error("pickle would decode to more than {0} items")]
    TooManyItems(usize),
    #[error("pickle would decode to more than {0} bytes of strings and bytes")]
    TooManyBytes(usize),
    #[error("pickle nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("reading the pickle would build or copy more than {values} values or {bytes} bytes")]
    TooMuchWork { values: u64, bytes: u64 },
    #[error("pickle holds a recursive structure (a container inside itself)")]
    Recursive,
    #[error("pickle holds an integer longer than {0} digits")]
    IntegerTooLong(usize),
    #[error("pickle protocol {0} is not supported (0 to 5 are)")]
    Protocol(u8),
    #[error("unknown pickle opcode 0x{op:02x} at byte {at}")]
    UnknownOpcode { op: u8, at: usize },
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed { at: usize, what: &'static str },
    #[error("cannot write the pickle: {0}")]
    Encode(String),
}

/// Decodes a pickle of plain data (see the module docs for what is refused).
pub fn decode(bytes: &[u8], limits: &PickleLimits) -> Result<Value, PickleError> {
    let mut reader = Reader {
        data: bytes,
        pos: 0,
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        scalars: Vec::new(),
        objs: Vec::new(),
        on_path: Vec::new(),
        limits: *limits,
        work_left: (
            WORK_FACTOR * limits.max_items as u64,
            WORK_FACTOR * limits.max_bytes as u64,
        ),
    };
    let root = reader.run()?;
    if reader.pos != bytes.len() {
        return Err(PickleError::Malformed {
            at: reader.pos,
            what: "bytes after STOP",
        });
    }
    reader.count(root)?;
    reader.build(root, 0)
}

/// Writes `value` as a pickle (protocol 3).
pub fn encode(value: &Value) -> Result<Vec<u8>, PickleError> {
    serde_pickle::value_to_vec(value, serde_pickle::SerOptions::new())
        .map_err(|e| PickleError::Encode(e.to_string()))
}

// ---------------------------------------------------------------------------------------------------
// The unpickler

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

/// Python's limit on int/str conversion (3.11+); longer integers are refused.
const MAX_INT_DIGITS: usize = 4300;
/// The same limit in bytes for the binary encodings (4300 decimal digits fit in 1786 bytes).
const MAX_INT_BYTES: usize = 1786;
/// Reading may push and copy this many times the item and byte limits.
const WORK_FACTOR: u64 = 2;

/// The constructors Python uses to write plain data, which we rebuild as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Constructor {
    /// `_codecs.encode(str, "latin1")`: bytes at protocols 0 to 2.
    Encode,
    /// `bytes()`: empty bytes at protocols 0 to 2.
    Bytes,
    Set,
    FrozenSet,
    Bytearray,
}

fn constructor(module: &str, name: &str) -> Result<Constructor, PickleError> {
    match (module, name) {
        ("_codecs", "encode") => Ok(Constructor::Encode),
        ("builtins" | "__builtin__", "bytes") => Ok(Constructor::Bytes),
        ("builtins" | "__builtin__", "set") => Ok(Constructor::Set),
        ("builtins" | "__builtin__", "frozenset") => Ok(Constructor::FrozenSet),
        ("builtins" | "__builtin__", "bytearray") => Ok(Constructor::Bytearray),
        _ => Err(PickleError::Global(format!("{module}.{name}"))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    List,
    Tuple,
    Dict,
    Set,
    FrozenSet,
}

/// One stack entry or memo entry: a reference, as in Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// `scalars[i]`: None, bool, int, float, str or bytes.
    Scalar(u32),
    /// `objs[i]`: a container, shared by every reference to it.
    Obj(u32),
    /// A constructor, not yet called.
    Global(Constructor),
}

struct Obj {
    kind: Kind,
    /// Elements; for a dict, keys and values alternating.
    children: Vec<Node>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// The start of the current opcode (for messages).
    at: usize,
    stack: Vec<Node>,
    /// Stack heights at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Node>,
    scalars: Vec<Value>,
    objs: Vec<Obj>,
    /// `on_path[i]`: object `i` is on the path of the current [`Reader::count`] walk.
    on_path: Vec<bool>,
    limits: PickleLimits,
    /// Values and bytes that may still be pushed or copied while reading.
    work_left: (u64, u64),
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: &'static str) -> PickleError {
        PickleError::Malformed { at: self.at, what }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(self.malformed("truncated (a length runs past the end)"));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.fixed::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.fixed()?))
    }

    fn i32_len(&mut self) -> Result<u64, PickleError> {
        let n = i32::from_le_bytes(self.fixed()?);
        u64::try_from(n).map_err(|_| self.malformed("negative length"))
    }

    /// A text argument up to `\n` (not included; a `\r` before it is dropped).
    fn line(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.malformed("truncated (a text argument has no newline)"));
        };
        self.pos += end + 1;
        let line = &rest[..end];
        Ok(line.strip_suffix(b"\r").unwrap_or(line))
    }

    fn line_text(&mut self) -> Result<&'a str, PickleError> {
        let line = self.line()?;
        std::str::from_utf8(line).map_err(|_| self.malformed("text argument is not UTF-8"))
    }

    fn memo_index(&mut self) -> Result<u32, PickleError> {
        let text = self.line_text()?;
        text.parse()
            .map_err(|_| self.malformed("memo index is not a number"))
    }

    fn charge(&mut self, values: u64, bytes: u64) -> Result<(), PickleError> {
        if values > self.work_left.0 || bytes > self.work_left.1 {
            return Err(PickleError::TooMuchWork {
                values: WORK_FACTOR * self.limits.max_items as u64,
                bytes: WORK_FACTOR * self.limits.max_bytes as u64,
            });
        }
        self.work_left.0 -= values;
        self.work_left.1 -= bytes;
        Ok(())
    }

    /// Every value pushed costs one unit of work, which bounds the memory reading takes.
    fn push(&mut self, node: Node) -> Result<(), PickleError> {
        self.charge(1, 0)?;
        self.stack.push(node);
        Ok(())
    }

    /// Every scalar is kept until the end, so its bytes count too (a constructor copying the same
    /// bytes again and again runs out of budget).
    fn scalar(&mut self, value: Value) -> Result<(), PickleError> {
        self.charge(0, scalar_bytes(&value))?;
        self.scalars.push(value);
        self.push(Node::Scalar(self.scalars.len() as u32 - 1))
    }

    fn new_obj(&mut self, kind: Kind, children: Vec<Node>) -> Result<(), PickleError> {
        self.objs.push(Obj { kind, children });
        self.on_path.push(false);
        self.push(Node::Obj(self.objs.len() as u32 - 1))
    }

    /// The bottom of the current MARK segment.
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Node, PickleError> {
        if self.stack.len() > self.base() {
            if let Some(node) = self.stack.pop() {
                return Ok(node);
            }
        }
        Err(self.malformed("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Node>, PickleError> {
        let Some(base) = self.marks.pop() else {
            return Err(self.malformed("no MARK to pop to"));
        };
        Ok(self.stack.split_off(base))
    }

    /// The container of `kind` on top of the stack, which APPEND, SETITEM and ADDITEMS extend.
    fn target(&mut self, kind: Kind, what: &'static str) -> Result<usize, PickleError> {
        if self.stack.len() > self.base() {
            if let Some(Node::Obj(id)) = self.stack.last() {
                if self.objs[*id as usize].kind == kind {
                    return Ok(*id as usize);
                }
            }
        }
        Err(self.malformed(what))
    }

    fn extend(&mut self, kind: Kind, items: Vec<Node>) -> Result<(), PickleError> {
        let what = match kind {
            Kind::List => "appending to something that is not a list",
            Kind::Dict => "setting items of something that is not a dict",
            _ => "adding items to something that is not a set",
        };
        if kind == Kind::Dict && !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of items for a dict"));
        }
        let id = self.target(kind, what)?;
        self.objs[id].children.extend(items);
        Ok(())
    }

    fn text(&self, raw: &[u8]) -> Result<Value, PickleError> {
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(Value::String(s.to_string())),
            Err(_) => Err(self.malformed("string is not valid UTF-8")),
        }
    }

    fn run(&mut self) -> Result<Node, PickleError> {
        loop {
            self.at = self.pos;
            let code = self.byte()?;
            match code {
                op::PROTO => {
                    let version = self.byte()?;
                    if version > 5 {
                        return Err(PickleError::Protocol(version));
                    }
                }
                op::FRAME => {
                    self.u64()?;
                }
                op::STOP => return self.pop(),
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    if self.stack.len() > self.base() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let top = self.pop()?;
                    self.stack.push(top);
                    self.push(top)?;
                }

                op::PUT => {
                    let index = self.memo_index()?;
                    self.memoize(index)?;
                }
                op::BINPUT => {
                    let index = self.byte()? as u32;
                    self.memoize(index)?;
                }
                op::LONG_BINPUT => {
                    let index = self.u32()?;
                    self.memoize(index)?;
                }
                op::MEMOIZE => {
                    let index = self.memo.len() as u32;
                    self.memoize(index)?;
                }
                op::GET => {
                    let index = self.memo_index()?;
                    self.memo_get(index)?;
                }
                op::BINGET => {
                    let index = self.byte()? as u32;
                    self.memo_get(index)?;
                }
                op::LONG_BINGET => {
                    let index = self.u32()?;
                    self.memo_get(index)?;
                }

                op::NONE => self.scalar(Value::None)?,
                op::NEWTRUE => self.scalar(Value::Bool(true))?,
                op::NEWFALSE => self.scalar(Value::Bool(false))?,
                op::INT => {
                    let line = self.line()?;
                    let value = match line {
                        // Protocol 0 and 1 booleans.
                        b"01" => Value::Bool(true),
                        b"00" => Value::Bool(false),
                        digits => self.text_int(digits)?,
                    };
                    self.scalar(value)?;
                }
                op::LONG => {
                    let line = self.line()?;
                    let digits = line.strip_suffix(b"L").unwrap_or(line);
                    let value = self.text_int(digits)?;
                    self.scalar(value)?;
                }
                op::BININT => {
                    let n = i32::from_le_bytes(self.fixed()?);
                    self.scalar(Value::I64(n.into()))?;
                }
                op::BININT1 => {
                    let n = self.byte()?;
                    self.scalar(Value::I64(n.into()))?;
                }
                op::BININT2 => {
                    let n = u16::from_le_bytes(self.fixed()?);
                    self.scalar(Value::I64(n.into()))?;
                }
                op::LONG1 => {
                    let n = self.byte()? as u64;
                    let raw = self.take(n)?;
                    self.scalar(int_value(BigInt::from_signed_bytes_le(raw)))?;
                }
                op::LONG4 => {
                    let n = self.i32_len()?;
                    if n > MAX_INT_BYTES as u64 {
                        return Err(PickleError::IntegerTooLong(MAX_INT_DIGITS));
                    }
                    let raw = self.take(n)?;
                    self.scalar(int_value(BigInt::from_signed_bytes_le(raw)))?;
                }
                op::FLOAT => {
                    let text = self.line_text()?;
                    let f: f64 = text
                        .parse()
                        .map_err(|_| self.malformed("float is not a number"))?;
                    self.scalar(Value::F64(f))?;
                }
                op::BINFLOAT => {
                    let f = f64::from_be_bytes(self.fixed()?);
                    self.scalar(Value::F64(f))?;
                }

                op::UNICODE => {
                    let line = self.line()?;
                    let text = raw_unicode_escape(line)
                        .ok_or_else(|| self.malformed("string is not valid Unicode"))?;
                    self.scalar(Value::String(text))?;
                }
                op::SHORT_BINUNICODE => {
                    let n = self.byte()? as u64;
                    let raw = self.take(n)?;
                    let value = self.text(raw)?;
                    self.scalar(value)?;
                }
                op::BINUNICODE => {
                    let n = self.u32()? as u64;
                    let raw = self.take(n)?;
                    let value = self.text(raw)?;
                    self.scalar(value)?;
                }
                op::BINUNICODE8 => {
                    let n = self.u64()?;
                    let raw = self.take(n)?;
                    let value = self.text(raw)?;
                    self.scalar(value)?;
                }
                op::SHORT_BINBYTES => {
                    let n = self.byte()? as u64;
                    let raw = self.take(n)?;
                    self.scalar(Value::Bytes(raw.to_vec()))?;
                }
                op::BINBYTES => {
                    let n = self.u32()? as u64;
                    let raw = self.take(n)?;
                    self.scalar(Value::Bytes(raw.to_vec()))?;
                }
                op::BINBYTES8 | op::BYTEARRAY8 => {
                    let n = self.u64()?;
                    let raw = self.take(n)?;
                    self.scalar(Value::Bytes(raw.to_vec()))?;
                }
                op::STRING => return Err(PickleError::Python2String("STRING")),
                op::BINSTRING => return Err(PickleError::Python2String("BINSTRING")),
                op::SHORT_BINSTRING => return Err(PickleError::Python2String("SHORT_BINSTRING")),

                op::EMPTY_TUPLE => self.new_obj(Kind::Tuple, Vec::new())?,
                op::EMPTY_LIST => self.new_obj(Kind::List, Vec::new())?,
                op::EMPTY_DICT => self.new_obj(Kind::Dict, Vec::new())?,
                op::EMPTY_SET => self.new_obj(Kind::Set, Vec::new())?,
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = (code - op::TUPLE1 + 1) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.new_obj(Kind::Tuple, items)?;
                }
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.new_obj(Kind::Tuple, items)?;
                }
                op::LIST => {
                    let items = self.pop_mark()?;
                    self.new_obj(Kind::List, items)?;
                }
                op::DICT => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err(self.malformed("odd number of items for a dict"));
                    }
                    self.new_obj(Kind::Dict, items)?;
                }
                op::FROZENSET => {
                    let items = self.pop_mark()?;
                    self.new_obj(Kind::FrozenSet, items)?;
                }
                op::APPEND => {
                    let value = self.pop()?;
                    self.extend(Kind::List, vec![value])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    self.extend(Kind::List, items)?;
                }
                op::SETITEM => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend(Kind::Dict, vec![key, value])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    self.extend(Kind::Dict, items)?;
                }
                op::ADDITEMS => {
                    let items = self.pop_mark()?;
                    self.extend(Kind::Set, items)?;
                }

                op::GLOBAL => {
                    let module = String::from_utf8_lossy(self.line()?).into_owned();
                    let name = String::from_utf8_lossy(self.line()?).into_owned();
                    let c = constructor(&module, &name)?;
                    self.push(Node::Global(c))?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let c = constructor(&self.name_of(module), &self.name_of(name))?;
                    self.push(Node::Global(c))?;
                }
                op::REDUCE => self.reduce()?,

                op::INST => {
                    let module = String::from_utf8_lossy(self.line()?).into_owned();
                    let name = String::from_utf8_lossy(self.line()?).into_owned();
                    return Err(PickleError::Instance(format!("{module}.{name}")));
                }
                op::OBJ => return Err(PickleError::Object("OBJ")),
                op::NEWOBJ => return Err(PickleError::Object("NEWOBJ")),
                op::NEWOBJ_EX => return Err(PickleError::Object("NEWOBJ_EX")),
                op::BUILD => return Err(PickleError::Object("BUILD")),
                op::PERSID | op::BINPERSID => return Err(PickleError::External("a persistent id")),
                op::EXT1 | op::EXT2 | op::EXT4 => {
                    return Err(PickleError::External("an extension registry code"))
                }
                op::NEXT_BUFFER | op::READONLY_BUFFER => {
                    return Err(PickleError::External("an out-of-band buffer"))
                }
                other => {
                    return Err(PickleError::UnknownOpcode {
                        op: other,
                        at: self.at,
                    })
                }
            }
        }
    }

    fn text_int(&self, digits: &[u8]) -> Result<Value, PickleError> {
        if digits.len() > MAX_INT_DIGITS {
            return Err(PickleError::IntegerTooLong(MAX_INT_DIGITS));
        }
        let text = std::str::from_utf8(digits).map_err(|_| self.malformed("bad integer"))?;
        if let Ok(small) = text.parse::<i64>() {
            return Ok(Value::I64(small));
        }
        BigInt::parse_bytes(digits, 10)
            .map(int_value)
            .ok_or_else(|| self.malformed("bad integer"))
    }

    /// A global's module or name, pushed as a string before STACK_GLOBAL.
    fn name_of(&self, node: Node) -> String {
        match node {
            Node::Scalar(i) => match &self.scalars[i as usize] {
                Value::String(s) => s.clone(),
                _ => "<not a string>".to_string(),
            },
            _ => "<not a string>".to_string(),
        }
    }

    fn memoize(&mut self, index: u32) -> Result<(), PickleError> {
        let Some(&top) = self.stack.last().filter(|_| self.stack.len() > self.base()) else {
            return Err(self.malformed("stack underflow"));
        };
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), PickleError> {
        let Some(&node) = self.memo.get(&index) else {
            return Err(self.malformed("memo get of an index never stored"));
        };
        self.push(node)
    }

    /// Calls one of the allowed constructors with the arguments tuple on the stack.
    fn reduce(&mut self) -> Result<(), PickleError> {
        let args = self.pop()?;
        let callable = self.pop()?;
        let Node::Global(constructor) = callable else {
            return Err(self.malformed("REDUCE without a constructor"));
        };
        let args = match args {
            Node::Obj(id) if self.objs[id as usize].kind == Kind::Tuple => {
                let args = self.objs[id as usize].children.clone();
                self.charge(args.len() as u64, 0)?;
                args
            }
            _ => return Err(self.malformed("constructor arguments are not a tuple")),
        };
        let first = args.first().copied();
        match (constructor, first) {
            (Constructor::Set | Constructor::FrozenSet, Some(Node::Obj(list)))
                if args.len() == 1 && self.objs[list as usize].kind == Kind::List =>
            {
                // set(list) takes the list's elements as they are now.
                let items = self.objs[list as usize].children.clone();
                self.charge(items.len() as u64, 0)?;
                let kind = if constructor == Constructor::Set {
                    Kind::Set
                } else {
                    Kind::FrozenSet
                };
                self.new_obj(kind, items)
            }
            (Constructor::Encode, Some(Node::Scalar(s))) if args.len() == 2 => {
                let encoding = match args[1] {
                    Node::Scalar(e) => self.scalars[e as usize].clone(),
                    _ => Value::None,
                };
                if !matches!(&encoding, Value::String(e) if e == "latin1" || e == "latin-1") {
                    return Err(self.malformed("_codecs.encode with an encoding other than latin1"));
                }
                let bytes = match &self.scalars[s as usize] {
                    Value::String(text) => latin1(text),
                    _ => None,
                };
                let bytes = bytes.ok_or_else(|| {
                    self.malformed("_codecs.encode of something that is not latin-1 text")
                })?;
                self.scalar(Value::Bytes(bytes))
            }
            (Constructor::Bytearray, Some(Node::Scalar(s))) if args.len() == 1 => {
                match &self.scalars[s as usize] {
                    Value::Bytes(b) => {
                        let b = b.clone();
                        self.scalar(Value::Bytes(b))
                    }
                    _ => Err(self.malformed("bytearray of something that is not bytes")),
                }
            }
            (Constructor::Bytes | Constructor::Bytearray, None) => {
                self.scalar(Value::Bytes(Vec::new()))
            }
            (Constructor::Set, None) => self.new_obj(Kind::Set, Vec::new()),
            (Constructor::FrozenSet, None) => self.new_obj(Kind::FrozenSet, Vec::new()),
            _ => Err(self.malformed("constructor called with arguments it does not take")),
        }
    }

    /// Counts the tree `root` will become (every reference as a copy) against the limits, and
    /// refuses recursion and nesting past the depth limit. Iterative; visits at most as many nodes
    /// as the item limit.
    fn count(&mut self, root: Node) -> Result<(), PickleError> {
        let mut items_left = self.limits.max_items as u64;
        let mut bytes_left = self.limits.max_bytes as u64;
        // (object, next child, depth of the object).
        let mut path: Vec<(u32, usize, usize)> = Vec::new();
        let mut visit =
            |reader: &mut Self, node: Node, depth: usize, path: &mut Vec<(u32, usize, usize)>| {
                if items_left == 0 {
                    return Err(PickleError::TooManyItems(reader.limits.max_items));
                }
                items_left -= 1;
                match node {
                    Node::Scalar(i) => {
                        let bytes = scalar_bytes(&reader.scalars[i as usize]);
                        if bytes > bytes_left {
                            return Err(PickleError::TooManyBytes(reader.limits.max_bytes));
                        }
                        bytes_left -= bytes;
                        Ok(())
                    }
                    Node::Global(_) => Err(PickleError::Malformed {
                        at: reader.data.len(),
                        what: "a constructor left uncalled",
                    }),
                    Node::Obj(id) => {
                        if reader.on_path[id as usize] {
                            return Err(PickleError::Recursive);
                        }
                        if depth + 1 > reader.limits.max_depth {
                            return Err(PickleError::TooDeep(reader.limits.max_depth));
                        }
                        reader.on_path[id as usize] = true;
                        path.push((id, 0, depth + 1));
                        Ok(())
                    }
                }
            };
        let mut result = visit(self, root, 0, &mut path);
        while result.is_ok() {
            let Some(frame) = path.last_mut() else { break };
            let (id, next, depth) = *frame;
            match self.objs[id as usize].children.get(next).copied() {
                Some(child) => {
                    frame.1 += 1;
                    result = visit(self, child, depth, &mut path);
                }
                None => {
                    self.on_path[id as usize] = false;
                    path.pop();
                }
            }
        }
        for (id, _, _) in path {
            self.on_path[id as usize] = false;
        }
        result
    }

    /// Builds the value of `node`. Called after [`Reader::count`], so the depth is bounded and there
    /// is no cycle.
    fn build(&self, node: Node, depth: usize) -> Result<Value, PickleError> {
        let obj = match node {
            Node::Scalar(i) => return Ok(self.scalars[i as usize].clone()),
            Node::Global(_) => return Err(self.malformed("a constructor left uncalled")),
            Node::Obj(id) => &self.objs[id as usize],
        };
        if depth >= self.limits.max_depth {
            return Err(PickleError::TooDeep(self.limits.max_depth));
        }
        let items = || -> Result<Vec<Value>, PickleError> {
            obj.children
                .iter()
                .map(|&child| self.build(child, depth + 1))
                .collect()
        };
        Ok(match obj.kind {
            Kind::List => Value::List(items()?),
            Kind::Tuple => Value::Tuple(items()?),
            Kind::Set | Kind::FrozenSet => {
                let mut set = BTreeSet::new();
                for item in items()? {
                    set.insert(self.hashable(item, obj.kind)?);
                }
                if obj.kind == Kind::Set {
                    Value::Set(set)
                } else {
                    Value::FrozenSet(set)
                }
            }
            Kind::Dict => {
                let mut map = BTreeMap::new();
                let mut all = items()?.into_iter();
                while let (Some(key), Some(value)) = (all.next(), all.next()) {
                    map.insert(self.hashable(key, Kind::Dict)?, value);
                }
                Value::Dict(map)
            }
        })
    }

    fn hashable(&self, value: Value, inside: Kind) -> Result<HashableValue, PickleError> {
        value.into_hashable().map_err(|_| PickleError::Malformed {
            at: self.data.len(),
            what: match inside {
                Kind::Dict => "a dict key that Python cannot hash (a list, dict or set)",
                _ => "a set element that Python cannot hash (a list, dict or set)",
            },
        })
    }
}

/// An integer as serde-pickle represents it: `I64` when it fits.
fn int_value(big: BigInt) -> Value {
    match big.to_i64() {
        Some(small) => Value::I64(small),
        None => Value::Int(big),
    }
}

/// What a scalar adds to the byte count.
fn scalar_bytes(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.len() as u64,
        Value::Bytes(b) => b.len() as u64,
        Value::Int(big) => big.bits().div_ceil(8),
        _ => 0,
    }
}

/// Python's raw-unicode-escape: bytes are Latin-1 characters, except `\uXXXX` and `\UXXXXXXXX`.
/// `None` for an escape that is cut short or names no character (a lone surrogate).
fn raw_unicode_escape(raw: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        let digits = match (b, raw.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        if digits == 0 {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = raw.get(i + 2..i + 2 + digits)?;
        let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        out.push(char::from_u32(code)?);
        i += 2 + digits;
    }
    Some(out)
}

/// `text.encode("latin1")`; `None` if a character is over U+00FF.
fn latin1(text: &str) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Conversions

/// A decoded pickle as JSON for scripts (see the module docs for the rules).
pub fn to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::None => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::I64(i) => J::from(*i),
        Value::Int(big) => big_to_json(big),
        Value::F64(f) => float_to_json(*f),
        Value::Bytes(b) => J::Array(b.iter().map(|&x| J::from(x)).collect()),
        Value::String(s) => J::String(s.clone()),
        Value::List(items) | Value::Tuple(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Set(items) | Value::FrozenSet(items) => {
            J::Array(items.iter().map(hashable_to_json).collect())
        }
        Value::Dict(map) => J::Object(map.iter().map(|(k, v)| (key_text(k), to_json(v))).collect()),
    }
}

fn hashable_to_json(value: &HashableValue) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        HashableValue::None => J::Null,
        HashableValue::Bool(b) => J::Bool(*b),
        HashableValue::I64(i) => J::from(*i),
        HashableValue::Int(big) => big_to_json(big),
        HashableValue::F64(f) => float_to_json(*f),
        HashableValue::Bytes(b) => J::Array(b.iter().map(|&x| J::from(x)).collect()),
        HashableValue::String(s) => J::String(s.clone()),
        HashableValue::Tuple(items) => J::Array(items.iter().map(hashable_to_json).collect()),
        HashableValue::FrozenSet(items) => J::Array(items.iter().map(hashable_to_json).collect()),
    }
}

fn big_to_json(big: &BigInt) -> serde_json::Value {
    if let Some(i) = big.to_i64() {
        serde_json::Value::from(i)
    } else if let Some(u) = big.to_u64() {
        serde_json::Value::from(u)
    } else {
        float_to_json(big.to_f64().unwrap_or(f64::NAN))
    }
}

/// NaN and infinities have no JSON form: null.
fn float_to_json(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// A dict key as Python's `json.dumps` writes it; keys it refuses get their JSON text.
fn key_text(key: &HashableValue) -> String {
    match key {
        HashableValue::String(s) => s.clone(),
        HashableValue::None => "null".to_string(),
        HashableValue::Bool(b) => b.to_string(),
        HashableValue::I64(i) => i.to_string(),
        HashableValue::Int(big) => big.to_string(),
        HashableValue::F64(f) if f.is_nan() => "NaN".to_string(),
        HashableValue::F64(f) if f.is_infinite() => {
            if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
        }
        other => hashable_to_json(other).to_string(),
    }
}

/// A decoded pickle as OSC arguments: a list, tuple or set is one argument per element, anything
/// else one argument (see [`super::values`] for the shared rules).
pub fn to_osc_args(value: &Value) -> Vec<OscArg> {
    match value {
        Value::List(items) | Value::Tuple(items) => items.iter().map(to_osc_arg).collect(),
        Value::Set(items) | Value::FrozenSet(items) => {
            items.iter().map(hashable_to_osc_arg).collect()
        }
        other => vec![to_osc_arg(other)],
    }
}

fn to_osc_arg(value: &Value) -> OscArg {
    match value {
        Value::None => OscArg::Nil,
        Value::Bool(true) => OscArg::True,
        Value::Bool(false) => OscArg::False,
        Value::I64(i) => super::values::int_arg(*i),
        Value::Int(big) => big_to_osc(big),
        Value::F64(f) => OscArg::Double(*f),
        Value::Bytes(b) => OscArg::Blob(b.clone()),
        Value::String(s) => OscArg::String(s.clone()),
        Value::List(items) | Value::Tuple(items) => {
            OscArg::Array(items.iter().map(to_osc_arg).collect())
        }
        Value::Set(items) | Value::FrozenSet(items) => {
            OscArg::Array(items.iter().map(hashable_to_osc_arg).collect())
        }
        Value::Dict(_) => OscArg::String(to_json(value).to_string()),
    }
}

fn hashable_to_osc_arg(value: &HashableValue) -> OscArg {
    match value {
        HashableValue::None => OscArg::Nil,
        HashableValue::Bool(true) => OscArg::True,
        HashableValue::Bool(false) => OscArg::False,
        HashableValue::I64(i) => super::values::int_arg(*i),
        HashableValue::Int(big) => big_to_osc(big),
        HashableValue::F64(f) => OscArg::Double(*f),
        HashableValue::Bytes(b) => OscArg::Blob(b.clone()),
        HashableValue::String(s) => OscArg::String(s.clone()),
        HashableValue::Tuple(items) => {
            OscArg::Array(items.iter().map(hashable_to_osc_arg).collect())
        }
        HashableValue::FrozenSet(items) => {
            OscArg::Array(items.iter().map(hashable_to_osc_arg).collect())
        }
    }
}

fn big_to_osc(big: &BigInt) -> OscArg {
    match big.to_i64() {
        Some(i) => super::values::int_arg(i),
        None => OscArg::Double(big.to_f64().unwrap_or(f64::NAN)),
    }
}

/// A JSON value as pickle data: objects become dicts with string keys, integers beyond i64 big
/// integers.
pub fn from_json(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::None,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::I64(i)
            } else if let Some(u) = n.as_u64() {
                Value::Int(BigInt::from(u))
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::String(s.clone()),
        J::Array(items) => Value::List(items.iter().map(from_json).collect()),
        J::Object(map) => Value::Dict(
            map.iter()
                .map(|(k, v)| (HashableValue::String(k.clone()), from_json(v)))
                .collect(),
        ),
    }
}

/// OSC arguments as pickle data: the arguments as a list, converted as [`super::values::osc_args_to_json`]
/// does, except that blobs stay bytes.
pub fn from_osc_args(args: &[OscArg]) -> Value {
    Value::List(args.iter().map(from_osc_arg).collect())
}

fn from_osc_arg(arg: &OscArg) -> Value {
    match arg {
        OscArg::Blob(b) => Value::Bytes(b.clone()),
        OscArg::Array(items) => Value::List(items.iter().map(from_osc_arg).collect()),
        other => from_json(&super::values::osc_arg_to_json(other)),
    }
}

#[cfg(test)]
mod tests;
