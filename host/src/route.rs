//! The route table: which routes a message reaches, in order. Pure code: no sockets, no clock, no
//! logging, so it is unit-tested, property-tested and fuzzed without I/O.
//!
//! Literal `match:` addresses are found by hash (Fx: the table's keys come from the config, not
//! the network, so a fast hash is safe); wildcard patterns are precompiled and tried in route
//! order behind a cheap literal-prefix check. Results are route indices in file order, so `stop:` and
//! the order targets fire in are exactly what the YAML says.

use rustc_hash::FxHashMap as HashMap;
use std::path::Path;
use std::sync::Arc;

use metrics::Counter;
use patchbay_plugin_api::osc::pattern::{has_pattern_syntax, Captures};
use patchbay_plugin_api::osc::Pattern;

use crate::config::{RewritePart, RouteMatch, RoutePlan, TargetPlan};
use crate::plugin::PluginInstance;
use crate::script::ScriptHandle;

/// A channel's identity for its whole life in the process (stable across reloads), so routes can name
/// their source and destination without string compares per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

#[derive(Clone)]
pub enum Target {
    /// `unbundle`: a bundle's messages go out one by one at their bundle's time.
    Forward {
        channel: ChannelId,
        rewrite: Option<Rewrite>,
        unbundle: bool,
    },
    Reply {
        rewrite: Option<Rewrite>,
    },
    /// Queued to a script's thread.
    Script {
        script: Arc<ScriptHandle>,
        function: Arc<str>,
    },
    /// Queued to a plugin instance's thread.
    Plugin {
        instance: Arc<PluginInstance>,
    },
}

impl Target {
    pub fn rewrite(&self) -> Option<&Rewrite> {
        match self {
            Target::Forward { rewrite, .. } | Target::Reply { rewrite } => rewrite.as_ref(),
            Target::Script { .. } | Target::Plugin { .. } => None,
        }
    }
}

/// A rewrite template split into literal text and capture references once, at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    parts: Box<[RewritePart]>,
}

impl Rewrite {
    pub fn new(parts: Vec<RewritePart>) -> Self {
        Rewrite {
            parts: parts.into_boxed_slice(),
        }
    }

    /// Writes the new address into `out` (cleared first). A capture the match did not produce (an
    /// `unmatched` route has none) expands to nothing; config validation keeps that from happening.
    pub fn apply(&self, address: &str, caps: &Captures, out: &mut String) {
        out.clear();
        for part in self.parts.iter() {
            match part {
                RewritePart::Literal(text) => out.push_str(text),
                RewritePart::Capture(n) => {
                    if let Some(&(start, end)) = caps.spans.get(n - 1) {
                        out.push_str(&address[start..end]);
                    }
                }
            }
        }
    }

    pub fn uses_captures(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, RewritePart::Capture(_)))
    }
}

pub struct CompiledRoute {
    pub name: Arc<str>,
    /// `None` for an `unmatched` route.
    pub pattern: Option<Pattern>,
    pub from: Option<Box<[ChannelId]>>,
    pub targets: Box<[Target]>,
    pub stop: bool,
    pub incoming_patterns: bool,
    /// Some target needs the wildcard captures, so they are computed on a match.
    pub needs_captures: bool,
    pub matches: Counter,
}

impl CompiledRoute {
    fn accepts_from(&self, from: ChannelId) -> bool {
        self.from.as_ref().is_none_or(|list| list.contains(&from))
    }
}

/// Route indices in file order; reused between messages so matching does not allocate.
#[derive(Default)]
pub struct Hits {
    pub routes: Vec<u32>,
}

pub struct RouteTable {
    routes: Vec<CompiledRoute>,
    literal: HashMap<Box<str>, Vec<u32>>,
    /// Wildcard routes with the literal text before their first wildcard.
    /// Wildcard routes whose first address part is literal (`/desk/*/level`), by that part: a
    /// message is only tried against the patterns that can match its first part.
    patterns_by_part: HashMap<Box<str>, Vec<(u32, Box<str>)>>,
    /// Wildcard routes whose first part has a wildcard (`/*/level`, `//go`): tried for every message.
    patterns_any: Vec<(u32, Box<str>)>,
    /// Literal routes that opted in to incoming address patterns.
    incoming: Vec<u32>,
    unmatched: Vec<u32>,
    unmatched_counter: Counter,
}

impl RouteTable {
    /// Compiles the plan's routes. `channel_id` maps a channel name from the (validated) plan to its
    /// id. Script targets are left out (see [`RouteTable::build_with`]).
    pub fn build(plan: &[RoutePlan], channel_id: impl FnMut(&str) -> ChannelId) -> RouteTable {
        Self::build_with(plan, channel_id, |_, _| None)
    }

