//! `peer.hostname` without a blocking lookup on the message path: names come from a cache that one
//! background thread fills with reverse lookups. Until a name is known, the address is the name.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

pub struct Hostnames {
    names: Arc<DashMap<IpAddr, Arc<str>>>,
    asked: Mutex<HashSet<IpAddr>>,
    lookups: Mutex<Sender<IpAddr>>,
}

impl Hostnames {
    pub fn start() -> Hostnames {
        let names: Arc<DashMap<IpAddr, Arc<str>>> = Arc::new(DashMap::new());
        let (lookups, wanted) = channel::<IpAddr>();
        let filled = names.clone();
        let spawned = std::thread::Builder::new()
            .name("patchbay hostnames".into())
            .spawn(move || {
                for ip in wanted {
                    if let Ok(name) = dns_lookup::lookup_addr(&ip) {
                        filled.insert(ip, name.into());
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "Cannot start the hostname resolver ({e}); peer.hostname will be the address."
            );
        }
        Hostnames {
            names,
            asked: Mutex::new(HashSet::new()),
            lookups: Mutex::new(lookups),
        }
    }

    /// The name of `ip` if known, else its address (and a lookup is started for next time).
    pub fn get(&self, ip: IpAddr) -> Arc<str> {
        if ip.is_loopback() {
            return "localhost".into();
        }
        if let Some(name) = self.names.get(&ip) {
            return name.clone();
        }
        let first_time = self
            .asked
            .lock()
            .map(|mut asked| asked.insert(ip))
            .unwrap_or(false);
        if first_time {
            if let Ok(lookups) = self.lookups.lock() {
                let _ = lookups.send(ip);
            }
        }
        ip.to_string().into()
    }
}
