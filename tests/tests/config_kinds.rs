//! `patchbay check` on the issue-3 config: multicast, broadcast, `format: raw`, `unbundle` and
//! `bundles:` errors, each reported as `cfg.yaml:LINE:COLUMN: YAML.PATH: message` at the offending
//! place; and a config using all of them correctly is accepted.

use patchbay_tests::*;

/// One expected error: its YAML path, where it points, and words its message must contain.
struct Want<'a> {
    path: &'a str,
    /// Accepted (line, column) positions, computed from the config text.
    at: Vec<(usize, usize)>,
    mentions: &'a [&'a str],
}

/// The position of the value of `key: value` (the `nth` occurrence of that text), and of the key.
fn key_and_value(yaml: &str, key_value: &str, nth: usize) -> Vec<(usize, usize)> {
    let (line, col) = position(yaml, key_value, nth);
    let key_len = key_value.find(": ").expect("key: value") + 2;
    vec![(line, col), (line, col + key_len)]
}

/// Runs `check` and asserts it fails with each wanted error (path exact, position one of `at`).
fn assert_errors(yaml: &str, wants: &[Want]) -> String {
    let (code, output) = check(yaml);
    assert_eq!(
        code, 1,
        "check should fail; output:\n{output}\nconfig:\n{yaml}"
    );
    for w in wants {
        let line = output
            .lines()
            .find(|l| l.contains(&format!(": {}: ", w.path)))
            .unwrap_or_else(|| {
                panic!(
                    "no error for {}; output:\n{output}\nconfig:\n{yaml}",
                    w.path
                )
            });
        let rest = line
            .strip_prefix("cfg.yaml:")
            .unwrap_or_else(|| panic!("{line:?} does not start with the file name"));
        let mut parts = rest.splitn(3, ':');
        let l: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let c: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(
            w.at.contains(&(l, c)),
            "{}: reported at {l}:{c}, expected one of {:?}\n{line}\nconfig:\n{yaml}",
            w.path,
            w.at
        );
        let message = parts.next().unwrap_or("");
        assert!(
            message.starts_with(&format!(" {}: ", w.path)),
            "{line:?}: the path follows the position"
        );
        for word in w.mentions {
            assert!(
                message.contains(word),
                "{}: message should mention {word:?}: {line}",
                w.path
            );
        }
    }
    output
}

fn with_channel(channel: &str) -> String {
    format!("version: 1\nchannels:\n{channel}")
}

#[test]
fn multicast_group_must_be_a_multicast_address() {
    // Proves a unicast `group` is refused at the group's value, for boundaries on both sides.
    for group in ["192.168.1.1", "240.0.0.1", "223.255.255.255", "127.0.0.1"] {
        let yaml = with_channel(&format!(
            "  cues:\n    kind: multicast\n    group: {group}\n    port: 5000\n    interface: 127.0.0.1\n"
        ));
        assert_errors(
            &yaml,
            &[Want {
                path: "channels.cues.group",
                at: key_and_value(&yaml, &format!("group: {group}"), 0),
                mentions: &[group, "multicast"],
            }],
        );
    }
}

#[test]
fn multicast_interface_is_required() {
    // Proves a multicast channel without `interface` is refused, pointing at the channel.
    let yaml =
        with_channel("  cues:\n    kind: multicast\n    group: 239.255.0.1\n    port: 5000\n");
    let mut at = vec![position(&yaml, "cues:", 0)];
    at.push(position(&yaml, "kind: multicast", 0));
    assert_errors(
        &yaml,
        &[Want {
            path: "channels.cues",
            at,
            mentions: &["interface"],
        }],
    );
}

#[test]
fn multicast_ttl_above_255_is_refused() {
    // Proves ttl is bounded to 0..=255 and reported at the ttl.
    for ttl in ["256", "1000"] {
        let yaml = with_channel(&format!(
            "  cues:\n    kind: multicast\n    group: 239.255.0.1\n    port: 5000\n    interface: 127.0.0.1\n    ttl: {ttl}\n"
        ));
        assert_errors(
            &yaml,
            &[Want {
                path: "channels.cues.ttl",
                at: key_and_value(&yaml, &format!("ttl: {ttl}"), 0),
                mentions: &[ttl, "255"],
            }],
        );
    }
}

#[test]
fn forwarding_to_a_broadcast_channel_without_send_is_refused() {
    // Proves a forward to a listen-only broadcast channel is reported at the forward target.
    let yaml = "version: 1
channels:
  bc:
    kind: broadcast
    listen: 0.0.0.0:6000
routes:
  - name: out
    match: /x
    to:
      - forward: bc
";
    assert_errors(
        yaml,
        &[Want {
            path: "routes[0].to[0].forward",
            at: key_and_value(yaml, "forward: bc", 0),
            mentions: &["bc", "send"],
        }],
    );
}

#[test]
fn raw_address_needs_format_raw() {
    // Proves raw_address without format: raw is refused at the raw_address.
    let yaml = with_channel(
        "  proj:\n    kind: udp\n    listen: 127.0.0.1:7000\n    raw_address: /proj/in\n",
    );
    assert_errors(
        &yaml,
        &[Want {
            path: "channels.proj.raw_address",
            at: key_and_value(&yaml, "raw_address: /proj/in", 0),
            mentions: &["format: raw"],
        }],
    );
}