    /// As [`RouteTable::build`], with `script` giving the running script for a target's file.
    pub fn build_with(
        plan: &[RoutePlan],
        channel_id: impl FnMut(&str) -> ChannelId,
        script: impl FnMut(&Path, &str) -> Option<Arc<ScriptHandle>>,
    ) -> RouteTable {
        Self::build_full(plan, channel_id, script, |_, _, _, _| None)
    }

    /// As [`RouteTable::build_with`], with `plugin(route, target index, plugin name, config JSON)`
    /// giving the plugin instance for a target.
    pub fn build_full(
        plan: &[RoutePlan],
        mut channel_id: impl FnMut(&str) -> ChannelId,
        mut script: impl FnMut(&Path, &str) -> Option<Arc<ScriptHandle>>,
        mut plugin: impl FnMut(&str, usize, &str, &str) -> Option<Arc<PluginInstance>>,
    ) -> RouteTable {
        let mut table = RouteTable {
            routes: Vec::with_capacity(plan.len()),
            literal: HashMap::default(),
            patterns_by_part: HashMap::default(),
            patterns_any: Vec::new(),
            incoming: Vec::new(),
            unmatched: Vec::new(),
            unmatched_counter: crate::metrics::unmatched(),
        };
        for (index, route) in plan.iter().enumerate() {
            let index = index as u32;
            let targets: Vec<Target> = route
                .targets
                .iter()
                .enumerate()
                .filter_map(|(target_index, t)| match t {
                    TargetPlan::Plugin { name, config } => {
                        plugin(&route.name, target_index, name, config)
                            .map(|instance| Target::Plugin { instance })
                    }
                    TargetPlan::Forward {
                        channel,
                        rewrite,
                        unbundle,
                    } => Some(Target::Forward {
                        channel: channel_id(channel),
                        rewrite: rewrite.as_ref().map(|r| Rewrite::new(r.parts.clone())),
                        unbundle: *unbundle,
                    }),
                    TargetPlan::Reply { rewrite } => Some(Target::Reply {
                        rewrite: rewrite.as_ref().map(|r| Rewrite::new(r.parts.clone())),
                    }),
                    TargetPlan::Script {
                        file,
                        name,
                        function,
                    } => script(file, name).map(|script| Target::Script {
                        script,
                        function: function.as_str().into(),
                    }),
                })
                .collect();
            let pattern = match &route.matcher {
                RouteMatch::Pattern(p) => {
                    if p.is_literal() {
                        table
                            .literal
                            .entry(p.as_str().into())
                            .or_default()
                            .push(index);
                        if route.incoming_patterns {
                            table.incoming.push(index);
                        }
                    } else {
                        let prefix = literal_prefix(p.as_str());
                        match prefix.get(1..).and_then(|rest| rest.split_once('/')) {
                            Some((part, _)) if !part.is_empty() => table
                                .patterns_by_part
                                .entry(part.into())
                                .or_default()
                                .push((index, prefix.into())),
                            _ => table.patterns_any.push((index, prefix.into())),
                        }
                    }
                    Some(p.clone())
                }
                RouteMatch::Unmatched => {
                    table.unmatched.push(index);
                    None
                }
            };
            // Scripts see what each wildcard matched (`msg.captures`).
            let needs_captures = targets.iter().any(|t| matches!(t, Target::Script { .. }))
                || targets
                    .iter()
                    .any(|t| t.rewrite().is_some_and(Rewrite::uses_captures));
            table.routes.push(CompiledRoute {
                name: route.name.as_str().into(),
                pattern,
                from: route
                    .from
                    .as_ref()
                    .map(|names| names.iter().map(|n| channel_id(n)).collect()),
                targets: targets.into_boxed_slice(),
                stop: route.stop,
                incoming_patterns: route.incoming_patterns,
                needs_captures,
                matches: crate::metrics::route_matches(&route.name),
            });
        }
        table
    }

