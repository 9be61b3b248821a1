//! The YAML document as a tree of located nodes.
//!
//! serde-saphyr stops at the first error of a typed deserialization, so the document is read once
//! into this generic tree (every node, key or value, with its line:column), and validation walks the
//! tree reporting every problem it finds. Duplicate keys are kept in the tree (serde-saphyr's
//! `LastWins` policy hands every pair to our visitor) so they can be reported, then dropped.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, MessageFormatter, Spanned};

/// One YAML node with the position where it is used (for an alias: the alias, not the anchor).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    /// 1-based; 0 when unknown.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// For scalars: the exact source text where the value is defined (quotes included), when the
    /// parser could give it.
    pub raw: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Pairs in document order; duplicates are removed by [`dedup_keys`].
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The text of a scalar: strings as they are; numbers and booleans as written (so a channel
    /// called `1` or `n` keeps its spelling). `None` for null, sequences and maps.
    pub fn text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => Some(match self.plain_raw() {
                Some(raw) => raw.to_string(),
                None => self.value.to_string(),
            }),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// The raw text when it is a plain (unquoted, untagged, single-line) scalar.
    fn plain_raw(&self) -> Option<&str> {
        let raw = self.raw.as_deref()?;
        let plain = !raw.is_empty()
            && !raw.contains('\n')
            && !raw.starts_with(['"', '\'', '*', '&', '!', '|', '>', '{', '[']);
        plain.then_some(raw)
    }

    /// The column of character `index` (0-based) of this string scalar's value, when the value sits
    /// on one line and is written without escapes; otherwise `None`.
    pub fn column_of_char(&self, index: usize) -> Option<usize> {
        let Value::Str(s) = &self.value else {
            return None;
        };
        let raw = self.raw.as_deref()?;
        if raw.contains('\n') {
            return None;
        }
        let inner = if let Some(body) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            (body, 1)
        } else if let Some(body) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            (body, 1)
        } else {
            (raw, 0)
        };
        if inner.0 != s {
            return None;
        }
        Some(self.column + inner.1 + index)
    }

    pub fn kind_name(&self) -> &'static str {
        self.value.kind_name()
    }

    /// `(key text, key node, value node)` for a map, `None` otherwise.
    pub fn entries(&self) -> Option<impl Iterator<Item = (Option<String>, &Node, &Node)>> {
        match &self.value {
            Value::Map(pairs) => Some(pairs.iter().map(|(k, v)| (k.text(), k, v))),
            _ => None,
        }
    }

    /// The value under `key` in a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .find(|(k, _, _)| k.as_deref() == Some(key))
            .map(|(_, _, v)| v)
    }
}

impl Value {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
            Value::Seq(_) => f.write_str("[...]"),
            Value::Map(_) => f.write_str("{...}"),
        }
    }
}

/// A YAML syntax problem: the document could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses one YAML document into a located tree.
pub(crate) fn parse_tree(text: &str) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        // Every pair reaches our visitor; `dedup_keys` reports the repeats.
        duplicate_keys: DuplicateKeyPolicy::LastWins,
        // Only `true`/`false` are booleans: a channel called `n` or `on` stays a name.
        strict_booleans: true,
    };
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(root) => Ok(to_node(root, text)),
        Err(err) => Err(syntax_error(&err)),
    }
}

