//! A serde `Deserializer` over a located [`Node`], so typed config structs owned by other modules
//! (such as `UdpConfig`) deserialize with the position of the offending key or value, and with every
//! bad field of an entry reported, not just the first.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::suggest::unknown_key_message;
use super::yaml::{Node, Value};

/// A step of a path below the node being deserialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Other,
    MissingField(&'static str),
}

/// A deserialization problem with where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeError {
    pub message: String,
    /// Line and column of the node the problem belongs to.
    pub at: Option<(usize, usize)>,
    /// Below the node passed to [`deserialize_all`].
    pub path: Vec<Seg>,
    /// Index of the top map's entry the problem is in.
    entry: Option<usize>,
    kind: Kind,
}

impl DeError {
    fn new(message: String, kind: Kind) -> Self {
        DeError {
            message,
            at: None,
            path: Vec::new(),
            entry: None,
            kind,
        }
    }

    fn at(mut self, node: &Node) -> Self {
        if self.at.is_none() {
            self.at = Some((node.line, node.column));
            if let Some(text) = node.text() {
                if self.message == "invalid socket address syntax" {
                    self.message = super::socket_addr_message(&text);
                } else if self.message == "invalid IP address syntax" {
                    self.message = format!("`{text}` is not an IP address");
                }
            }
        }
        self
    }

    fn under(mut self, seg: Seg) -> Self {
        if let (Seg::Key(key), true) = (&seg, self.path.is_empty()) {
            if key.ends_with("_ms") && self.message.starts_with("expected") {
                self.message = format!(
                    "{}; durations are whole milliseconds, e.g. `{key}: 500`",
                    self.message
                );
            }
        }
        self.path.insert(0, seg);
        self
    }

    /// `prefix` plus this error's path, e.g. `channels.desk` + `listen`.
    pub fn yaml_path(&self, prefix: &str) -> String {
        let mut out = prefix.to_string();
        for seg in &self.path {
            match seg {
                Seg::Key(k) => out = super::yaml::join(&out, k),
                Seg::Index(i) => out = format!("{out}[{i}]"),
            }
        }
        out
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(msg.to_string(), Kind::Other)
    }
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(
            format!("expected {}, found {unexp}", expected(exp)),
            Kind::Other,
        )
    }
    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(
            format!("expected {}, found {unexp}", expected(exp)),
            Kind::Other,
        )
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(unknown_key_message(field, expected), Kind::Other)
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(
            format!(
                "unknown value `{variant}`; expected one of: {}",
                expected.join(", ")
            ),
            Kind::Other,
        )
    }
    fn missing_field(field: &'static str) -> Self {
        DeError::new(format!("missing `{field}`"), Kind::MissingField(field))
    }
    fn duplicate_field(field: &'static str) -> Self {
        DeError::new(format!("`{field}` is given twice; keep one"), Kind::Other)
    }
}

/// serde's names for primitive types, in operator words.
fn expected(exp: &dyn de::Expected) -> String {
    let exp = exp.to_string();
    match exp.as_str() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more".to_string(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" => "`true` or `false`".to_string(),
        _ => exp,
    }
}

/// Deserializes `T` from `node`, reporting every bad entry of the top map rather than the first:
/// after an error in one entry, that entry is left out and the rest is tried again.
pub(crate) fn deserialize_all<T: DeserializeOwned>(node: &Node) -> Result<T, Vec<DeError>> {
    let mut skip = HashSet::new();
    let mut skipped_keys = Vec::new();
    let mut errors = Vec::new();
    loop {
        match T::deserialize(NodeDe {
            node,
            skip: Some(&skip),
        }) {
            Ok(value) if errors.is_empty() => return Ok(value),
            Ok(_) => return Err(errors),
            Err(e) => {
                if let Kind::MissingField(field) = e.kind {
                    // Left out because it was wrong: already reported.
                    if skipped_keys.iter().any(|k: &String| k == field) {
                        return Err(errors);
                    }
                }
                let entry = e.entry;
                errors.push(e);
                match entry {
                    Some(i) if skip.insert(i) => {
                        if let Some((key, _)) = map_pair(node, i) {
                            skipped_keys.extend(key.text());
                        }
                    }
                    _ => return Err(errors),
                }
            }
        }
    }
}

fn map_pair(node: &Node, i: usize) -> Option<&(Node, Node)> {
    match &node.value {
        Value::Map(pairs) => pairs.get(i),
        _ => None,
    }
}

#[derive(Clone, Copy)]
struct NodeDe<'a> {
    node: &'a Node,
    /// Entries of this (top) map to leave out.
    skip: Option<&'a HashSet<usize>>,
}

impl<'a> NodeDe<'a> {
    fn plain(node: &'a Node) -> Self {
        NodeDe { node, skip: None }
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        let result = match &node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => match (u64::try_from(*i), i64::try_from(*i)) {
                (Ok(u), _) => visitor.visit_u64(u),
                (_, Ok(s)) => visitor.visit_i64(s),
                _ => visitor.visit_i128(*i),
            },
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
            }),
            Value::Map(pairs) => visitor.visit_map(MapDe {
                pairs: pairs.iter().enumerate(),
                skip: self.skip,
                current: None,
            }),
        };
        result.map_err(|e| e.at(node))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => visitor.visit_none::<DeError>().map_err(|e| e.at(self.node)),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // Numbers and booleans read as strings keep their spelling (`name: 1` is "1").
        match (&self.node.value, self.node.text()) {
            (Value::Bool(_) | Value::Int(_) | Value::Float(_), Some(text)) => visitor
                .visit_string::<DeError>(text)
                .map_err(|e| e.at(self.node)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // Unit variants written as a plain string: `mode: fast`.
        match self.node.text() {
            Some(text) => visitor
                .visit_enum(IntoDeserializer::<DeError>::into_deserializer(text))
                .map_err(|e| e.at(self.node)),
            None => self.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct ignored_any
    }
}

struct SeqDe<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, item)) => seed
                .deserialize(NodeDe::plain(item))
                .map(Some)
                .map_err(|e| e.at(item).under(Seg::Index(i))),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a> {
    pairs: std::iter::Enumerate<std::slice::Iter<'a, (Node, Node)>>,
    skip: Option<&'a HashSet<usize>>,
    current: Option<(usize, &'a Node, &'a Node)>,
}

impl MapDe<'_> {
    fn key_seg(key: &Node) -> Seg {
        Seg::Key(key.text().unwrap_or_else(|| key.value.to_string()))
    }
}

impl<'de> de::MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let next = loop {
            match self.pairs.next() {
                None => return Ok(None),
                Some((i, _)) if self.skip.is_some_and(|s| s.contains(&i)) => continue,
                Some((i, (k, v))) => break (i, k, v),
            }
        };
        let (i, key, value) = next;
        self.current = Some((i, key, value));
        seed.deserialize(NodeDe::plain(key))
            .map(Some)
            .map_err(|mut e| {
                e.entry = Some(i);
                e.at(key).under(Self::key_seg(key))
            })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((i, key, value)) = self.current.take() else {
            return Err(de::Error::custom("a value was asked for before its key"));
        };
        seed.deserialize(NodeDe::plain(value)).map_err(|mut e| {
            e.entry = Some(i);
            e.at(value).under(Self::key_seg(key))
        })
    }
}
