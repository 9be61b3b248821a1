//! From the located YAML tree to a validated [`Plan`], collecting every problem on the way.

use std::collections::HashMap;
use std::path::Path;

use patchbay_plugin_api::osc::Pattern;

use super::channels::{self, BuiltChannel, PortClaim};
use super::de::{deserialize_all, DeError};
use super::plan::{ChannelKind, ChannelPlan, MetricsPlan, Plan, RouteMatch, RoutePlan, TargetPlan};
use super::rewrite::{self, Captures};
use super::suggest::{closest, unknown_key_message};
use super::yaml::{self, join, Node, Value};
use super::{ConfigError, ConfigErrors};
use crate::plugin::{PluginsConfig, PluginsPlan};
use crate::scheduler::BundleConfig;
use crate::script::{ScriptsConfig, ScriptsPlan};

/// The yaml_path of problems with the document as a whole (syntax errors, an empty file).
pub(crate) const DOCUMENT: &str = "(document)";

const TOP_KEYS: &[&str] = &[
    "version", "channels", "routes", "metrics", "bundles", "scripts", "plugins",
];
const ROUTE_KEYS: &[&str] = &[
    "name",
    "match",
    "unmatched",
    "from",
    "to",
    "stop",
    "incoming_patterns",
];
/// What a target does; a target has exactly one of these.
const TARGET_ACTIONS: &[&str] = &["forward", "reply", "script", "plugin"];
const TARGET_KEYS: &[&str] = &[
    "forward", "reply", "script", "fn", "plugin", "config", "rewrite", "unbundle",
];
const METRICS_KEYS: &[&str] = &["listen"];

/// Collects problems for one file.
pub(crate) struct Errors<'a> {
    file: &'a Path,
    list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub fn new(file: &'a Path) -> Self {
        Errors {
            file,
            list: Vec::new(),
        }
    }

    pub fn at_pos(&mut self, line: usize, column: usize, path: &str, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            yaml_path: if path.is_empty() {
                DOCUMENT.to_string()
            } else {
                path.to_string()
            },
            line,
            column,
            message: message.into(),
        });
    }

    pub fn at(&mut self, node: &Node, path: &str, message: impl Into<String>) {
        self.at_pos(node.line, node.column, path, message);
    }

    /// A typed-deserialization problem below `base` (at `prefix`).
    pub fn de(&mut self, e: DeError, prefix: &str, base: &Node) {
        let (line, column) = e.at.unwrap_or((base.line, base.column));
        let path = e.yaml_path(prefix);
        self.at_pos(line, column, &path, e.message);
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every problem, in document order.
    pub fn finish(mut self) -> ConfigErrors {
        self.list.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(self.list)
    }
}

