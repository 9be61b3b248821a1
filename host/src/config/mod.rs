//! Configuration: YAML text to a validated [`Plan`] (patterns compiled once, rewrites split, port
//! clashes and feedback loops found), reporting every problem at once, each with file, YAML path and
//! line:column.
//!
//! How: the document is parsed once by serde-saphyr into a generic tree where every key and value
//! carries its position (`yaml`). Validation walks that tree entry by entry and keeps going after a
//! problem. Typed structs owned by other modules (`UdpConfig`) are deserialized from their subtree by
//! a serde `Deserializer` over the tree (`de`), which positions each error at the offending key or
//! value and retries without a bad field so that every bad field of an entry is reported.
//! Channel kinds live in `channels` (one table row per `kind:`).

mod build;
mod channels;
mod de;
mod net;
mod plan;
mod rewrite;
mod suggest;
#[cfg(test)]
mod tests;
mod yaml;

pub use net::NetRange;
pub use plan::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Where in the document, e.g. `channels.desk.listen` or `routes[2].to[0].forward`.
    pub yaml_path: String,
    /// 1-based; 0 when unknown (e.g. the file could not be read).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.yaml_path,
            self.message
        )
    }
}

/// Every problem found in a config file, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Reads and validates a config file. A file that cannot be read is one error at line 0.
pub fn load(path: &Path) -> Result<Plan, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            yaml_path: build::DOCUMENT.to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read the config file: {e}"),
        }])),
    }
}

/// Validates config text as if read from `path` (relative paths resolve against its folder).
pub fn parse(text: &str, path: &Path) -> Result<Plan, ConfigErrors> {
    build::build(text, path)
}

/// The message for a value that should be a socket address but is not.
fn socket_addr_message(text: &str) -> String {
    format!(
        "`{text}` is not an `ip:port` address; write e.g. `127.0.0.1:9000` (host names are not \
         looked up; IPv6 goes in brackets and quotes: \"[::1]:9000\")"
    )
}