#[test]
fn raw_address_must_start_with_a_slash() {
    // Proves a raw_address that is not an OSC address is refused at its value.
    let yaml = with_channel(
        "  proj:\n    kind: udp\n    listen: 127.0.0.1:7000\n    format: raw\n    raw_address: proj/in\n",
    );
    assert_errors(
        &yaml,
        &[Want {
            path: "channels.proj.raw_address",
            at: key_and_value(&yaml, "raw_address: proj/in", 0),
            mentions: &["proj/in", "/"],
        }],
    );
}

#[test]
fn unbundle_on_a_reply_target_is_refused() {
    // Proves unbundle is for forward targets only and is reported at the unbundle key.
    let yaml = "version: 1
channels:
  desk:
    kind: udp
    listen: 127.0.0.1:9000
routes:
  - name: ping
    match: /ping
    to:
      - reply: true
        unbundle: true
";
    assert_errors(
        yaml,
        &[Want {
            path: "routes[0].to[0].unbundle",
            at: key_and_value(yaml, "unbundle: true", 0),
            mentions: &["unbundle", "forward"],
        }],
    );
}

#[test]
fn bundles_far_future_must_be_dispatch_or_drop() {
    // Proves an unknown far_future policy is refused at its value, naming the allowed ones.
    let yaml = "version: 1
bundles:
  horizon_ms: 1000
  far_future: sometimes
";
    assert_errors(
        yaml,
        &[Want {
            path: "bundles.far_future",
            at: key_and_value(yaml, "far_future: sometimes", 0),
            mentions: &["sometimes", "dispatch", "drop"],
        }],
    );
}

#[test]
fn all_of_them_at_once_each_at_its_place() {
    // Proves every one of these errors is reported in one run, each at its own line.
    let yaml = "version: 1
bundles:
  far_future: sometimes
channels:
  notgroup:
    kind: multicast
    group: 192.168.1.1
    port: 5000
    interface: 127.0.0.1
  bigttl:
    kind: multicast
    group: 239.255.0.2
    port: 5002
    interface: 127.0.0.1
    ttl: 256
  bc:
    kind: broadcast
    listen: 0.0.0.0:6000
  rawaddr:
    kind: udp
    listen: 127.0.0.1:7000
    raw_address: /x
  rawslash:
    kind: udp
    listen: 127.0.0.1:7001
    format: raw
    raw_address: nope
routes:
  - name: to-bc
    match: /a
    to:
      - forward: bc
  - name: rep
    match: /b
    to:
      - reply: true
        unbundle: true
";
    let output = assert_errors(
        yaml,
        &[
            Want {
                path: "bundles.far_future",
                at: key_and_value(yaml, "far_future: sometimes", 0),
                mentions: &["sometimes"],
            },
            Want {
                path: "channels.notgroup.group",
                at: key_and_value(yaml, "group: 192.168.1.1", 0),
                mentions: &["multicast"],
            },
            Want {
                path: "channels.bigttl.ttl",
                at: key_and_value(yaml, "ttl: 256", 0),
                mentions: &["255"],
            },
            Want {
                path: "channels.rawaddr.raw_address",
                at: key_and_value(yaml, "raw_address: /x", 0),
                mentions: &["format: raw"],
            },
            Want {
                path: "channels.rawslash.raw_address",
                at: key_and_value(yaml, "raw_address: nope", 0),
                mentions: &["nope"],
            },
            Want {
                path: "routes[0].to[0].forward",
                at: key_and_value(yaml, "forward: bc", 0),
                mentions: &["send"],
            },
            Want {
                path: "routes[1].to[0].unbundle",
                at: key_and_value(yaml, "unbundle: true", 0),
                mentions: &["forward"],
            },
        ],
    );
    let errors = output
        .lines()
        .filter(|l| l.starts_with("cfg.yaml:"))
        .count();
    assert_eq!(errors, 7, "exactly these seven errors:\n{output}");
}

#[test]
fn the_new_kinds_used_correctly_pass_check() {
    // Positive control: multicast (ttl 0 and 255, loop), broadcast with send, raw with and without
    // raw_address, unbundle on a forward and every bundles: key are accepted.
    let yaml = "version: 1
bundles:
  horizon_ms: 1000
  far_future: drop
  queue: 16
channels:
  cues:
    kind: multicast
    group: 239.255.0.1
    port: 5000
    interface: 127.0.0.1
    ttl: 0
    loop: false
  cues2:
    kind: multicast
    group: 224.0.0.251
    port: 5001
    interface: 127.0.0.1
    ttl: 255
    format: raw
  bc:
    kind: broadcast
    listen: 0.0.0.0:6000
    send: 127.255.255.255:6001
  proj:
    kind: udp
    listen: 127.0.0.1:7000
    send: 127.0.0.1:7001
    format: raw
    raw_address: /proj/in
routes:
  - name: go
    match: /go
    to:
      - forward: bc
        unbundle: true
      - forward: cues
      - forward: proj
";
    let (code, output) = check(yaml);
    assert_eq!(code, 0, "a valid config fails check:\n{output}");
    assert!(output.contains("ok"), "{output}");
}