/// Validates `text` (read from `path`) into a plan.
pub(crate) fn build(text: &str, path: &Path) -> Result<Plan, ConfigErrors> {
    let mut errs = Errors::new(path);
    let mut root = match yaml::parse_tree(text) {
        Ok(root) => root,
        Err(e) => {
            errs.at_pos(e.line, e.column, DOCUMENT, e.message);
            return Err(errs.finish());
        }
    };
    let mut duplicates = Vec::new();
    yaml::dedup_keys(&mut root, "", &mut duplicates);
    for d in duplicates {
        let is_channel = d.path == join("channels", &d.key);
        let message = if is_channel {
            format!(
                "channel `{}` is defined twice (first at line {}); give each channel a unique name",
                d.key, d.first_line
            )
        } else {
            format!(
                "`{}` appears twice in the same map (first at line {}); keep one",
                d.key, d.first_line
            )
        };
        errs.at_pos(d.line, d.column, &d.path, message);
    }

    let Some(entries) = root.entries() else {
        let message = match root.value {
            Value::Null => "the config is empty; it needs at least `version: 1`".to_string(),
            _ => format!(
                "the config must be a map of top-level keys ({}), found {}",
                TOP_KEYS.join(", "),
                root.kind_name()
            ),
        };
        errs.at(&root, DOCUMENT, message);
        return Err(errs.finish());
    };

    let mut version = None;
    let mut channels_node = None;
    let mut routes_node = None;
    let mut metrics_node = None;
    let mut bundles_node = None;
    let mut scripts_node = None;
    let mut plugins_node = None;
    for (key, key_node, value) in entries {
        match key.as_deref() {
            Some("version") => version = Some(value),
            Some("channels") => channels_node = Some(value),
            Some("routes") => routes_node = Some(value),
            Some("metrics") => metrics_node = Some(value),
            Some("bundles") => bundles_node = Some(value),
            Some("scripts") => scripts_node = Some(value),
            Some("plugins") => plugins_node = Some(value),
            Some(other) => errs.at(
                key_node,
                &join("", other),
                unknown_key_message(other, TOP_KEYS),
            ),
            None => errs.at(key_node, DOCUMENT, non_text_key(key_node)),
        }
    }

    match version {
        None => errs.at(
            &root,
            "version",
            "missing `version: 1` at the top of the file",
        ),
        Some(v) => match v.value {
            Value::Int(1) => {}
            Value::Int(n) => errs.at(
                v,
                "version",
                format!("unsupported config version {n}; this patchbay reads `version: 1`"),
            ),
            _ => errs.at(
                v,
                "version",
                format!("`version` must be the number 1, found {}", describe(v)),
            ),
        },
    }

    let channels = channels_node
        .map(|n| build_channels(n, &mut errs))
        .unwrap_or_default();
    check_port_clashes(&channels, &mut errs);
    // Absolute, so script paths compare equal to the (absolute) paths the file watcher reports.
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
    let scripts = scripts_node
        .map(|n| build_scripts(n, &base_dir, &mut errs))
        .unwrap_or_else(|| ScriptsPlan::new(&base_dir, ScriptsConfig::default()));
    let plugins = plugins_node.and_then(|n| build_plugins(n, &base_dir, &mut errs));
    if let Some(node) = channels_node {
        check_offer_scripts(node, &channels, &scripts, &mut errs);
    }
    let routes = routes_node
        .map(|n| build_routes(n, &channels, &scripts, &mut errs))
        .unwrap_or_default();
    let metrics = metrics_node.and_then(|n| build_metrics(n, &mut errs));
    let bundles = bundles_node
        .map(|n| build_bundles(n, &mut errs))
        .unwrap_or_default();

    if !errs.is_empty() {
        return Err(errs.finish());
    }
    Ok(Plan {
        source: path.to_path_buf(),
        channels: channels
            .into_iter()
            .filter_map(|c| {
                c.built.map(|b| ChannelPlan {
                    name: c.name,
                    kind: b.kind,
                })
            })
            .collect(),
        routes,
        metrics,
        bundles,
        scripts,
        plugins,
    })
}

/// A peer channel's `accept: { script, fn }`: the script compiles and has `fn(offer)`.
fn check_offer_scripts(
    channels_node: &Node,
    channels: &[ChannelEntry],
    scripts: &ScriptsPlan,
    errs: &mut Errors,
) {
    for entry in channels {
        let Some(BuiltChannel {
            kind: ChannelKind::Peer(cfg),
            ..
        }) = &entry.built
        else {
            continue;
        };
        let Some(accept) = &cfg.accept else {
            continue;
        };
        let Some(accept_node) = channels_node.get(&entry.name).and_then(|c| c.get("accept")) else {
            continue;
        };
        let path = format!("channels.{}.accept", entry.name);
        let at = accept_node.get("script").unwrap_or(accept_node);
        let file = scripts.base_dir.join(&accept.script);
        let module_dir = scripts
            .dir
            .clone()
            .or_else(|| file.parent().map(|p| p.to_path_buf()));
        match crate::script::engine::compile_file(&file, module_dir.as_deref()) {
            Err(e) if e.line == 0 => errs.at(
                at,
                &join(&path, "script"),
                format!("script `{}`: {}", accept.script, e.message),
            ),
            Err(e) => errs.list.push(ConfigError {
                file: file.clone(),
                yaml_path: join(&path, "script"),
                line: e.line,
                column: e.column,
                message: format!("does not compile: {}", e.message),
            }),
            Ok((ast, _)) => {
                let params = ast
                    .iter_functions()
                    .find(|f| f.name == accept.function)
                    .map(|f| f.params.len());
                if params != Some(1) {
                    let at = accept_node.get("fn").unwrap_or(at);
                    errs.at(
                        at,
                        &join(&path, "fn"),
                        format!(
                            "`{}` needs a function `{}(offer)` that returns true to accept an offer",
                            accept.script, accept.function
                        ),
                    );
                }
            }
        }
    }
}

