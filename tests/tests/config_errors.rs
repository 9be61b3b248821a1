//! `patchbay check` (and `run`) on bad configs: every error reported at once, each as
//! `FILE:LINE:COLUMN: YAML.PATH: message`.
//!
//! The line is asserted exactly. The column is accepted at the start of the offending key or of its
//! value on that line (the contract does not say which of the two a message points at).

use patchbay_tests::*;

const VALID: &str = "\
version: 1
channels:
  desk:
    kind: udp
    listen: 127.0.0.1:9000
  lights:
    kind: udp
    send: 127.0.0.1:7000
routes:
  - name: faders
    match: /desk/fader/*
    from: [desk]
    to:
      - forward: lights
        rewrite: /lx/sub/$1
  - name: rest
    unmatched: true
    to:
      - forward: lights
";

/// What one error line must say.
struct Want<'a> {
    /// The YAML path, exactly.
    path: &'a str,
    /// Text in the config whose position is the error's: a `key: value` (column of the key or of the
    /// value is accepted) or a bare value.
    at: &'a str,
    /// Which occurrence of `at` (0-based).
    nth: usize,
    /// Words the message must contain.
    mentions: &'a [&'a str],
}

fn want<'a>(path: &'a str, at: &'a str, mentions: &'a [&'a str]) -> Want<'a> {
    Want {
        path,
        at,
        nth: 0,
        mentions,
    }
}

/// Finds the error line for `w` in `output`; panics with everything when it is missing or wrong.
fn assert_reported(yaml: &str, output: &str, w: &Want) -> usize {
    let (line, col) = position(yaml, w.at, w.nth);
    // The key's column, or any column inside the value (a message may point at the offending
    // character, e.g. the unclosed `[` of a pattern).
    let mut cols = vec![col];
    match w.at.find(": ") {
        Some(i) => {
            let value_col = col + w.at[..i + 2].chars().count();
            cols.extend(value_col..value_col + w.at[i + 2..].chars().count());
        }
        None => cols.extend(col + 1..col + w.at.chars().count()),
    }
    let prefix_line = format!("cfg.yaml:{line}:");
    let with_path = format!(": {}: ", w.path);
    let candidates: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with(&prefix_line) && l.contains(&with_path))
        .collect();
    assert!(
        !candidates.is_empty(),
        "expected an error `cfg.yaml:{line}:{cols:?}: {}: …` (at {:?}); output was:\n{output}\nconfig:\n{}",
        w.path,
        w.at,
        numbered(yaml)
    );
    let l = candidates[0];
    let col_text = l[prefix_line.len()..].split(':').next().unwrap_or("");
    let got_col: usize = col_text
        .parse()
        .unwrap_or_else(|_| panic!("no column number in {l:?}"));
    assert!(
        cols.contains(&got_col),
        "error for {} at column {got_col}, expected one of {cols:?}: {l}\nconfig:\n{}",
        w.path,
        numbered(yaml)
    );
    assert!(
        l.starts_with(&format!("cfg.yaml:{line}:{got_col}: {}: ", w.path)),
        "error line is not `FILE:LINE:COLUMN: YAML.PATH: message`: {l}"
    );
    let message = &l[format!("cfg.yaml:{line}:{got_col}: {}: ", w.path).len()..];
    assert!(!message.trim().is_empty(), "empty message in {l:?}");
    for m in w.mentions {
        assert!(
            message.contains(m),
            "the message for {} should mention {m:?}: {l}",
            w.path
        );
    }
    line
}

fn numbered(yaml: &str) -> String {
    yaml.lines()
        .enumerate()
        .map(|(i, l)| format!("{:>3} | {l}\n", i + 1))
        .collect()
}

/// `check` must fail with exactly the wanted errors present (others may accompany them).
fn check_fails(yaml: &str, wants: &[Want]) -> String {
    let (code, output) = check(yaml);
    assert_eq!(
        code,
        1,
        "check should exit 1; output:\n{output}\nconfig:\n{}",
        numbered(yaml)
    );
    for w in wants {
        assert_reported(yaml, &output, w);
    }
    output
}

fn edit(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from:?} not in the valid config");
    VALID.replacen(from, to, 1)
}

#[test]
fn a_valid_config_checks_ok() {
    let (code, output) = check(VALID);
    assert_eq!(code, 0, "check of a valid config failed:\n{output}");
    assert!(
        output.lines().any(|l| l.starts_with("ok:")),
        "no `ok: …` line:\n{output}"
    );
}

#[test]
fn unknown_keys_everywhere() {
    check_fails(
        &edit(
            "    listen: 127.0.0.1:9000\n",
            "    listen: 127.0.0.1:9000\n    lissten: 127.0.0.1:9001\n",
        ),
        &[want(
            "channels.desk.lissten",
            "lissten: 127.0.0.1:9001",
            &["lissten"],
        )],
    );
    check_fails(
        &format!("{VALID}rotues: []\n"),
        &[want("rotues", "rotues: []", &["rotues"])],
    );
    check_fails(
        &edit(
            "    match: /desk/fader/*\n",
            "    match: /desk/fader/*\n    matches: /x\n",
        ),
        &[want("routes[0].matches", "matches: /x", &["matches"])],
    );
    check_fails(
        &edit(
            "        rewrite: /lx/sub/$1\n",
            "        rewrite: /lx/sub/$1\n        rewite: /oops\n",
        ),
        &[want("routes[0].to[0].rewite", "rewite: /oops", &["rewite"])],
    );
}

#[test]
fn wrong_types() {
    check_fails(
        &edit(
            "    send: 127.0.0.1:7000\n",
            "    send: 127.0.0.1:7000\n    max_datagram: lots\n",
        ),
        &[want(
            "channels.lights.max_datagram",
            "max_datagram: lots",
            &[],
        )],
    );
    check_fails(
        &edit("listen: 127.0.0.1:9000", "listen: nowhere"),
        &[want("channels.desk.listen", "listen: nowhere", &[])],
    );
    check_fails(
        &edit(
            "    unmatched: true\n",
            "    unmatched: true\n    stop: maybe\n",
        ),
        &[want("routes[1].stop", "stop: maybe", &[])],
    );
    check_fails(
        &edit(
            "    to:\n      - forward: lights\n        rewrite: /lx/sub/$1\n",
            "    to: lights\n",
        ),
        &[want("routes[0].to", "to: lights", &[])],
    );
    check_fails(
        &edit(
            "    kind: udp\n    send",
            "    kind: udp\n    retry_ms: -5\n    send",
        ),
        &[want("channels.lights.retry_ms", "retry_ms: -5", &[])],
    );
}

#[test]
fn bad_patterns() {
    check_fails(
        &edit("match: /desk/fader/*", "match: /desk/[0-9"),
        &[want("routes[0].match", "match: /desk/[0-9", &[])],
    );
    check_fails(
        &edit("match: /desk/fader/*", "match: desk/fader"),
        &[want("routes[0].match", "match: desk/fader", &[])],
    );
    check_fails(
        &edit("match: /desk/fader/*", "match: '/a/{b,c'"),
        &[want("routes[0].match", "match: '/a/{b,c'", &[])],
    );
}

#[test]
fn unknown_channels_in_routes() {
    check_fails(
        &edit(
            "      - forward: lights\n        rewrite",
            "      - forward: lightz\n        rewrite",
        ),
        &[want(
            "routes[0].to[0].forward",
            "forward: lightz",
            &["lightz"],
        )],
    );
    check_fails(
        &edit("from: [desk]", "from: [dsk]"),
        &[want("routes[0].from[0]", "dsk", &["dsk"])],
    );
}

#[test]
fn duplicate_route_names() {
    let yaml = edit("  - name: rest\n", "  - name: faders\n");
    check_fails(
        &yaml,
        &[Want {
            path: "routes[1].name",
            at: "name: faders",
            nth: 1,
            mentions: &["faders"],
        }],
    );
}

#[test]
fn two_channels_claiming_one_port() {
    let yaml = edit(
        "  lights:\n",
        "  desk2:\n    kind: udp\n    listen: 127.0.0.1:9000\n  lights:\n",
    );
    check_fails(
        &yaml,
        &[Want {
            path: "channels.desk2.listen",
            at: "listen: 127.0.0.1:9000",
            nth: 1,
            mentions: &["9000"],
        }],
    );
}

#[test]
fn a_channel_sending_to_its_own_listen_address() {
    let yaml = edit("  lights:\n", "  looped:\n    kind: udp\n    listen: 127.0.0.1:9100\n    send: 127.0.0.1:9100\n  lights:\n");
    check_fails(
        &yaml,
        &[want("channels.looped.send", "send: 127.0.0.1:9100", &[])],
    );
}

#[test]
fn a_yaml_syntax_error_has_a_position() {
    let yaml = edit("    match: /desk/fader/*\n", "    match: [unclosed\n");
    let (code, output) = check(&yaml);
    assert_eq!(code, 1, "check should exit 1:\n{output}");
    assert!(
        output.lines().any(|l| l.starts_with("cfg.yaml:")
            && l.split(':')
                .nth(1)
                .is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n > 0))),
        "no `cfg.yaml:LINE:COLUMN:` line for a syntax error:\n{output}"
    );
}

/// Several errors in one file: all reported, one per line, in document order.
fn several_errors() -> (String, Vec<Want<'static>>) {
    let yaml = VALID
        .replacen(
            "    listen: 127.0.0.1:9000\n",
            "    listen: 127.0.0.1:9000\n    lissten: 1\n",
            1,
        )
        .replacen(
            "    send: 127.0.0.1:7000\n",
            "    send: 127.0.0.1:7000\n    max_datagram: lots\n",
            1,
        )
        .replacen("match: /desk/fader/*", "match: /desk/[0-9", 1)
        .replacen(
            "      - forward: lights\n        rewrite",
            "      - forward: lightz\n        rewrite",
            1,
        )
        .replacen("  - name: rest\n", "  - name: faders\n", 1);
    let wants = vec![
        want("channels.desk.lissten", "lissten: 1", &["lissten"]),
        want("channels.lights.max_datagram", "max_datagram: lots", &[]),
        want("routes[0].match", "match: /desk/[0-9", &[]),
        want("routes[0].to[0].forward", "forward: lightz", &["lightz"]),
        Want {
            path: "routes[1].name",
            at: "name: faders",
            nth: 1,
            mentions: &["faders"],
        },
    ];
    (yaml, wants)
}

#[test]
fn several_errors_are_reported_at_once_in_document_order() {
    let (yaml, wants) = several_errors();
    let output = check_fails(&yaml, &wants);
    let lines: Vec<usize> = wants
        .iter()
        .map(|w| assert_reported(&yaml, &output, w))
        .collect();
    // Document order: the error lines appear in the output in increasing line order.
    let order: Vec<usize> = output
        .lines()
        .filter_map(|l| l.strip_prefix("cfg.yaml:"))
        .filter_map(|rest| rest.split(':').next()?.parse().ok())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "errors not in document order:\n{output}");
    assert!(lines.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn run_with_a_bad_config_exits_1_with_the_errors() {
    let (yaml, wants) = several_errors();
    let done = run_to_exit(&yaml, &[]);
    assert_eq!(
        done.code,
        Some(1),
        "run with a bad config should exit 1:\n{}",
        done.output()
    );
    for w in &wants {
        assert_reported(&yaml, &done.output(), w);
    }
}
