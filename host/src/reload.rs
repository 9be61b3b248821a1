//! What a config edit changes: a pure comparison of the running plan with a new one, and the short
//! human summary an operator reads in the log (and `patchbay check NEW --against OLD` prints).

use std::collections::BTreeSet;
use std::fmt;

use crate::config::{ChannelKind, ChannelPlan, Plan, RoutePlan};

/// How a channel present in both plans changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelChange {
    /// Settings applied in place: the socket, its queue and its traffic are untouched.
    Live(Vec<String>),
    /// A new socket is bound and swapped in.
    Rebind(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanDiff {
    pub channels_added: Vec<String>,
    pub channels_removed: Vec<String>,
    /// In the new plan's order.
    pub channels_changed: Vec<(String, ChannelChange)>,
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    /// Same routes, another order (which matters for `stop:`).
    pub routes_reordered: bool,
    pub metrics_changed: bool,
    pub bundles_changed: bool,
}

impl PlanDiff {
    pub fn between(old: &Plan, new: &Plan) -> PlanDiff {
        let mut diff = PlanDiff::default();
        for channel in &new.channels {
            match old.channel(&channel.name) {
                None => diff.channels_added.push(channel.name.clone()),
                Some(before) => {
                    if let Some(change) = channel_change(before, channel) {
                        diff.channels_changed.push((channel.name.clone(), change));
                    }
                }
            }
        }
        for channel in &old.channels {
            if new.channel(&channel.name).is_none() {
                diff.channels_removed.push(channel.name.clone());
            }
        }

        let find = |plan: &'_ Plan, name: &str| plan.routes.iter().position(|r| r.name == name);
        for route in &new.routes {
            match find(old, &route.name) {
                None => diff.routes_added.push(route.name.clone()),
                Some(i) if signature(&old.routes[i]) != signature(route) => {
                    diff.routes_changed.push(route.name.clone())
                }
                Some(_) => {}
            }
        }
        for route in &old.routes {
            if find(new, &route.name).is_none() {
                diff.routes_removed.push(route.name.clone());
            }
        }
        let kept = |plan: &Plan, other: &Plan| -> Vec<String> {
            plan.routes
                .iter()
                .filter(|r| find(other, &r.name).is_some())
                .map(|r| r.name.clone())
                .collect()
        };
        diff.routes_reordered = kept(old, new) != kept(new, old);
        diff.metrics_changed = old.metrics != new.metrics;
        diff.bundles_changed = old.bundles != new.bundles;
        diff
    }

    pub fn is_empty(&self) -> bool {
        *self == PlanDiff::default()
    }

    /// What a save that is valid YAML may still have lost: more than half the routes or channels.
    pub fn large_removal(&self, old: &Plan) -> Option<String> {
        let mut lost = Vec::new();
        if !self.routes_removed.is_empty() && self.routes_removed.len() * 2 > old.routes.len() {
            lost.push(format!(
                "{} of {} routes ({})",
                self.routes_removed.len(),
                old.routes.len(),
                self.routes_removed.join(", ")
            ));
        }
        if !self.channels_removed.is_empty() && self.channels_removed.len() * 2 > old.channels.len()
        {
            lost.push(format!(
                "{} of {} channels ({})",
                self.channels_removed.len(),
                old.channels.len(),
                self.channels_removed.join(", ")
            ));
        }
        (!lost.is_empty()).then(|| lost.join(" and "))
    }
}

impl fmt::Display for PlanDiff {
    /// `routes: +cues -old ~faders; channels: +fx -spare ~lights (live: send) ~desk (rebind: listen)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "no changes");
        }
        let mut parts = Vec::new();
        let mut routes = Vec::new();
        routes.extend(self.routes_added.iter().map(|n| format!("+{n}")));
        routes.extend(self.routes_removed.iter().map(|n| format!("-{n}")));
        routes.extend(self.routes_changed.iter().map(|n| format!("~{n}")));
        if self.routes_reordered {
            routes.push("(reordered)".into());
        }
        if !routes.is_empty() {
            parts.push(format!("routes: {}", routes.join(" ")));
        }
        let mut channels = Vec::new();
        channels.extend(self.channels_added.iter().map(|n| format!("+{n}")));
        channels.extend(self.channels_removed.iter().map(|n| format!("-{n}")));
        for (name, change) in &self.channels_changed {
            channels.push(match change {
                ChannelChange::Live(keys) => format!("~{name} (live: {})", keys.join(", ")),
                ChannelChange::Rebind(keys) => format!("~{name} (rebind: {})", keys.join(", ")),
            });
        }
        if !channels.is_empty() {
            parts.push(format!("channels: {}", channels.join(" ")));
        }
        if self.metrics_changed {
            parts.push("metrics: changed (takes effect at the next start)".into());
        }
        if self.bundles_changed {
            parts.push("bundles: changed".into());
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// A route's whole meaning, for "did it change". The pattern's Debug form is its source text.
fn signature(route: &RoutePlan) -> String {
    format!(
        "{:?}|{:?}|{:?}|{}|{}",
        route.matcher, route.from, route.targets, route.stop, route.incoming_patterns
    )
}

fn channel_change(old: &ChannelPlan, new: &ChannelPlan) -> Option<ChannelChange> {
    if old.kind == new.kind {
        return None;
    }
    let keys = changed_keys(&old.kind, &new.kind);
    let rebind = match (&old.kind, &new.kind) {
        (ChannelKind::Udp(a), ChannelKind::Udp(b)) => a.needs_rebind(b),
        (ChannelKind::Multicast(a), ChannelKind::Multicast(b)) => a.needs_rebind(b),
        (ChannelKind::Broadcast(a), ChannelKind::Broadcast(b)) => a.needs_rebind(b),
        (ChannelKind::Tcp(a), ChannelKind::Tcp(b)) => a.needs_rebind(b),
        (ChannelKind::Peer(a), ChannelKind::Peer(b)) => a.needs_rebind(b),
        _ => true,
    };
    Some(if rebind {
        ChannelChange::Rebind(keys)
    } else {
        ChannelChange::Live(keys)
    })
}

/// The YAML keys whose values differ, by comparing the two configs as serialized maps.
fn changed_keys(old: &ChannelKind, new: &ChannelKind) -> Vec<String> {
    let (a, b) = (as_map(old), as_map(new));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn as_map(kind: &ChannelKind) -> serde_json::Map<String, serde_json::Value> {
    let value = match kind {
        ChannelKind::Udp(c) => serde_json::to_value(c),
        ChannelKind::Multicast(c) => serde_json::to_value(c),
        ChannelKind::Broadcast(c) => serde_json::to_value(c),
        ChannelKind::Tcp(c) => serde_json::to_value(c),
        ChannelKind::Peer(c) => serde_json::to_value(c),
    };
    match value {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    fn plan(yaml: &str) -> Plan {
        parse(yaml, Path::new("show.yaml")).expect("valid test config")
    }

    const BASE: &str = "version: 1
channels:
  desk: { kind: udp, listen: 127.0.0.1:9000 }
  lights: { kind: udp, send: 127.0.0.1:7000 }
  spare: { kind: udp, send: 127.0.0.1:7002 }
routes:
  - { name: a, match: /a, to: [ { forward: lights } ] }
  - { name: b, match: /b/*, to: [ { forward: lights } ] }
  - { name: c, match: /c, to: [ { forward: lights } ] }
";

    #[test]
    fn identical_plans_have_no_changes() {
        let diff = PlanDiff::between(&plan(BASE), &plan(BASE));
        assert!(diff.is_empty());
        assert_eq!(diff.to_string(), "no changes");
    }

    #[test]
    fn routes_added_removed_changed_and_reordered_are_named() {
        let new = BASE
            .replace("  - { name: a, match: /a, to: [ { forward: lights } ] }\n", "")
            .replace("/b/*", "/b/?")
            .replace("  - { name: c, match: /c, to: [ { forward: lights } ] }\n", "  - { name: c, match: /c, to: [ { forward: lights } ] }\n  - { name: d, match: /d, to: [ { forward: lights } ] }\n");
        let diff = PlanDiff::between(&plan(BASE), &plan(&new));
        assert_eq!(diff.routes_added, ["d"]);
        assert_eq!(diff.routes_removed, ["a"]);
        assert_eq!(diff.routes_changed, ["b"]);
        assert!(!diff.routes_reordered);
        assert_eq!(diff.to_string(), "routes: +d -a ~b");

        let a = "  - { name: a, match: /a, to: [ { forward: lights } ] }\n";
        let c = "  - { name: c, match: /c, to: [ { forward: lights } ] }\n";
        let swapped = BASE.replace(a, "").replace(c, &format!("{c}{a}"));
        let diff = PlanDiff::between(&plan(BASE), &plan(&swapped));
        assert!(diff.routes_reordered && diff.routes_changed.is_empty());
        assert_eq!(diff.to_string(), "routes: (reordered)");
    }

    #[test]
    fn channel_settings_are_live_or_rebind() {
        let new = BASE
            .replace(
                "send: 127.0.0.1:7000",
                "send: 127.0.0.1:7010, allow: [127.0.0.1]",
            )
            .replace("listen: 127.0.0.1:9000", "listen: 127.0.0.1:9001")
            .replace(
                "  spare: { kind: udp, send: 127.0.0.1:7002 }\n",
                "  fx: { kind: udp, send: 127.0.0.1:7003 }\n",
            );
        let diff = PlanDiff::between(&plan(BASE), &plan(&new));
        assert_eq!(diff.channels_added, ["fx"]);
        assert_eq!(diff.channels_removed, ["spare"]);
        assert_eq!(
            diff.channels_changed,
            [
                (
                    "desk".to_string(),
                    ChannelChange::Rebind(vec!["listen".into()])
                ),
                (
                    "lights".to_string(),
                    ChannelChange::Live(vec!["allow".into(), "send".into()])
                ),
            ]
        );
        assert_eq!(
            diff.to_string(),
            "channels: +fx -spare ~desk (rebind: listen) ~lights (live: allow, send)"
        );
    }

    #[test]
    fn removing_more_than_half_is_flagged_by_name() {
        let old = plan(BASE);
        let new = plan(
            &BASE
                .replace(
                    "  - { name: a, match: /a, to: [ { forward: lights } ] }\n",
                    "",
                )
                .replace(
                    "  - { name: c, match: /c, to: [ { forward: lights } ] }\n",
                    "",
                ),
        );
        let diff = PlanDiff::between(&old, &new);
        assert_eq!(
            diff.large_removal(&old).as_deref(),
            Some("2 of 3 routes (a, c)")
        );
        let one = plan(&BASE.replace(
            "  - { name: a, match: /a, to: [ { forward: lights } ] }\n",
            "",
        ));
        assert_eq!(PlanDiff::between(&old, &one).large_removal(&old), None);
    }
}