/// How a value is shown in a message: `yes`, `a list`, `nothing`.
fn describe(node: &Node) -> String {
    match node.text() {
        Some(t) => format!("`{t}`"),
        None => node.kind_name().to_string(),
    }
}

fn non_text_key(key: &Node) -> String {
    format!("keys must be plain names, found {}", key.kind_name())
}

fn expect_bool(node: &Node, path: &str, errs: &mut Errors) -> Option<bool> {
    match node.value {
        Value::Bool(b) => Some(b),
        _ => {
            errs.at(
                node,
                path,
                format!("expected `true` or `false`, found {}", describe(node)),
            );
            None
        }
    }
}

fn expect_text(node: &Node, path: &str, what: &str, errs: &mut Errors) -> Option<String> {
    match &node.value {
        Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => node.text(),
        _ => {
            errs.at(
                node,
                path,
                format!("expected {what}, found {}", node.kind_name()),
            );
            None
        }
    }
}

/// The known keys of a map entry; reports unknown and non-text keys.
fn known_entries<'n>(
    node: &'n Node,
    path: &str,
    known: &'static [&'static str],
    errs: &mut Errors,
) -> HashMap<&'static str, (&'n Node, &'n Node)> {
    let mut out = HashMap::new();
    for (key, key_node, value) in node.entries().into_iter().flatten() {
        match key {
            Some(k) => match known.iter().find(|known| **known == k) {
                Some(known) => {
                    out.insert(*known, (key_node, value));
                }
                None => errs.at(key_node, &join(path, &k), unknown_key_message(&k, known)),
            },
            None => errs.at(key_node, path, non_text_key(key_node)),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// channels

struct ChannelEntry {
    name: String,
    /// `None` when the entry has errors (already reported).
    built: Option<BuiltChannel>,
}

fn valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn build_channels(node: &Node, errs: &mut Errors) -> Vec<ChannelEntry> {
    let entries = match &node.value {
        Value::Null => return Vec::new(),
        Value::Map(_) => node.entries().into_iter().flatten(),
        _ => {
            errs.at(
                node,
                "channels",
                format!(
                    "`channels` is a map from channel name to settings (e.g. `desk: {{ kind: udp, \
                     listen: 127.0.0.1:9000 }}`), found {}",
                    node.kind_name()
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (name, key_node, value) in entries {
        let Some(name) = name else {
            errs.at(key_node, "channels", non_text_key(key_node));
            continue;
        };
        let path = join("channels", &name);
        if !valid_channel_name(&name) {
            errs.at(
                key_node,
                &path,
                format!(
                    "channel name `{name}` may only use letters, digits, `_`, `.` and `-` (it is \
                     used in metrics and logs)"
                ),
            );
        }
        let built = build_channel(&name, key_node, value, &path, errs);
        out.push(ChannelEntry { name, built });
    }
    out
}

fn build_channel(
    name: &str,
    key: &Node,
    node: &Node,
    path: &str,
    errs: &mut Errors,
) -> Option<BuiltChannel> {
    let known = channels::kind_names().join(", ");
    let kind_node = match &node.value {
        Value::Map(_) => node.get("kind"),
        Value::Null => {
            errs.at(
                key,
                path,
                format!(
                    "channel `{name}` has no settings; it needs at least `kind` (one of: {known})"
                ),
            );
            return None;
        }
        _ => {
            errs.at(
                node,
                path,
                format!(
                    "channel `{name}` must be a map of settings such as `{{ kind: udp, listen: \
                     127.0.0.1:9000 }}`, found {}",
                    node.kind_name()
                ),
            );
            return None;
        }
    };
    let Some(kind_node) = kind_node else {
        errs.at(node, path, format!("missing `kind` (one of: {known})"));
        return None;
    };
    let kind_path = join(path, "kind");
    let kind = expect_text(kind_node, &kind_path, "a channel kind", errs)?;
    let Some(builder) = channels::builder(&kind) else {
        let hint = match closest(&kind, channels::kind_names()) {
            Some(k) => format!("did you mean `{k}`? "),
            None => String::new(),
        };
        errs.at(
            kind_node,
            &kind_path,
            format!("unknown channel kind `{kind}`; {hint}known kinds: {known}"),
        );
        return None;
    };
    builder(node, path, name, errs)
}

fn check_port_clashes(channels: &[ChannelEntry], errs: &mut Errors) {
    let mut seen: Vec<(&str, &PortClaim)> = Vec::new();
    for c in channels {
        let Some(built) = &c.built else { continue };
        for claim in &built.claims {
            if let Some((owner, first)) = seen.iter().find(|(_, f)| f.clashes_with(claim)) {
                errs.at_pos(
                    claim.line,
                    claim.column,
                    &claim.path,
                    format!(
                        "{} is already taken by channel `{owner}` (`{}` at line {}); give each \
                         channel its own port",
                        claim.describe(),
                        first.addr,
                        first.line
                    ),
                );
            }
            seen.push((&c.name, claim));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// routes

fn build_routes(
    node: &Node,
    channels: &[ChannelEntry],
    scripts: &ScriptsPlan,
    errs: &mut Errors,
) -> Vec<RoutePlan> {
    let items = match &node.value {
        Value::Null => return Vec::new(),
        Value::Seq(items) => items,
        _ => {
            errs.at(
                node,
                "routes",
                format!(
                    "`routes` is a list of routes (each starting with `- name: ...`), found {}",
                    node.kind_name()
                ),
            );
            return Vec::new();
        }
    };
    let mut names: HashMap<String, (usize, usize)> = HashMap::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("routes[{i}]");
        if let Some(route) = build_route(item, &path, channels, scripts, &mut names, i, errs) {
            out.push(route);
        }
    }
    out
}

fn build_route(
    node: &Node,
    path: &str,
    channels: &[ChannelEntry],
    scripts: &ScriptsPlan,
    names: &mut HashMap<String, (usize, usize)>,
    index: usize,
    errs: &mut Errors,
) -> Option<RoutePlan> {
    if !matches!(node.value, Value::Map(_)) {
        errs.at(
            node,
            path,
            format!(
                "a route is a map with `name`, `match` (or `unmatched: true`) and `to`, found {}",
                node.kind_name()
            ),
        );
        return None;
    }
    let fields = known_entries(node, path, ROUTE_KEYS, errs);
    let mut ok = true;

    // name
    let name = match fields.get("name") {
        None => {
            errs.at(
                node,
                path,
                "missing `name`; every route needs a unique name",
            );
            None
        }
        Some((_, v)) => {
            let p = join(path, "name");
            match expect_text(v, &p, "a route name", errs) {
                Some(n) if n.is_empty() => {
                    errs.at(v, &p, "a route name cannot be empty");
                    None
                }
                Some(n) => {
                    if let Some((first, line)) = names.get(&n) {
                        errs.at(
                            v,
                            &p,
                            format!(
                                "route name `{n}` is already used by routes[{first}] (line {line}); \
                                 route names must be unique"
                            ),
                        );
                        ok = false;
                    } else {
                        names.insert(n.clone(), (index, v.line));
                    }
                    Some(n)
                }
                None => None,
            }
        }
    };
    ok &= name.is_some();

    // match / unmatched
    let unmatched = match fields.get("unmatched") {
        None => false,
        Some((_, v)) => {
            let p = join(path, "unmatched");
            match expect_bool(v, &p, errs) {
                Some(true) => true,
                Some(false) => {
                    errs.at(
                        v,
                        &p,
                        "`unmatched: false` does nothing; remove it (or write `unmatched: true` for \
                         a route that gets what no other route matched)",
                    );
                    ok = false;
                    false
                }
                None => {
                    ok = false;
                    false
                }
            }
        }
    };
    let mut matcher = None;
    match (fields.get("match"), unmatched) {
        (Some(_), true) => {
            if let Some((key, _)) = fields.get("unmatched") {
                errs.at(
                    key,
                    &join(path, "unmatched"),
                    "a route has either `match:` or `unmatched: true`, not both",
                );
            }
            ok = false;
        }
        (None, false) => {
            if !fields.contains_key("unmatched") {
                errs.at(
                    node,
                    path,
                    "missing `match`: a route needs `match: /osc/address/pattern` or `unmatched: true`",
                );
            }
            ok = false;
        }
        (None, true) => matcher = Some(RouteMatch::Unmatched),
        (Some((_, v)), false) => {
            let p = join(path, "match");
            match expect_text(
                v,
                &p,
                "an OSC address pattern such as `/desk/fader/*`",
                errs,
            ) {
                None => ok = false,
                Some(src) => match Pattern::compile(&src) {
                    Ok(pattern) => matcher = Some(RouteMatch::Pattern(pattern)),
                    Err(e) => {
                        let column = v.column_of_char(e.position).unwrap_or(v.column);
                        errs.at_pos(
                            v.line,
                            column,
                            &p,
                            format!("invalid OSC address pattern `{src}`: {}", e.message),
                        );
                        ok = false;
                    }
                },
            }
        }
    }
    let captures = match &matcher {
        Some(RouteMatch::Pattern(p)) => Some(Captures::Pattern(p.capture_count())),
        Some(RouteMatch::Unmatched) => Some(Captures::Unmatched),
        // The match is broken (and reported): do not guess at `$N` in rewrites.
        None => None,
    };

    // incoming_patterns
    let mut incoming_patterns = false;
    if let Some((_, v)) = fields.get("incoming_patterns") {
        let p = join(path, "incoming_patterns");
        match expect_bool(v, &p, errs) {
            None => ok = false,
            Some(false) => {}
            Some(true) => {
                incoming_patterns = true;
                let problem = match &matcher {
                    Some(RouteMatch::Pattern(pat)) if !pat.is_literal() => Some(format!(
                        "`incoming_patterns: true` needs a literal `match` address, but `{}` has \
                         wildcards (matching a pattern against a pattern is undefined); write the \
                         full address or remove `incoming_patterns`",
                        pat.as_str()
                    )),
                    Some(RouteMatch::Unmatched) => Some(
                        "`incoming_patterns: true` needs a literal `match` address; an `unmatched` \
                         route has none, so remove `incoming_patterns`"
                            .to_string(),
                    ),
                    _ => None,
                };
                if let Some(problem) = problem {
                    errs.at(v, &p, problem);
                    ok = false;
                }
            }
        }
    }

    // from
    let mut from = None;
    if let Some((_, v)) = fields.get("from") {
        let p = join(path, "from");
        match build_from(v, &p, channels, errs) {
            Some(list) => from = Some(list),
            None => ok = false,
        }
    }

    // to
    let mut targets = Vec::new();
    match fields.get("to") {
        None => {
            errs.at(
                node,
                path,
                "missing `to`: a route needs at least one target, e.g. `to: [ { forward: lights } ]`",
            );
            ok = false;
        }
        Some((_, v)) => {
            let p = join(path, "to");
            match &v.value {
                Value::Seq(items) if items.is_empty() => {
                    errs.at(v, &p, "`to` is empty; a route needs at least one target");
                    ok = false;
                }
                Value::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let tp = format!("{p}[{i}]");
                        match build_target(item, &tp, captures, channels, scripts, errs) {
                            Some(t) => targets.push(t),
                            None => ok = false,
                        }
                    }
                }
                _ => {
                    errs.at(
                        v,
                        &p,
                        format!(
                            "`to` is a list of targets, e.g. `to: [ {{ forward: lights }} ]`, found {}",
                            v.kind_name()
                        ),
                    );
                    ok = false;
                }
            }
        }
    }

    // stop
    let mut stop = false;
    if let Some((_, v)) = fields.get("stop") {
        match expect_bool(v, &join(path, "stop"), errs) {
            Some(b) => stop = b,
            None => ok = false,
        }
    }

    let (Some(name), Some(matcher), true) = (name, matcher, ok) else {
        return None;
    };
    Some(RoutePlan {
        name,
        matcher,
        from,
        targets,
        stop,
        incoming_patterns,
    })
}

/// The list of known channel names, for messages.
fn known_channels(channels: &[ChannelEntry]) -> String {
    if channels.is_empty() {
        "none are defined under `channels`".to_string()
    } else {
        channels
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reports an unknown channel name; returns the channel when it exists.
fn lookup_channel<'c>(
    name: &str,
    node: &Node,
    path: &str,
    usage: &str,
    channels: &'c [ChannelEntry],
    errs: &mut Errors,
) -> Option<&'c ChannelEntry> {
    let found = channels.iter().find(|c| c.name == name);
    if found.is_none() {
        let hint = match closest(name, channels.iter().map(|c| c.name.as_str())) {
            Some(k) => format!("did you mean `{k}`? "),
            None => String::new(),
        };
        errs.at(
            node,
            path,
            format!(
                "unknown channel `{name}` in {usage}; {hint}known channels: {}",
                known_channels(channels)
            ),
        );
    }
    found
}

fn build_from(
    node: &Node,
    path: &str,
    channels: &[ChannelEntry],
    errs: &mut Errors,
) -> Option<Vec<String>> {
    let items = match &node.value {
        Value::Seq(items) => items,
        _ => {
            let example = node.text().unwrap_or_else(|| "desk".to_string());
            errs.at(
                node,
                path,
                format!(
                    "`from` is a list of channel names, e.g. `from: [{example}]`, found {}",
                    node.kind_name()
                ),
            );
            return None;
        }
    };
    if items.is_empty() {
        errs.at(
            node,
            path,
            "`from: []` accepts no channel, so the route could never match; remove `from` to \
             accept messages from any channel",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match expect_text(item, &p, "a channel name", errs) {
            Some(name) => {
                ok &= lookup_channel(&name, item, &p, "from", channels, errs).is_some();
                out.push(name);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn build_target(
    node: &Node,
    path: &str,
    captures: Option<Captures>,
    channels: &[ChannelEntry],
    scripts: &ScriptsPlan,
    errs: &mut Errors,
) -> Option<TargetPlan> {
    if !matches!(node.value, Value::Map(_)) {
        let message = match node.text() {
            Some(t) => format!(
                "a target is a map: write `{{ forward: {t} }}` to send to channel `{t}`, or \
                 `{{ reply: true }}`"
            ),
            None => format!(
                "a target is a map such as `{{ forward: lights }}` or `{{ reply: true }}`, found {}",
                node.kind_name()
            ),
        };
        errs.at(node, path, message);
        return None;
    }
    let fields = known_entries(node, path, TARGET_KEYS, errs);
    let mut ok = true;

    // Exactly one action, in document order so the second one is the one reported.
    let mut actions: Vec<(&str, &Node, &Node)> = TARGET_ACTIONS
        .iter()
        .filter_map(|a| fields.get(a).map(|(k, v)| (*a, *k, *v)))
        .collect();
    actions.sort_by_key(|(_, k, _)| (k.line, k.column));
    if actions.is_empty() {
        errs.at(
            node,
            path,
            "a target needs `forward: CHANNEL`, `reply: true`, `script: FILE` or `plugin: NAME`",
        );
        return None;
    }
    for (action, key, _) in actions.iter().skip(1) {
        errs.at(
            key,
            &join(path, action),
            format!(
                "a target has exactly one of `forward`, `reply`, `script` or `plugin`, but this one \
                 also has `{}`; split it into two targets",
                actions[0].0
            ),
        );
        ok = false;
    }

    let rewrite = match fields.get("rewrite") {
        None => None,
        Some((_, v)) => {
            let p = join(path, "rewrite");
            match expect_text(v, &p, "an OSC address such as `/lx/sub/$1`", errs) {
                None => {
                    ok = false;
                    None
                }
                Some(src) => {
                    match rewrite::parse(&src, captures.unwrap_or(Captures::Pattern(usize::MAX))) {
                        Ok(r) => Some(r),
                        Err(problems) => {
                            for e in problems {
                                let column = v.column_of_char(e.index).unwrap_or(v.column);
                                errs.at_pos(v.line, column, &p, e.message);
                            }
                            ok = false;
                            None
                        }
                    }
                }
            }
        }
    };

    let (action, _, value) = actions[0];
    let action_path = join(path, action);
    let target = match action {
        "forward" => {
            let name = expect_text(value, &action_path, "a channel name", errs)?;
            let channel = lookup_channel(&name, value, &action_path, "forward", channels, errs)?;
            if let Some(Err(what)) = channel.built.as_ref().map(|b| &b.forwardable) {
                errs.at(
                    value,
                    &action_path,
                    format!("cannot forward to channel `{name}`: {what}"),
                );
                ok = false;
            }
            let unbundle = match fields.get("unbundle") {
                None => false,
                Some((_, v)) => {
                    expect_bool(v, &join(path, "unbundle"), errs).unwrap_or_else(|| {
                        ok = false;
                        false
                    })
                }
            };
            TargetPlan::Forward {
                channel: name,
                rewrite,
                unbundle,
            }
        }
        "reply" => {
            if let Some((key, _)) = fields.get("unbundle") {
                errs.at(
                    key,
                    &join(path, "unbundle"),
                    "`unbundle` applies to `forward` targets only; a reply answers at once",
                );
                ok = false;
            }
            match expect_bool(value, &action_path, errs)? {
                true => {}
                false => {
                    errs.at(
                        value,
                        &action_path,
                        "`reply: false` is meaningless; write `reply: true` to answer the sender, \
                         or remove this target",
                    );
                    ok = false;
                }
            }
            TargetPlan::Reply { rewrite }
        }
        "plugin" => {
            for key in ["rewrite", "unbundle", "fn"] {
                if let Some((k, _)) = fields.get(key) {
                    errs.at(
                        k,
                        &join(path, key),
                        format!("`{key}` does not apply to `plugin` targets"),
                    );
                    ok = false;
                }
            }
            let name = expect_text(value, &action_path, "a plugin name such as `scale`", errs)?;
            let config = match fields.get("config") {
                None => "{}".to_string(),
                Some((_, v)) => match deserialize_all::<serde_json::Value>(v) {
                    Ok(json @ serde_json::Value::Object(_)) => json.to_string(),
                    Ok(_) => {
                        errs.at(
                            v,
                            &join(path, "config"),
                            "`config` is a map of the plugin's settings",
                        );
                        ok = false;
                        "{}".to_string()
                    }
                    Err(problems) => {
                        for p in problems {
                            errs.de(p, &join(path, "config"), v);
                        }
                        ok = false;
                        "{}".to_string()
                    }
                },
            };
            TargetPlan::Plugin { name, config }
        }
        "script" => {
            if let Some((k, _)) = fields.get("config") {
                errs.at(
                    k,
                    &join(path, "config"),
                    "`config` applies to `plugin` targets",
                );
                ok = false;
            }
            for key in ["rewrite", "unbundle"] {
                if let Some((k, _)) = fields.get(key) {
                    errs.at(
                        k,
                        &join(path, key),
                        format!(
                            "`{key}` applies to `forward` and `reply` targets; a script decides \
                             itself what to send"
                        ),
                    );
                    ok = false;
                }
            }
            let written = expect_text(
                value,
                &action_path,
                "a script file such as `scripts/cues.rhai`",
                errs,
            )?;
            let function = match fields.get("fn") {
                None => "on_message".to_string(),
                Some((_, v)) => expect_text(v, &join(path, "fn"), "a function name", errs)?,
            };
            let file = scripts.base_dir.join(&written);
            let module_dir = scripts
                .dir
                .clone()
                .or_else(|| file.parent().map(|p| p.to_path_buf()));
            match crate::script::engine::compile_file(&file, module_dir.as_deref()) {
                Err(e) if e.line == 0 => {
                    errs.at(
                        value,
                        &action_path,
                        format!("script `{written}`: {}", e.message),
                    );
                    ok = false;
                }
                Err(e) => {
                    errs.list.push(ConfigError {
                        file: file.clone(),
                        yaml_path: action_path.clone(),
                        line: e.line,
                        column: e.column,
                        message: format!("does not compile: {}", e.message),
                    });
                    ok = false;
                }
                Ok((ast, _)) => {
                    let params = ast
                        .iter_functions()
                        .find(|f| f.name == function)
                        .map(|f| f.params.len());
                    match params {
                        Some(1) | Some(2) => {}
                        Some(n) => {
                            errs.at(
                                fields.get("fn").map(|(_, v)| *v).unwrap_or(value),
                                &join(path, "fn"),
                                format!(
                                    "`{function}` in `{written}` takes {n} parameters; a message \
                                     handler takes `(msg)` or `(msg, peer)`"
                                ),
                            );
                            ok = false;
                        }
                        None => {
                            let mut known: Vec<String> =
                                ast.iter_functions().map(|f| f.name.to_string()).collect();
                            known.sort();
                            known.dedup();
                            errs.at(
                                fields.get("fn").map(|(_, v)| *v).unwrap_or(value),
                                &join(path, "fn"),
                                format!(
                                    "`{written}` has no function `{function}` (it has: {}); write \
                                     `fn {function}(msg) {{ ... }}` or name another with `fn:`",
                                    if known.is_empty() {
                                        "none".to_string()
                                    } else {
                                        known.join(", ")
                                    }
                                ),
                            );
                            ok = false;
                        }
                    }
                }
            }
            TargetPlan::Script {
                file,
                name: written,
                function,
            }
        }
        _ => return None,
    };
    ok.then_some(target)
}

// ---------------------------------------------------------------------------------------------
// plugins

fn build_plugins(
    node: &Node,
    base_dir: &std::path::Path,
    errs: &mut Errors,
) -> Option<PluginsPlan> {
    if matches!(node.value, Value::Null) {
        return None;
    }
    match deserialize_all::<PluginsConfig>(node) {
        Ok(config) => {
            let dir = base_dir.join(&config.dir);
            if !dir.is_dir() {
                errs.at(
                    node.get("dir").unwrap_or(node),
                    "plugins.dir",
                    format!("`{}` is not a folder", dir.display()),
                );
                return None;
            }
            // Canonical, so the watcher's paths and the loaded files' paths compare equal.
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            Some(PluginsPlan { dir, config })
        }
        Err(problems) => {
            for p in problems {
                errs.de(p, "plugins", node);
            }
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// scripts

fn build_scripts(node: &Node, base_dir: &std::path::Path, errs: &mut Errors) -> ScriptsPlan {
    if matches!(node.value, Value::Null) {
        return ScriptsPlan::new(base_dir, ScriptsConfig::default());
    }
    match deserialize_all::<ScriptsConfig>(node) {
        Ok(config) => {
            let plan = ScriptsPlan::new(base_dir, config);
            if let Some(dir) = &plan.dir {
                if !dir.is_dir() {
                    errs.at(
                        node.get("dir").unwrap_or(node),
                        "scripts.dir",
                        format!("`{}` is not a folder", dir.display()),
                    );
                }
            }
            plan
        }
        Err(problems) => {
            for p in problems {
                errs.de(p, "scripts", node);
            }
            ScriptsPlan::new(base_dir, ScriptsConfig::default())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bundles

fn build_bundles(node: &Node, errs: &mut Errors) -> BundleConfig {
    if matches!(node.value, Value::Null) {
        return BundleConfig::default();
    }
    match deserialize_all::<BundleConfig>(node) {
        Ok(config) => {
            if config.queue == 0 {
                errs.at(
                    node.get("queue").unwrap_or(node),
                    "bundles.queue",
                    "`queue` must be at least 1 (it is how many time-tagged messages may wait)",
                );
            }
            config
        }
        Err(problems) => {
            for p in problems {
                errs.de(p, "bundles", node);
            }
            BundleConfig::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// metrics

fn build_metrics(node: &Node, errs: &mut Errors) -> Option<MetricsPlan> {
    match &node.value {
        Value::Null => return None,
        Value::Map(_) => {}
        _ => {
            errs.at(
                node,
                "metrics",
                format!(
                    "`metrics` is a map such as `{{ listen: 127.0.0.1:9464 }}`, found {}",
                    node.kind_name()
                ),
            );
            return None;
        }
    }
    let fields = known_entries(node, "metrics", METRICS_KEYS, errs);
    let Some((_, v)) = fields.get("listen") else {
        errs.at(
            node,
            "metrics",
            "missing `listen: ip:port` (e.g. `listen: 127.0.0.1:9464`)",
        );
        return None;
    };
    let p = "metrics.listen";
    let text = expect_text(v, p, "an `ip:port` address", errs)?;
    match text.parse() {
        Ok(listen) => Some(MetricsPlan { listen }),
        Err(_) => {
            errs.at(v, p, super::socket_addr_message(&text));
            None
        }
    }
}
