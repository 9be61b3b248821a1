//! Every config error, with its exact yaml_path and line:column.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::*;
use crate::channel::udp::UdpConfig;

fn run(yaml: &str) -> Result<Plan, Vec<ConfigError>> {
    parse(yaml, Path::new("show/show.yaml")).map_err(|e| e.0)
}

fn plan(yaml: &str) -> Plan {
    match run(yaml) {
        Ok(plan) => plan,
        Err(errs) => panic!("expected a valid config, got:\n{}", ConfigErrors(errs)),
    }
}

/// Asserts exactly these errors, in this order: (yaml_path, line, column, part of the message).
#[track_caller]
fn assert_errors(yaml: &str, expected: &[(&str, usize, usize, &str)]) {
    let errs = match run(yaml) {
        Ok(_) => panic!("expected errors, the config is valid:\n{yaml}"),
        Err(errs) => errs,
    };
    let all = ConfigErrors(errs.clone()).to_string();
    assert_eq!(errs.len(), expected.len(), "wrong number of errors:\n{all}");
    for (e, (path, line, column, msg)) in errs.iter().zip(expected) {
        assert_eq!(
            (e.yaml_path.as_str(), e.line, e.column),
            (*path, *line, *column),
            "wrong place for `{}`:\n{all}",
            e.message
        );
        assert!(
            e.message.contains(msg),
            "message `{}` lacks `{msg}`:\n{all}",
            e.message
        );
        assert_eq!(e.file, Path::new("show/show.yaml"));
    }
}

/// Two channels (`desk` listens on line 3, `lights` sends on line 4); routes start on line 6.
const HEAD: &str = "\
version: 1
channels:
  desk: { kind: udp, listen: 127.0.0.1:9000 }
  lights: { kind: udp, send: 127.0.0.1:7000 }
routes:
";

/// `routes` starts with a newline (so its first line keeps its indentation in the source).
fn with_routes(routes: &str) -> String {
    format!("{HEAD}{}", routes.strip_prefix('\n').unwrap_or(routes))
}

