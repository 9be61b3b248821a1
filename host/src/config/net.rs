//! Network values as written in YAML.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A source network for `allow:`: `10.0.0.0/8`, or a bare address meaning just that host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetRange(pub IpNet);

impl NetRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 sender reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl FromStr for NetRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(NetRange(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(NetRange(IpNet::from(ip)));
        }
        Err(format!(
            "`{s}` is not a network (write 192.168.1.0/24 or a single address like 192.168.1.20)"
        ))
    }
}

impl fmt::Display for NetRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for NetRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for NetRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}