fn syntax_error(err: &serde_saphyr::Error) -> SyntaxError {
    let mut inner = err.without_snippet();
    if let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let (line, column) = err
        .location()
        .map(|l| {
            (
                usize::try_from(l.line()).unwrap_or(0),
                usize::try_from(l.column()).unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    let text = serde_saphyr::DefaultMessageFormatter.format_message(inner);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    SyntaxError {
        line,
        column,
        message: format!("invalid YAML: {text}"),
    }
}

/// What the serde pass produces; turned into [`Node`] with the source text at hand.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(i128::try_from(v)
            .map(Raw::Int)
            .unwrap_or(Raw::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key()? {
            let value = map.next_value()?;
            pairs.push((key, value));
        }
        Ok(Raw::Map(pairs))
    }
}

fn to_node(raw: Spanned<Raw>, text: &str) -> Node {
    let line = usize::try_from(raw.referenced.line()).unwrap_or(0);
    let column = usize::try_from(raw.referenced.column()).unwrap_or(0);
    let span = raw.defined.span();
    let source = match (span.byte_offset(), span.byte_len()) {
        (Some(start), Some(len)) => {
            let start = usize::try_from(start).ok();
            let end = start.and_then(|s| usize::try_from(len).ok().map(|l| s + l));
            start
                .zip(end)
                .and_then(|(s, e)| text.get(s..e))
                .map(str::to_string)
        }
        _ => None,
    };
    let (value, raw_text) = match raw.value {
        Raw::Null => (Value::Null, source),
        Raw::Bool(b) => (Value::Bool(b), source),
        Raw::Int(i) => (Value::Int(i), source),
        Raw::Float(x) => (Value::Float(x), source),
        Raw::Str(s) => (Value::Str(s), source),
        Raw::Seq(items) => (
            Value::Seq(items.into_iter().map(|i| to_node(i, text)).collect()),
            None,
        ),
        Raw::Map(pairs) => (
            Value::Map(
                pairs
                    .into_iter()
                    .map(|(k, v)| (to_node(k, text), to_node(v, text)))
                    .collect(),
            ),
            None,
        ),
    };
    Node {
        value,
        line,
        column,
        raw: raw_text,
    }
}

/// A key that appears twice in one map: `(yaml path of the repeat, repeat's key node, first's line)`.
pub(crate) struct DuplicateKey {
    pub path: String,
    pub key: String,
    pub line: usize,
    pub column: usize,
    pub first_line: usize,
}

/// Removes repeated keys from every map (the first one stays) and returns them, in document order.
pub(crate) fn dedup_keys(node: &mut Node, path: &str, out: &mut Vec<DuplicateKey>) {
    match &mut node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                dedup_keys(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Map(pairs) => {
            let mut seen: Vec<(Value, usize)> = Vec::new();
            let mut kept = Vec::with_capacity(pairs.len());
            for (key, mut value) in std::mem::take(pairs) {
                let name = key.text().unwrap_or_else(|| key.value.to_string());
                let child = join(path, &name);
                if let Some((_, first_line)) = seen.iter().find(|(v, _)| same_key(v, &key.value)) {
                    out.push(DuplicateKey {
                        path: child,
                        key: name,
                        line: key.line,
                        column: key.column,
                        first_line: *first_line,
                    });
                    continue;
                }
                seen.push((key.value.clone(), key.line));
                dedup_keys(&mut value, &child, out);
                kept.push((key, value));
            }
            *pairs = kept;
        }
        _ => {}
    }
}

fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// `parent.child`, or just `child` at the top; a key that is empty or has characters that would
/// make the path ambiguous is quoted: `channels."front desk"`.
pub(crate) fn join(parent: &str, child: &str) -> String {
    let plain = !child.is_empty()
        && child
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '/' | '$'));
    let child = if plain {
        child.to_string()
    } else {
        format!("{child:?}")
    };
    if parent.is_empty() {
        child
    } else {
        format!("{parent}.{child}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(node: &Node) -> (usize, usize) {
        (node.line, node.column)
    }

    #[test]
    fn every_key_and_value_has_its_position() {
        let text = "a: 1\nb:\n  - x\n  - { k: 'v w' }\n";
        let root = parse_tree(text).expect("valid");
        let Value::Map(pairs) = &root.value else {
            panic!("map")
        };
        assert_eq!(at(&pairs[0].0), (1, 1));
        assert_eq!(at(&pairs[0].1), (1, 4));
        assert_eq!(pairs[0].1.raw.as_deref(), Some("1"));
        let Value::Seq(items) = &pairs[1].1.value else {
            panic!("seq")
        };
        assert_eq!(at(&items[0]), (3, 5));
        let k = items[1].get("k").expect("k");
        assert_eq!((at(k), k.raw.as_deref()), ((4, 10), Some("'v w'")));
        assert_eq!(k.column_of_char(2), Some(13));
    }

    /// What we rely on from serde-saphyr: with `LastWins`, a map visitor sees every pair, repeats
    /// included (with `Error`, the first repeat would end the parse with one error).
    #[test]
    fn duplicate_keys_reach_the_tree_and_are_reported_once_each() {
        let text = "a: 1\nb: 2\na: 3\nm: { x: 1, x: 2, x: 3 }\n";
        let mut root = parse_tree(text).expect("valid");
        let Value::Map(pairs) = &root.value else {
            panic!("map")
        };
        assert_eq!(pairs.len(), 4);
        let mut dups = Vec::new();
        dedup_keys(&mut root, "", &mut dups);
        let found: Vec<(String, usize, usize, usize)> = dups
            .into_iter()
            .map(|d| (d.path, d.line, d.column, d.first_line))
            .collect();
        assert_eq!(
            found,
            [
                ("a".to_string(), 3, 1, 1),
                ("m.x".to_string(), 4, 12, 4),
                ("m.x".to_string(), 4, 18, 4)
            ]
        );
        assert_eq!(root.get("a").and_then(Node::text).as_deref(), Some("1"));
    }

    /// Why we do not slice the text per entry: a `Spanned` map or list only spans its first token
    /// (nothing for a block map, the `{` of a flow map), never the whole node.
    #[test]
    fn container_spans_do_not_cover_the_node() {
        let text = "block:\n  a: 1\nflow: { a: 1 }\n";
        let root: Spanned<Raw> = serde_saphyr::from_str(text).expect("valid");
        let Raw::Map(pairs) = root.value else {
            panic!("map")
        };
        let lens: Vec<Option<u64>> = pairs
            .iter()
            .map(|(_, v)| v.referenced.span().byte_len())
            .collect();
        assert_eq!(lens, [Some(0), Some(1)]);
    }

    #[test]
    fn scalars_keep_their_spelling_as_text() {
        let root = parse_tree("n: on\nx: 0x10\ny: 1.10\nz: true\nq: \"7\"\n").expect("valid");
        let text = |k: &str| root.get(k).and_then(Node::text);
        // Strict booleans: `on` is a string, so a channel may be called `on` or `n`.
        assert_eq!(
            root.get("n").map(|n| &n.value),
            Some(&Value::Str("on".into()))
        );
        assert_eq!(text("x").as_deref(), Some("0x10"));
        assert_eq!(text("y").as_deref(), Some("1.10"));
        assert_eq!(root.get("z").map(|n| &n.value), Some(&Value::Bool(true)));
        assert_eq!(text("q").as_deref(), Some("7"));
    }

    #[test]
    fn paths_quote_awkward_keys() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("channels", "desk"), "channels.desk");
        assert_eq!(join("channels", "front desk"), "channels.\"front desk\"");
        assert_eq!(join("channels", "a.b"), "channels.\"a.b\"");
        assert_eq!(join("channels", ""), "channels.\"\"");
    }
}