/// The udp settings of channel `name` (panics when it is missing or of another kind).
fn udp<'p>(plan: &'p Plan, name: &str) -> &'p UdpConfig {
    match plan.channel(name).map(|c| &c.kind) {
        Some(ChannelKind::Udp(u)) => u,
        #[allow(unreachable_patterns)] // more kinds come later
        other => panic!("channel `{name}` is not a udp channel: {other:?}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

// ---------------------------------------------------------------------------------------------
// valid configs

const CONTRACT_EXAMPLE: &str = "\
version: 1
channels:                  # a map: the key is the channel's name
  desk:   { kind: udp, listen: 127.0.0.1:9000, allow: [127.0.0.1/32] }
  lights: { kind: udp, send: 127.0.0.1:7000 }
routes:                    # ordered; every route has a unique name
  - name: faders
    match: /desk/fader/*
    from: [desk]           # optional source channels
    to:
      - forward: lights
        rewrite: /lx/sub/$1    # $N = the Nth capture
    stop: false            # true: later routes are not tried
  - name: everything-else
    unmatched: true        # gets what no route matched
    to: [ { forward: lights } ]
metrics:                   # optional
  listen: 127.0.0.1:9464
";

#[test]
fn the_contract_example_builds_the_expected_plan() {
    let plan = plan(CONTRACT_EXAMPLE);
    assert_eq!(plan.source, PathBuf::from("show/show.yaml"));
    assert_eq!(plan.base_dir(), PathBuf::from("show"));

    let names: Vec<&str> = plan.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["desk", "lights"]);
    let desk = plan.channel("desk").expect("desk");
    let desk_udp = udp(&plan, "desk");
    assert_eq!(desk_udp.kind, "udp");
    assert_eq!(desk_udp.listen, Some(addr("127.0.0.1:9000")));
    assert_eq!(desk_udp.send, None);
    assert_eq!(
        desk_udp.allow,
        vec!["127.0.0.1/32".parse::<NetRange>().expect("net")]
    );
    // Absent settings take the udp channel's own defaults.
    let defaults: UdpConfig =
        serde_saphyr::from_str("kind: udp\n").expect("UdpConfig with only a kind");
    assert_eq!(
        (
            desk_udp.max_datagram,
            desk_udp.recv_buffer,
            desk_udp.send_buffer,
            desk_udp.retry_ms
        ),
        (defaults.max_datagram, None, None, defaults.retry_ms)
    );
    assert_eq!(desk.kind.kind_name(), "udp");
    let lights = udp(&plan, "lights");
    assert_eq!(lights.send, Some(addr("127.0.0.1:7000")));
    assert!(plan.channel("nope").is_none());

    assert_eq!(plan.routes.len(), 2);
    let faders = &plan.routes[0];
    assert_eq!(faders.name, "faders");
    match &faders.matcher {
        RouteMatch::Pattern(p) => {
            assert_eq!(p.as_str(), "/desk/fader/*");
            assert_eq!(p.capture_count(), 1);
        }
        RouteMatch::Unmatched => panic!("faders has a pattern"),
    }
    assert_eq!(faders.from, Some(vec!["desk".to_string()]));
    assert_eq!(
        faders.targets,
        vec![TargetPlan::Forward {
            channel: "lights".into(),
            rewrite: Some(Rewrite {
                source: "/lx/sub/$1".into(),
                parts: vec![
                    RewritePart::Literal("/lx/sub/".into()),
                    RewritePart::Capture(1)
                ],
            }),
            unbundle: false,
        }]
    );
    assert!(!faders.stop);
    assert!(!faders.incoming_patterns);

    let rest = &plan.routes[1];
    assert_eq!(rest.name, "everything-else");
    assert!(matches!(rest.matcher, RouteMatch::Unmatched));
    assert_eq!(rest.from, None);
    assert_eq!(
        rest.targets,
        vec![TargetPlan::Forward {
            channel: "lights".into(),
            rewrite: None,
            unbundle: false,
        }]
    );

    assert_eq!(
        plan.metrics,
        Some(MetricsPlan {
            listen: addr("127.0.0.1:9464")
        })
    );
}

#[test]
fn the_demo_config_parses_cleanly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo.yaml");
    let plan = match load(&path) {
        Ok(plan) => plan,
        Err(e) => panic!("configs/demo.yaml:\n{e}"),
    };
    assert_eq!(plan.source, path);
    let names: Vec<&str> = plan.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["desk", "lights", "sound"]);
    let desk = udp(&plan, "desk");
    assert_eq!(desk.listen, Some(addr("127.0.0.1:9000")));
    let lights = udp(&plan, "lights");
    assert_eq!(lights.send, Some(addr("127.0.0.1:7000")));
    let sound = udp(&plan, "sound");
    assert_eq!(sound.send, Some(addr("127.0.0.1:7001")));
    // Everything binds to loopback only.
    for c in &plan.channels {
        let u = udp(&plan, &c.name);
        for a in u.listen.iter().chain(u.send.iter()) {
            assert!(a.ip().is_loopback(), "{} uses {a}", c.name);
        }
    }
    // It shows each feature once.
    let r = &plan.routes;
    assert!(r.iter().any(|r| r.targets.iter().any(|t| matches!(
        t,
        TargetPlan::Forward { rewrite: Some(rw), .. } if rw.parts.iter().any(|p| matches!(p, RewritePart::Capture(_)))
    ))));
    assert!(r
        .iter()
        .any(|r| matches!(&r.matcher, RouteMatch::Pattern(p) if p.is_literal())));
    assert!(r.iter().any(|r| r.from.is_some()));
    assert!(r.iter().any(|r| r.stop));
    assert!(r.iter().any(|r| r
        .targets
        .iter()
        .any(|t| matches!(t, TargetPlan::Reply { .. }))));
    assert!(matches!(
        r.last().map(|r| &r.matcher),
        Some(RouteMatch::Unmatched)
    ));
}

#[test]
fn minimal_and_empty_sections_are_valid() {
    let p = plan("version: 1\n");
    assert!(p.channels.is_empty() && p.routes.is_empty() && p.metrics.is_none());
    let p = plan("version: 1\nchannels: {}\nroutes: []\n");
    assert!(p.channels.is_empty() && p.routes.is_empty());
    // Sections whose entries are all commented out.
    let p = plan("version: 1\nchannels:\n#  desk: { kind: udp, listen: 127.0.0.1:9000 }\nroutes:\nmetrics:\n");
    assert!(p.channels.is_empty() && p.routes.is_empty() && p.metrics.is_none());
}

#[test]
fn base_dir_of_a_bare_file_name_is_the_current_folder() {
    let p = parse("version: 1\n", Path::new("show.yaml")).expect("valid");
    assert_eq!(p.base_dir(), PathBuf::from("."));
    let p = parse("version: 1\n", Path::new("/etc/patchbay/show.yaml")).expect("valid");
    assert_eq!(p.base_dir(), PathBuf::from("/etc/patchbay"));
}

#[test]
fn options_and_defaults() {
    let p = plan(&with_routes(
        "
  - name: cue
    match: /cue/go
    incoming_patterns: true
    stop: true
    to: [ { reply: true, rewrite: /cue/ack } ]
  - name: \"1\"
    match: /a/{x,y}/[0-9]
    to: [ { forward: lights, rewrite: /b/$2/$1/$$ } ]
",
    ));
    let cue = &p.routes[0];
    assert!(cue.stop && cue.incoming_patterns);
    assert_eq!(
        cue.targets,
        vec![TargetPlan::Reply {
            rewrite: Some(Rewrite {
                source: "/cue/ack".into(),
                parts: vec![RewritePart::Literal("/cue/ack".into())],
            })
        }]
    );
    assert_eq!(p.routes[1].name, "1");
    let TargetPlan::Forward {
        rewrite: Some(rw), ..
    } = &p.routes[1].targets[0]
    else {
        panic!("forward with rewrite")
    };
    assert_eq!(
        rw.parts,
        vec![
            RewritePart::Literal("/b/".into()),
            RewritePart::Capture(2),
            RewritePart::Literal("/".into()),
            RewritePart::Capture(1),
            RewritePart::Literal("/$".into()),
        ]
    );

    let p = plan(
        "\
version: 1
channels:
  n: { kind: udp, listen: 0.0.0.0:0, send: 127.0.0.1:0, max_datagram: 1500, recv_buffer: 1048576,
       send_buffer: 65536, retry_ms: 250, allow: [10.0.0.0/8, 192.168.1.20] }
  v6: { kind: udp, listen: \"[::1]:9000\", send: \"[::1]:9001\" }
",
    );
    let n = udp(&p, "n");
    assert_eq!(
        (n.max_datagram, n.recv_buffer, n.send_buffer, n.retry_ms),
        (1500, Some(1_048_576), Some(65_536), 250)
    );
    assert_eq!(n.allow.len(), 2);
    let v6 = udp(&p, "v6");
    assert_eq!(v6.listen, Some(addr("[::1]:9000")));
}

#[test]
fn anchors_and_aliases_are_followed() {
    let p = plan(
        "\
version: 1
channels:
  a: &out { kind: udp, send: 127.0.0.1:7000 }
  b: *out
",
    );
    assert_eq!(p.channels.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// the file and the document

#[test]
fn an_unreadable_file_is_one_error_at_line_0() {
    let path = Path::new("/nonexistent/patchbay/show.yaml");
    let errs = load(path).expect_err("missing file").0;
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].column), (0, 0));
    assert_eq!(errs[0].file, path);
    assert!(
        errs[0].message.starts_with("cannot read the config file"),
        "{}",
        errs[0].message
    );
}

#[test]
fn load_reads_the_file() {
    let dir = std::env::temp_dir().join(format!("patchbay-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("show.yaml");
    std::fs::write(&path, "version: 1\nbogus: 1\n").expect("write");
    let errs = load(&path).expect_err("bogus key").0;
    assert_eq!(
        (errs[0].file.as_path(), errs[0].line, errs[0].column),
        (path.as_path(), 2, 1)
    );
    std::fs::write(&path, "version: 1\n").expect("write");
    assert_eq!(load(&path).expect("valid").base_dir(), dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn display_is_file_line_column_path_message() {
    let errs = parse("version: 1\nchanels: {}\n", Path::new("show.yaml")).expect_err("typo");
    assert_eq!(
        errs.to_string(),
        "show.yaml:2:1: chanels: unknown key `chanels`; did you mean `channels`? (known keys: \
         version, channels, routes, metrics, bundles, scripts, plugins)"
    );
    let two = parse("version: 2\nchanels: {}\n", Path::new("show.yaml")).expect_err("two");
    assert_eq!(two.to_string().lines().count(), 2);
}

#[test]
fn syntax_error_unclosed_flow_map() {
    // A half-written save: the `}` never came.
    assert_errors(
        "\
version: 1
channels:
  desk: { kind: udp, listen: 127.0.0.1:9000
  lights: { kind: udp, send: 127.0.0.1:7000 }
",
        &[(
            "(document)",
            4,
            9,
            "invalid YAML: while parsing a flow mapping, did not find expected ',' or '}'",
        )],
    );
}

#[test]
fn syntax_error_bad_indentation() {
    assert_errors(
        "\
version: 1
channels:
  desk:
    kind: udp
   listen: 127.0.0.1:9000
",
        &[(
            "(document)",
            5,
            4,
            "invalid YAML: while parsing a block mapping, did not find expected key",
        )],
    );
    assert_errors(
        "\
version: 1
channels:
  desk:
    kind: udp
      listen: 127.0.0.1:9000
",
        &[(
            "(document)",
            5,
            13,
            "invalid YAML: mapping values are not allowed in this context",
        )],
    );
}

#[test]
fn syntax_error_tab_and_truncated_string() {
    assert_errors(
        "version: 1\nchannels:\n\tdesk: {}\n",
        &[("(document)", 3, 2, "tabs")],
    );
    assert_errors(
        "version: 1\nroutes:\n  - name: \"faders\n",
        &[("(document)", 4, 1, "invalid YAML")],
    );
}

#[test]
fn empty_and_non_map_documents() {
    assert_errors(
        "",
        &[(
            "(document)",
            1,
            1,
            "the config is empty; it needs at least `version: 1`",
        )],
    );
    assert_errors(
        "# nothing yet\n",
        &[("(document)", 2, 1, "the config is empty")],
    );
    assert_errors(
        "- version: 1\n",
        &[("(document)", 1, 1, "must be a map of top-level keys")],
    );
    assert_errors(
        "a: 1\n---\nb: 2\n",
        &[("(document)", 3, 1, "multiple YAML documents")],
    );
}

// ---------------------------------------------------------------------------------------------
// top level

#[test]
fn version_is_required_and_must_be_1() {
    assert_errors(
        "channels: {}\n",
        &[("version", 1, 1, "missing `version: 1`")],
    );
    assert_errors(
        "version: 2\n",
        &[(
            "version",
            1,
            10,
            "unsupported config version 2; this patchbay reads `version: 1`",
        )],
    );
    assert_errors(
        "version: \"1\"\n",
        &[(
            "version",
            1,
            10,
            "`version` must be the number 1, found `1`",
        )],
    );
    assert_errors(
        "version: [1]\n",
        &[("version", 1, 10, "must be the number 1, found a list")],
    );
}

#[test]
fn unknown_top_level_keys_with_and_without_a_hint() {
    assert_errors(
        "version: 1\nchanels: {}\nsounds: []\nRoutes: []\n",
        &[
            (
                "chanels",
                2,
                1,
                "unknown key `chanels`; did you mean `channels`?",
            ),
            (
                "sounds",
                3,
                1,
                "unknown key `sounds` (known keys: version, channels, routes, metrics, bundles, scripts, plugins)",
            ),
            ("Routes", 4, 1, "did you mean `routes`?"),
        ],
    );
}

#[test]
fn sections_of_the_wrong_shape() {
    assert_errors(
        "version: 1\nchannels: [desk]\nroutes: { a: 1 }\nmetrics: 9464\n",
        &[
            (
                "channels",
                2,
                11,
                "`channels` is a map from channel name to settings",
            ),
            ("routes", 3, 9, "`routes` is a list of routes"),
            (
                "metrics",
                4,
                10,
                "`metrics` is a map such as `{ listen: 127.0.0.1:9464 }`, found a number",
            ),
        ],
    );
}

#[test]
fn duplicate_top_level_keys() {
    assert_errors(
        "version: 1\nroutes: []\nversion: 1\n",
        &[(
            "version",
            3,
            1,
            "`version` appears twice in the same map (first at line 1); keep one",
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// metrics

#[test]
fn metrics_listen() {
    assert_eq!(
        plan("version: 1\nmetrics: { listen: 0.0.0.0:0 }\n").metrics,
        Some(MetricsPlan {
            listen: addr("0.0.0.0:0")
        })
    );
    assert_errors(
        "version: 1\nmetrics: {}\n",
        &[("metrics", 2, 10, "missing `listen: ip:port`")],
    );
    assert_errors(
        "version: 1\nmetrics:\n  listen: localhost:9464\n  port: 1\n",
        &[
            (
                "metrics.listen",
                3,
                11,
                "`localhost:9464` is not an `ip:port` address; write e.g. `127.0.0.1:9000`",
            ),
            ("metrics.port", 4, 3, "unknown key `port`"),
        ],
    );
    assert_errors(
        "version: 1\nmetrics: { listen: 9464 }\n",
        &[(
            "metrics.listen",
            2,
            20,
            "`9464` is not an `ip:port` address",
        )],
    );
}

#[test]
fn metrics_may_share_a_port_number_with_a_udp_channel() {
    // TCP vs UDP: no clash.
    plan("version: 1\nchannels:\n  desk: { kind: udp, listen: 0.0.0.0:9464 }\nmetrics: { listen: 0.0.0.0:9464 }\n");
}

// ---------------------------------------------------------------------------------------------
// channels

#[test]
fn unknown_channel_kind_lists_the_known_ones() {
    assert_errors(
        "version: 1\nchannels:\n  desk: { kind: serial, listen: 127.0.0.1:9000 }\n  mc: { kind: UDP }\n",
        &[
            ("channels.desk.kind", 3, 17, "unknown channel kind `serial`; known kinds: udp, multicast, broadcast, tcp, peer"),
            ("channels.mc.kind", 4, 15, "unknown channel kind `UDP`; did you mean `udp`? known kinds: udp"),
        ],
    );
}

#[test]
fn channel_kind_is_required() {
    assert_errors(
        "version: 1\nchannels:\n  desk:\n    listen: 127.0.0.1:9000\n  empty:\n  list: [udp]\n  k: { kind: [udp] }\n",
        &[
            ("channels.desk", 4, 5, "missing `kind` (one of: udp, multicast, broadcast, tcp, peer)"),
            ("channels.empty", 5, 3, "channel `empty` has no settings; it needs at least `kind` (one of: udp, multicast, broadcast, tcp, peer)"),
            ("channels.list", 6, 9, "channel `list` must be a map of settings"),
            ("channels.k.kind", 7, 14, "expected a channel kind, found a list"),
        ],
    );
}

#[test]
fn a_channel_needs_listen_or_send() {
    assert_errors(
        "version: 1\nchannels:\n  desk: { kind: udp, allow: [10.0.0.0/8] }\n",
        &[("channels.desk", 3, 9, "udp channel `desk` needs `listen: ip:port` to receive, `send: ip:port` to transmit, or both")],
    );
}

#[test]
fn channel_names_are_restricted() {
    assert_errors(
        "version: 1\nchannels:\n  front desk: { kind: udp, send: 127.0.0.1:7000 }\n  \"\": { kind: udp, send: 127.0.0.1:7001 }\n  ok_1.a-b: { kind: udp, send: 127.0.0.1:7002 }\n",
        &[
            ("channels.\"front desk\"", 3, 3, "channel name `front desk` may only use letters, digits, `_`, `.` and `-`"),
            ("channels.\"\"", 4, 3, "channel name `` may only use"),
        ],
    );
}

#[test]
fn duplicate_channel_names_are_reported_not_merged() {
    assert_errors(
        "\
version: 1
channels:
  desk: { kind: udp, listen: 127.0.0.1:9000 }
  lights: { kind: udp, send: 127.0.0.1:7000 }
  desk: { kind: udp, listen: 127.0.0.1:9001 }
  fx.1: { kind: udp, send: 127.0.0.1:7001 }
  fx.1: { kind: udp, send: 127.0.0.1:7002 }
",
        &[
            (
                "channels.desk",
                5,
                3,
                "channel `desk` is defined twice (first at line 3); give each channel a unique name",
            ),
            ("channels.\"fx.1\"", 7, 3, "channel `fx.1` is defined twice (first at line 6)"),
        ],
    );
}

#[test]
fn udp_settings_errors_point_at_the_value() {
    assert_errors(
        "\
version: 1
channels:
  desk:
    kind: udp
    listen: localhost:9000
    lisen: 127.0.0.1:9000
    retry_ms: 1s
    max_datagram: -1
    allow: [10.0.0.0/8, nope]
    send: [127.0.0.1, 7000]
",
        &[
            ("channels.desk.listen", 5, 13, "`localhost:9000` is not an `ip:port` address"),
            ("channels.desk.lisen", 6, 5, "unknown key `lisen`; did you mean `listen`? (known keys: kind, listen, send, allow, max_datagram,"),
            ("channels.desk.retry_ms", 7, 15, "expected a whole number, 0 or more, found string \"1s\"; durations are whole milliseconds, e.g. `retry_ms: 500`"),
            ("channels.desk.max_datagram", 8, 19, "expected a whole number, 0 or more, found integer `-1`"),
            ("channels.desk.allow[1]", 9, 25, "`nope` is not a network"),
            ("channels.desk.send", 10, 11, "expected socket address, found sequence"),
        ],
    );
}

#[test]
fn duplicate_keys_inside_a_channel() {
    assert_errors(
        "version: 1\nchannels:\n  desk: { kind: udp, listen: 127.0.0.1:9000, listen: 127.0.0.1:9001 }\n",
        &[("channels.desk.listen", 3, 46, "`listen` appears twice in the same map (first at line 3)")],
    );
}

#[test]
fn feedback_loops() {
    assert_errors(
        "\
version: 1
channels:
  a: { kind: udp, listen: 127.0.0.1:9000, send: 127.0.0.1:9000 }
  b: { kind: udp, listen: 0.0.0.0:9001, send: 127.0.0.1:9001 }
  c: { kind: udp, listen: 0.0.0.0:0, send: 127.0.0.1:0 }
  d: { kind: udp, listen: 127.0.0.1:9002, send: 127.0.0.2:9002 }
",
        &[
            (
                "channels.a.send",
                3,
                49,
                "`send: 127.0.0.1:9000` is this channel's own `listen: 127.0.0.1:9000` address",
            ),
            ("channels.b.send", 4, 47, "feedback loop"),
        ],
    );
}

#[test]
fn port_clashes() {
    assert_errors(
        "\
version: 1
channels:
  a: { kind: udp, listen: 127.0.0.1:9000 }
  b: { kind: udp, listen: 127.0.0.1:9000 }
  c: { kind: udp, listen: 0.0.0.0:9001 }
  d: { kind: udp, listen: 192.168.1.5:9001 }
  e: { kind: udp, listen: 127.0.0.1:9002 }
  f: { kind: udp, listen: 127.0.0.2:9002 }
  g: { kind: udp, listen: 0.0.0.0:0 }
  h: { kind: udp, listen: 0.0.0.0:0 }
  i: { kind: udp, listen: \"[::]:9003\" }
  j: { kind: udp, listen: 10.0.0.1:9003 }
",
        &[
            ("channels.b.listen", 4, 27, "udp port 9000 is already taken by channel `a` (`127.0.0.1:9000` at line 3); give each channel its own port"),
            ("channels.d.listen", 6, 27, "udp port 9001 is already taken by channel `c` (`0.0.0.0:9001` at line 5)"),
            ("channels.j.listen", 12, 27, "udp port 9003 is already taken by channel `i`"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// routes

#[test]
fn route_names_are_required_and_unique() {
    assert_errors(
        &with_routes(
            "
  - name: faders
    match: /a
    to: [ { forward: lights } ]
  - match: /b
    to: [ { forward: lights } ]
  - name: faders
    match: /c
    to: [ { forward: lights } ]
  - name: \"\"
    match: /d
    to: [ { forward: lights } ]
",
        ),
        &[
            ("routes[1]", 9, 5, "missing `name`; every route needs a unique name"),
            ("routes[2].name", 11, 11, "route name `faders` is already used by routes[0] (line 6); route names must be unique"),
            ("routes[3].name", 14, 11, "a route name cannot be empty"),
        ],
    );
}

#[test]
fn match_or_unmatched_exactly_one() {
    assert_errors(
        &with_routes(
            "
  - name: both
    match: /a
    unmatched: true
    to: [ { forward: lights } ]
  - name: neither
    to: [ { forward: lights } ]
  - name: off
    unmatched: false
    to: [ { forward: lights } ]
  - name: yes
    unmatched: yes
    to: [ { forward: lights } ]
",
        ),
        &[
            (
                "routes[0].unmatched",
                8,
                5,
                "a route has either `match:` or `unmatched: true`, not both",
            ),
            (
                "routes[1]",
                10,
                5,
                "missing `match`: a route needs `match: /osc/address/pattern` or `unmatched: true`",
            ),
            (
                "routes[2].unmatched",
                13,
                16,
                "`unmatched: false` does nothing; remove it",
            ),
            (
                "routes[3].unmatched",
                16,
                16,
                "expected `true` or `false`, found `yes`",
            ),
        ],
    );
}

#[test]
fn bad_patterns_point_at_the_offending_character() {
    assert_errors(
        &with_routes(
            "
  - name: plain
    match: /desk/fader/[1-
    to: [ { forward: lights } ]
  - name: quoted
    match: \"/desk/{a,b\"
    to: [ { forward: lights } ]
  - name: relative
    match: desk/fader
    to: [ { forward: lights } ]
  - name: number
    match: 5
    to: [ { forward: lights } ]
",
        ),
        // `[` is character 12 of the pattern: column 12 + 12; in quotes one more.
        &[
            (
                "routes[0].match",
                7,
                24,
                "invalid OSC address pattern `/desk/fader/[1-`: ",
            ),
            (
                "routes[1].match",
                10,
                19,
                "invalid OSC address pattern `/desk/{a,b`: ",
            ),
            (
                "routes[2].match",
                13,
                12,
                "invalid OSC address pattern `desk/fader`: ",
            ),
            (
                "routes[3].match",
                16,
                12,
                "invalid OSC address pattern `5`: ",
            ),
        ],
    );
}

#[test]
fn incoming_patterns_needs_a_literal_match() {
    assert_errors(
        &with_routes(
            "
  - name: literal
    match: /cue/go
    incoming_patterns: true
    to: [ { forward: lights } ]
  - name: wild
    match: /cue/*
    incoming_patterns: true
    to: [ { forward: lights } ]
  - name: rest
    unmatched: true
    incoming_patterns: true
    to: [ { forward: lights } ]
  - name: notbool
    match: /x
    incoming_patterns: 1
    to: [ { forward: lights } ]
",
        ),
        &[
            ("routes[1].incoming_patterns", 12, 24, "`incoming_patterns: true` needs a literal `match` address, but `/cue/*` has wildcards"),
            ("routes[2].incoming_patterns", 16, 24, "an `unmatched` route has none"),
            ("routes[3].incoming_patterns", 20, 24, "expected `true` or `false`, found `1`"),
        ],
    );
}

#[test]
fn from_lists_existing_channels() {
    assert_eq!(
        plan(&with_routes(
            "  - { name: a, match: /a, from: [desk, lights], to: [ { reply: true } ] }\n"
        ))
        .routes[0]
            .from,
        Some(vec!["desk".to_string(), "lights".to_string()])
    );
    assert_errors(
        &with_routes(
            "
  - name: a
    match: /a
    from: [desk, lightz, mixer]
    to: [ { forward: lights } ]
  - name: b
    match: /b
    from: desk
    to: [ { forward: lights } ]
  - name: c
    match: /c
    from: []
    to: [ { forward: lights } ]
",
        ),
        &[
            ("routes[0].from[1]", 8, 18, "unknown channel `lightz` in from; did you mean `lights`? known channels: desk, lights"),
            ("routes[0].from[2]", 8, 26, "unknown channel `mixer` in from; known channels: desk, lights"),
            ("routes[1].from", 12, 11, "`from` is a list of channel names, e.g. `from: [desk]`, found a string"),
            ("routes[2].from", 16, 11, "`from: []` accepts no channel"),
        ],
    );
}

#[test]
fn to_is_a_non_empty_list() {
    assert_errors(
        &with_routes(
            "
  - name: a
    match: /a
  - name: b
    match: /b
    to: []
  - name: c
    match: /c
    to: { forward: lights }
  - name: d
    match: /d
    to: [lights]
",
        ),
        &[
            (
                "routes[0]",
                6,
                5,
                "missing `to`: a route needs at least one target",
            ),
            (
                "routes[1].to",
                10,
                9,
                "`to` is empty; a route needs at least one target",
            ),
            ("routes[2].to", 13, 9, "`to` is a list of targets"),
            (
                "routes[3].to[0]",
                16,
                10,
                "a target is a map: write `{ forward: lights }` to send to channel `lights`",
            ),
        ],
    );
}

#[test]
fn unknown_route_keys_and_bad_stop() {
    assert_errors(
        &with_routes(
            "
  - name: a
    matchh: /a
    match: /a
    stop: maybe
    to: [ { forward: lights } ]
    stop: true
",
        ),
        &[
            (
                "routes[0].matchh",
                7,
                5,
                "unknown key `matchh`; did you mean `match`?",
            ),
            (
                "routes[0].stop",
                9,
                11,
                "expected `true` or `false`, found `maybe`",
            ),
            (
                "routes[0].stop",
                11,
                5,
                "`stop` appears twice in the same map (first at line 9)",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// targets

#[test]
fn a_target_has_exactly_one_action() {
    assert_errors(
        &with_routes(
            "
  - name: a
    match: /a
    to:
      - { forward: lights, reply: true }
      - { rewrite: /b }
      - { forwad: lights }
",
        ),
        &[
            ("routes[0].to[0].reply", 9, 28, "a target has exactly one of `forward`, `reply`, `script` or `plugin`, but this one also has `forward`"),
            ("routes[0].to[1]", 10, 9, "a target needs `forward: CHANNEL`, `reply: true`, `script: FILE` or `plugin: NAME`"),
            ("routes[0].to[2]", 11, 9, "a target needs `forward: CHANNEL`, `reply: true`, `script: FILE` or `plugin: NAME`"),
            ("routes[0].to[2].forwad", 11, 11, "unknown key `forwad`; did you mean `forward`? (known keys: forward, reply, script, fn, plugin, config, rewrite, unbundle)"),
        ],
    );
}

#[test]
fn forward_needs_a_known_channel_that_can_send() {
    assert_errors(
        &with_routes(
            "
  - name: a
    match: /a
    to:
      - forward: lightz
      - forward: desk
      - forward: [lights]
",
        ),
        &[
            ("routes[0].to[0].forward", 9, 18, "unknown channel `lightz` in forward; did you mean `lights`? known channels: desk, lights"),
            ("routes[0].to[1].forward", 10, 18, "cannot forward to channel `desk`: udp channel `desk` has no `send:` destination (it only listens); add `send: ip:port` to it, or use `reply: true`"),
            ("routes[0].to[2].forward", 11, 18, "expected a channel name, found a list"),
        ],
    );
}

#[test]
fn forward_with_no_channels_at_all() {
    assert_errors(
        "version: 1\nroutes:\n  - { name: a, match: /a, to: [ { forward: lights } ] }\n",
        &[("routes[0].to[0].forward", 3, 44, "unknown channel `lights` in forward; known channels: none are defined under `channels`")],
    );
}

#[test]
fn reply_must_be_true() {
    assert_errors(
        &with_routes(
            "
  - name: a
    match: /a
    to:
      - reply: false
      - reply: sender
",
        ),
        &[
            ("routes[0].to[0].reply", 9, 16, "`reply: false` is meaningless; write `reply: true` to answer the sender, or remove this target"),
            ("routes[0].to[1].reply", 10, 16, "expected `true` or `false`, found `sender`"),
        ],
    );
}

#[test]
fn rewrite_templates_are_checked_against_the_pattern() {
    assert_errors(
        &with_routes(
            "
  - name: one-capture
    match: /desk/fader/*
    to:
      - { forward: lights, rewrite: /lx/$1/$2 }
      - { forward: lights, rewrite: lx/$1 }
      - { forward: lights, rewrite: \"/lx/*/$1\" }
      - { forward: lights, rewrite: /lx/$x }
  - name: rest
    unmatched: true
    to: [ { reply: true, rewrite: /unmatched/$1 } ]
  - name: literal
    match: /go
    to: [ { reply: true, rewrite: /ack/$1 } ]
",
        ),
        &[
            (
                "routes[0].to[0].rewrite",
                9,
                44,
                "`$2` refers to capture 2, but the route's pattern has only 1 capture",
            ),
            (
                "routes[0].to[1].rewrite",
                10,
                37,
                "a rewrite must be an OSC address starting with `/`",
            ),
            (
                "routes[0].to[2].rewrite",
                11,
                42,
                "`*` is OSC pattern syntax and cannot appear in a rewritten address",
            ),
            (
                "routes[0].to[3].rewrite",
                12,
                41,
                "`$` must be followed by a capture number like `$1`; write `$$` for a literal `$`",
            ),
            (
                "routes[1].to[0].rewrite",
                15,
                46,
                "`$1` refers to a capture, but an `unmatched` route has no captures",
            ),
            (
                "routes[2].to[0].rewrite",
                18,
                40,
                "the route's pattern has no captures",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// everything at once

#[test]
fn independent_errors_in_different_entries_are_all_reported_in_document_order() {
    assert_errors(
        "\
version: 1
chanels: {}
channels:
  desk: { kind: udp, listen: 127.0.0.1:99999 }
  lights: { kind: udp, send: 127.0.0.1:7000, bogus: 1 }
  sound: { kind: udp, send: 127.0.0.1:7001 }
routes:
  - name: faders
    match: /desk/fader/*
    to: [ { forward: lightz, rewrite: /lx/$2 } ]
  - name: faders
    unmatched: true
    to: [ { reply: false } ]
metrics: { listen: nope }
",
        &[
            ("chanels", 2, 1, "did you mean `channels`?"),
            ("channels.desk.listen", 4, 30, "`127.0.0.1:99999` is not an `ip:port` address"),
            ("channels.lights.bogus", 5, 46, "unknown key `bogus`"),
            ("routes[0].to[0].forward", 10, 22, "unknown channel `lightz` in forward; did you mean `lights`? known channels: desk, lights, sound"),
            ("routes[0].to[0].rewrite", 10, 43, "`$2` refers to capture 2"),
            ("routes[1].name", 11, 11, "route name `faders` is already used by routes[0] (line 8)"),
            ("routes[1].to[0].reply", 13, 20, "`reply: false` is meaningless"),
            ("metrics.listen", 14, 20, "`nope` is not an `ip:port` address"),
        ],
    );
}

#[test]
fn two_errors_in_two_channels_are_both_reported() {
    assert_errors(
        "\
version: 1
channels:
  a: { kind: udp, listen: 127.0.0.1:9000, sned: 127.0.0.1:7000 }
  b:
    kind: udp
    listen: 127.0.0.1:x
",
        &[
            ("channels.a.sned", 3, 43, "did you mean `send`?"),
            (
                "channels.b.listen",
                6,
                13,
                "`127.0.0.1:x` is not an `ip:port` address",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// robustness

/// A save interrupted anywhere: every prefix of the demo config is either valid or reported with a
/// real position inside the text, and nothing panics.
#[test]
fn every_truncation_of_the_demo_is_reported_with_a_position() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo.yaml");
    let text = std::fs::read_to_string(&path).expect("configs/demo.yaml");
    let lines = text.lines().count() + 1;
    let mut failures = 0;
    for (cut, _) in text.char_indices() {
        let prefix = &text[..cut];
        if let Err(errs) = parse(prefix, &path) {
            failures += 1;
            assert!(!errs.0.is_empty());
            for e in &errs.0 {
                assert!(
                    (1..=lines).contains(&e.line) && e.column >= 1,
                    "cut at byte {cut}: error without a position: {e}"
                );
            }
            let mut sorted = errs.0.clone();
            sorted.sort_by_key(|e| (e.line, e.column));
            assert_eq!(sorted, errs.0, "cut at byte {cut}: not in document order");
        }
    }
    assert!(failures > 0);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Arbitrary text never panics the loader.
    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\\n\\t]{0,200}") {
        let _ = parse(&text, Path::new("x.yaml"));
    }

    /// Any one line of a valid config replaced by junk: no panic, and any error has a position.
    #[test]
    fn a_corrupted_line_is_positioned(line in 0usize..17, junk in "[ -~]{0,30}") {
        let mut lines: Vec<&str> = CONTRACT_EXAMPLE.lines().collect();
        lines[line] = &junk;
        let text = lines.join("\n");
        if let Err(errs) = parse(&text, Path::new("x.yaml")) {
            for e in errs.0 {
                proptest::prop_assert!(e.line >= 1 && e.column >= 1, "{}", e);
            }
        }
    }
}

#[test]
fn tcp_channels_say_which_framing_they_need() {
    let yaml = "\
version: 1
channels:
  console: { kind: tcp, connect: 127.0.0.1:9100 }
  auto_client: { kind: tcp, connect: 127.0.0.1:9101, framing: auto }
  neither: { kind: tcp, framing: slip }
  text: { kind: tcp, listen: 127.0.0.1:0, terminator: \"\\r\" }
  osc_raw: { kind: tcp, listen: 127.0.0.1:0, framing: length, raw_address: /x }
  zero: { kind: tcp, listen: 127.0.0.1:0, queue: 0 }
routes: []
";
    assert_errors(
        yaml,
        &[
            ("channels.console.connect", 3, 34, "framing: slip"),
            (
                "channels.auto_client.framing",
                4,
                63,
                "`framing: auto` only works",
            ),
            ("channels.neither.kind", 5, 20, "needs `listen: ip:port`"),
            (
                "channels.text.terminator",
                6,
                55,
                "only applies with `framing: lines`",
            ),
            (
                "channels.osc_raw.raw_address",
                7,
                76,
                "only applies with `framing: lines`",
            ),
            ("channels.zero.queue", 8, 50, "`queue: 0`"),
        ],
    );
}

#[test]
fn tcp_and_udp_may_share_a_port_number_but_two_tcp_listeners_clash() {
    let ok = plan(
        "\
version: 1
channels:
  a: { kind: udp, listen: 127.0.0.1:9200 }
  b: { kind: tcp, listen: 127.0.0.1:9200 }
routes: []
",
    );
    match &ok.channel("b").unwrap().kind {
        ChannelKind::Tcp(cfg) => {
            assert_eq!(cfg.framing(), crate::channel::framing::Framing::Auto);
            assert_eq!(cfg.max_frame, 1 << 20);
        }
        other => panic!("not tcp: {other:?}"),
    }
    let errs = run("\
version: 1
channels:
  a: { kind: tcp, listen: 0.0.0.0:9201 }
  b: { kind: tcp, listen: 127.0.0.1:9201, framing: slip }
routes: []
")
    .unwrap_err();
    let text = ConfigErrors(errs).to_string();
    assert!(text.contains("tcp port 9201"), "{text}");
}