    pub fn route(&self, index: u32) -> &CompiledRoute {
        &self.routes[index as usize]
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Fills `hits` with the routes a message at `address` from channel `from` reaches, in file order,
    /// honouring `from:`, `stop:` and `unmatched:`, and counts route matches.
    pub fn find(&self, address: &str, from: ChannelId, hits: &mut Hits) {
        hits.routes.clear();
        let literal: &[u32] = self.literal.get(address).map(Vec::as_slice).unwrap_or(&[]);
        // An incoming pattern is compiled only when some route opted in and the address has syntax.
        let incoming = if !self.incoming.is_empty() && has_pattern_syntax(address) {
            Pattern::compile(address).ok()
        } else {
            None
        };
        let incoming_routes: &[u32] = if incoming.is_some() {
            &self.incoming
        } else {
            &[]
        };

        let first_part = address
            .get(1..)
            .map_or("", |rest| rest.split('/').next().unwrap_or(rest));
        let by_part: &[(u32, Box<str>)] = self
            .patterns_by_part
            .get(first_part)
            .map_or(&[], Vec::as_slice);
        let any: &[(u32, Box<str>)] = &self.patterns_any;

        // Merge the four sorted candidate lists in route order; plain integers keep the loop tight.
        const DONE: u32 = u32::MAX;
        let (mut li, mut bi, mut ai, mut ii) = (0, 0, 0, 0);
        loop {
            let next_l = literal.get(li).copied().unwrap_or(DONE);
            let next_b = by_part.get(bi).map_or(DONE, |(i, _)| *i);
            let next_a = any.get(ai).map_or(DONE, |(i, _)| *i);
            let next_i = incoming_routes.get(ii).copied().unwrap_or(DONE);
            let candidate = next_l.min(next_b).min(next_a).min(next_i);
            if candidate == DONE {
                break;
            }
            let matched = if next_l == candidate {
                li += 1;
                true
            } else if next_b == candidate || next_a == candidate {
                let prefix = if next_b == candidate {
                    bi += 1;
                    &by_part[bi - 1].1
                } else {
                    ai += 1;
                    &any[ai - 1].1
                };
                address.starts_with(&**prefix)
                    && self.routes[candidate as usize]
                        .pattern
                        .as_ref()
                        .is_some_and(|p| p.is_match(address))
            } else {
                ii += 1;
                let route_address = self.routes[candidate as usize]
                    .pattern
                    .as_ref()
                    .map(Pattern::as_str);
                matches!((&incoming, route_address), (Some(p), Some(a)) if p.is_match(a))
            };
            let route = &self.routes[candidate as usize];
            if matched && route.accepts_from(from) {
                route.matches.increment(1);
                hits.routes.push(candidate);
                if route.stop {
                    return;
                }
            }
        }
        if hits.routes.is_empty() {
            self.unmatched_counter.increment(1);
            for &index in &self.unmatched {
                let route = &self.routes[index as usize];
                if route.accepts_from(from) {
                    route.matches.increment(1);
                    hits.routes.push(index);
                    if route.stop {
                        return;
                    }
                }
            }
        }
    }

    /// The captures of route `index` for `address` (empty for unmatched routes and for routes matched
    /// through an incoming pattern, where the wildcards are in the message, not the route).
    pub fn captures(&self, index: u32, address: &str, caps: &mut Captures) {
        caps.spans.clear();
        if let Some(p) = &self.routes[index as usize].pattern {
            if !p.is_literal() {
                p.captures(address, caps);
            }
        }
    }
}

/// The text before a pattern's first wildcard: every address the pattern matches starts with it.
fn literal_prefix(pattern: &str) -> &str {
    let end = pattern
        .char_indices()
        .find(|&(i, c)| matches!(c, '?' | '*' | '[' | '{') || pattern[i..].starts_with("//"))
        .map(|(i, _)| i)
        .unwrap_or(pattern.len());
    &pattern[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteMatch, RoutePlan, TargetPlan};

    fn route(name: &str, pattern: Option<&str>, from: Option<&[&str]>, stop: bool) -> RoutePlan {
        RoutePlan {
            name: name.into(),
            matcher: match pattern {
                Some(p) => RouteMatch::Pattern(Pattern::compile(p).unwrap()),
                None => RouteMatch::Unmatched,
            },
            from: from.map(|f| f.iter().map(|s| s.to_string()).collect()),
            targets: vec![TargetPlan::Forward {
                channel: "out".into(),
                rewrite: None,
                unbundle: false,
            }],
            stop,
            incoming_patterns: false,
        }
    }

    fn ids(name: &str) -> ChannelId {
        match name {
            "desk" => ChannelId(1),
            "other" => ChannelId(2),
            _ => ChannelId(9),
        }
    }

    fn names(table: &RouteTable, address: &str, from: ChannelId) -> Vec<String> {
        let mut hits = Hits::default();
        table.find(address, from, &mut hits);
        hits.routes
            .iter()
            .map(|&i| table.route(i).name.to_string())
            .collect()
    }

    #[test]
    fn routes_fire_in_file_order_across_literal_and_pattern_routes() {
        let plan = vec![
            route("p1", Some("/a/*"), None, false),
            route("lit", Some("/a/b"), None, false),
            route("p2", Some("/a/?"), None, false),
            route("none", Some("/z/*"), None, false),
        ];
        let table = RouteTable::build(&plan, ids);
        assert_eq!(names(&table, "/a/b", ChannelId(1)), ["p1", "lit", "p2"]);
        assert_eq!(names(&table, "/a/bc", ChannelId(1)), ["p1"]);
    }

    #[test]
    fn stop_ends_the_search_and_from_filters_sources() {
        let plan = vec![
            route("only-other", Some("/a/b"), Some(&["other"]), true),
            route("desk-stops", Some("/a/*"), Some(&["desk"]), true),
            route("never-for-desk", Some("/a/b"), None, false),
        ];
        let table = RouteTable::build(&plan, ids);
        assert_eq!(names(&table, "/a/b", ChannelId(1)), ["desk-stops"]);
        assert_eq!(names(&table, "/a/b", ChannelId(2)), ["only-other"]);
        assert_eq!(names(&table, "/a/b", ChannelId(3)), ["never-for-desk"]);
    }

    #[test]
    fn unmatched_gets_only_what_no_route_matched() {
        let plan = vec![
            route("fallback", None, None, false),
            route("a", Some("/a"), Some(&["desk"]), false),
        ];
        let table = RouteTable::build(&plan, ids);
        assert_eq!(names(&table, "/a", ChannelId(1)), ["a"]);
        assert_eq!(names(&table, "/a", ChannelId(2)), ["fallback"]);
        assert_eq!(names(&table, "/b", ChannelId(1)), ["fallback"]);
    }

    #[test]
    fn incoming_patterns_are_opt_in() {
        let mut opted = route("opted", Some("/mixer/ch/3/mute"), None, false);
        opted.incoming_patterns = true;
        let plan = vec![opted, route("plain", Some("/mixer/ch/4/mute"), None, false)];
        let table = RouteTable::build(&plan, ids);
        assert_eq!(names(&table, "/mixer/ch/*/mute", ChannelId(1)), ["opted"]);
        assert_eq!(names(&table, "/mixer/ch/3/mute", ChannelId(1)), ["opted"]);
        assert!(names(&table, "//*", ChannelId(1)).contains(&"opted".to_string()));
    }

    #[test]
    fn rewrite_uses_captures() {
        let pattern = Pattern::compile("/desk/fader/*").unwrap();
        let mut caps = Captures::default();
        assert!(pattern.captures("/desk/fader/12", &mut caps));
        let rewrite = Rewrite::new(vec![
            RewritePart::Literal("/lx/sub/".into()),
            RewritePart::Capture(1),
        ]);
        let mut out = String::new();
        rewrite.apply("/desk/fader/12", &caps, &mut out);
        assert_eq!(out, "/lx/sub/12");
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix("/desk/fader/*"), "/desk/fader/");
        assert_eq!(literal_prefix("/a//b"), "/a");
        assert_eq!(literal_prefix("/plain"), "/plain");
        assert_eq!(literal_prefix("/x/{a,b}"), "/x/");
    }

