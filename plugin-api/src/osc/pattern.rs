//! OSC address patterns. (SKELETON)

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {position}: {message}")]
pub struct PatternError {
    pub position: usize,
    pub message: String,
}

/// A compiled OSC address pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
}

/// Byte ranges in the address matched by each wildcard of the pattern, in pattern order ($1, $2, ...).
#[derive(Debug, Default, Clone)]
pub struct Captures {
    pub spans: Vec<(usize, usize)>,
}

impl Pattern {
    pub fn compile(pattern: &str) -> Result<Pattern, PatternError> {
        Ok(Pattern { source: pattern.to_string() })
    }
    pub fn as_str(&self) -> &str {
        &self.source
    }
    /// True when the pattern has no wildcard at all (a plain address).
    pub fn is_literal(&self) -> bool {
        todo!()
    }
    /// How many captures a match produces.
    pub fn capture_count(&self) -> usize {
        todo!()
    }
    pub fn is_match(&self, address: &str) -> bool {
        let _ = address;
        todo!()
    }
    /// On a match, fills `caps` (reusing its allocation) and returns true.
    pub fn captures(&self, address: &str, caps: &mut Captures) -> bool {
        let _ = (address, caps);
        todo!()
    }
}

/// True when `address` contains any pattern syntax (`?*[]{}` or `//`).
pub fn has_pattern_syntax(address: &str) -> bool {
    address.bytes().any(|b| matches!(b, b'?' | b'*' | b'[' | b']' | b'{' | b'}')) || address.contains("//")
}
