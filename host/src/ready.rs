//! The ready line on stdout and the `--ready-file` JSON: what tests and tools read to learn every
//! channel's real address (configs may say port 0).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

use crate::channel::ChannelStatus;

#[derive(Debug, Serialize)]
pub struct Ready<'a> {
    pub pid: u32,
    pub channels: &'a BTreeMap<String, ChannelStatus>,
    pub metrics: Option<SocketAddr>,
}

impl Ready<'_> {
    /// `patchbay ready: desk udp listen 127.0.0.1:9000; lights udp send 127.0.0.1:7000 from 0.0.0.0:5123; ...`
    pub fn line(&self) -> String {
        let mut line = String::from("patchbay ready:");
        for (i, (name, status)) in self.channels.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            let _ = write!(line, "{sep}{name} {}", status.kind);
            if !status.up {
                let _ = write!(
                    line,
                    " DOWN ({})",
                    status.error.as_deref().unwrap_or("not bound")
                );
                continue;
            }
            if let Some(listen) = status.listen {
                let _ = write!(line, " listen {listen}");
            }
            if let Some(send) = status.send {
                let _ = write!(line, " send {send}");
                if status.listen.is_none() {
                    if let Some(local) = status.local {
                        let _ = write!(line, " from {local}");
                    }
                }
            }
        }
        if self.channels.is_empty() {
            line.push_str(" no channels");
        }
        if let Some(metrics) = self.metrics {
            let _ = write!(line, "; metrics http://{metrics}/metrics");
        }
        line
    }

    /// Written to a temporary file and renamed, so a reader never sees half of it.
    pub fn write_file(&self, path: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }
}