    /// The obvious definition: every route in order, its pattern tried on the address.
    fn reference(plan: &[RoutePlan], address: &str, from: &str) -> Vec<String> {
        let accepts = |r: &RoutePlan| r.from.as_ref().is_none_or(|f| f.iter().any(|n| n == from));
        let mut hits = Vec::new();
        for route in plan {
            if let RouteMatch::Pattern(p) = &route.matcher {
                if p.is_match(address) && accepts(route) {
                    hits.push(route.name.clone());
                    if route.stop {
                        return hits;
                    }
                }
            }
        }
        if hits.is_empty() {
            for route in plan {
                if matches!(route.matcher, RouteMatch::Unmatched) && accepts(route) {
                    hits.push(route.name.clone());
                    if route.stop {
                        break;
                    }
                }
            }
        }
        hits
    }

    proptest::proptest! {
        /// The indexed table (literal hash, patterns by first part) finds exactly what trying every
        /// route in order finds.
        #[test]
        fn table_agrees_with_trying_every_route(
            patterns in proptest::collection::vec(("(/(a|b|[ab]|\\*|\\?|\\{a,b\\}|)){1,3}", 0u8..8), 1..12),
            addresses in proptest::collection::vec("(/(a|b|ab|)){1,3}", 1..8),
        ) {
            let plan: Vec<RoutePlan> = patterns
                .iter()
                .enumerate()
                .filter_map(|(i, (pattern, flags))| {
                    let from: Option<&[&str]> = if flags & 1 == 1 { Some(&["desk"]) } else { None };
                    let pattern = if flags & 6 == 6 { None } else { Some(pattern.as_str()) };
                    if let Some(p) = pattern {
                        Pattern::compile(p).ok()?;
                    }
                    Some(route(&format!("r{i}"), pattern, from, flags & 2 == 2 && flags & 4 == 0))
                })
                .collect();
            let table = RouteTable::build(&plan, ids);
            for address in &addresses {
                for (from, id) in [("desk", ChannelId(1)), ("other", ChannelId(2))] {
                    proptest::prop_assert_eq!(names(&table, address, id), reference(&plan, address, from));
                }
            }
        }
    }
}
