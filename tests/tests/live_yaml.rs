//! Live YAML end to end (issue 4): the real binary watching a real config file in a temp dir, real
//! sockets on 127.0.0.1. Edits are saved the ways editors save; each test waits for the host to report
//! the outcome on stderr (or in metrics) and then checks where messages go. Counted, never timed:
//! every wait is a bounded poll, and the only pauses are part of a scenario (an editor that pauses
//! mid-save), never an assertion.

mod live_support;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use live_support::*;
use patchbay_tests::*;

/// The three channels most tests use: `src` listens, `a` and `b` send to two receivers.
fn channels(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "version: 1\nchannels:\n  src:\n    kind: udp\n    listen: 127.0.0.1:0\n  a:\n    kind: udp\n    send: {a}\n  b:\n    kind: udp\n    send: {b}\n"
    )
}

/// A barrier route (first, `stop: true`) that forwards `/barrier/*` to both `a` and `b`.
const BARRIER_AB: &str =
    "  - name: barrier\n    match: /barrier/*\n    stop: true\n    to:\n      - forward: a\n      - forward: b\n";

/// A route `name` forwarding `pattern` to `channel`.
fn route(name: &str, pattern: &str, channel: &str) -> String {
    format!(
        "  - name: {name}\n    match: {}\n    to:\n      - forward: {channel}\n",
        yq(pattern)
    )
}

const METRICS: &str = "metrics:\n  listen: 127.0.0.1:0\n";

/// Sends `bytes` to `to` and asserts that `rx` gets exactly them next.
fn through(bytes: &[u8], to: SocketAddr, rx: &Receiver, what: &str) {
    send_to(bytes, to);
    rx.expect_bytes(bytes, what);
}

/// Sends a barrier to `src` and asserts that nothing reached `rx` before it.
fn nothing_before_barrier(src: SocketAddr, rx: &Receiver, n: usize, what: &str) {
    send_to(&barrier(n), src);
    let before = rx.until_barrier(&barrier(n));
    assert!(
        before.is_empty(),
        "{what}: got {:?}",
        before
            .iter()
            .map(|b| osc::address_of(b))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------------
// 1. 20 reloads under a steady stream

/// The last host generation of the stream test: 1 at start, then 20 applied reloads.
const LAST_GENERATION: usize = 21;

/// Whether generation `g`'s table has the `tag` route (which also matches the stream).
fn has_tag(g: usize) -> bool {
    g % 3 != 2
}

/// The config in force at host generation `g`: the stream route never changes; `tag` (present in
/// some generations, re-addressing the stream to `/g<g>/seq` on `b`) moves, changes its pattern and
/// comes and goes; other routes are added, removed and changed every time.
fn stream_config(a: SocketAddr, b: SocketAddr, g: usize) -> String {
    let stream = route("stream", "/seq", "a");
    let patterns = ["/seq", "/s?q", "/{seq,qes}", "/[rs]eq"];
    let tag = if has_tag(g) {
        format!(
            "  - name: tag\n    match: {}\n    to:\n      - forward: b\n        rewrite: /g{g}/seq\n",
            yq(patterns[g % patterns.len()])
        )
    } else {
        String::new()
    };
    let mut routes = String::from(BARRIER_AB);
    if g.is_multiple_of(2) {
        routes += &stream;
        routes += &tag;
    } else {
        routes += &tag;
        routes += &stream;
    }
    routes += &route(&format!("note{g}"), &format!("/note/{g}"), "b");
    routes += &format!(
        "  - name: mood\n    match: /mood\n    to:\n      - forward: b\n        rewrite: /mood/{g}\n"
    );
    if g.is_multiple_of(5) {
        for i in 0..3 {
            routes += &route(&format!("extra{i}"), &format!("/extra/{i}/*"), "a");
        }
    }
    format!("{}routes:\n{routes}", channels(a, b))
}

/// The generation tag of a `/g<N>/seq` address.
fn generation_of(address: &str) -> Option<usize> {
    address
        .strip_prefix("/g")?
        .strip_suffix("/seq")?
        .parse()
        .ok()
}

/// Checks that what `b` got for each sequence number (`tags[n]`: the generation tags, at most one) is
/// what exactly one generation's table does, and that those generations never go back along the
/// sequence. Assigns each message the earliest generation consistent with what b got and with the
/// previous message's (greedy earliest is optimal: it leaves the most room for what follows).
/// Returns the generations seen on b.
fn one_table_each(tags: &[Vec<usize>]) -> Result<std::collections::BTreeSet<usize>, String> {
    let mut current = 1;
    let mut seen = std::collections::BTreeSet::new();
    for (n, t) in tags.iter().enumerate() {
        match t.as_slice() {
            [] => {
                current = (current..=LAST_GENERATION)
                    .find(|&g| !has_tag(g))
                    .ok_or_else(|| {
                        format!(
                            "seq {n} did not reach b, but every table from generation {current} on forwards it there"
                        )
                    })?;
            }
            [g] => {
                let g = *g;
                if !has_tag(g) || g > LAST_GENERATION {
                    return Err(format!(
                        "seq {n} reached b tagged generation {g}, whose table has no tag route"
                    ));
                }
                if g < current {
                    return Err(format!(
                        "seq {n} was routed by generation {g} after an earlier message was routed by generation {current}"
                    ));
                }
                current = g;
                seen.insert(g);
            }
            several => {
                return Err(format!(
                    "seq {n} reached b {} times ({several:?}): routed by more than one table",
                    several.len()
                ))
            }
        }
    }
    Ok(seen)
}

/// Proves the stream test's oracle is not vacuous: in-order tables pass; a step back, a message
/// missing from b while every later table forwards it, a tag from a table without the route, and a
/// message routed twice are all caught.
#[test]
fn the_one_table_each_oracle_catches_mixed_and_backward_routing() {
    // Generations 1 (tag), 2 (no tag), 3 (tag), 4 (tag), 5 (no tag).
    let ok = vec![
        vec![1],
        vec![1],
        vec![],
        vec![],
        vec![3],
        vec![4],
        vec![],
        vec![],
    ];
    assert_eq!(
        one_table_each(&ok).map(|s| s.into_iter().collect::<Vec<_>>()),
        Ok(vec![1, 3, 4])
    );
    assert!(one_table_each(&[vec![3], vec![1]]).is_err(), "a step back");
    assert!(
        one_table_each(&[vec![4], vec![], vec![4]]).is_err(),
        "missing from b in the middle of generation 4 (a later no-tag table would have to go back)"
    );
    let all_tagged_after = vec![vec![LAST_GENERATION], vec![]];
    assert!(
        one_table_each(&all_tagged_after).is_err(),
        "missing after the last table"
    );
    assert!(
        one_table_each(&[vec![2]]).is_err(),
        "generation 2 has no tag route"
    );
    assert!(one_table_each(&[vec![1, 1]]).is_err(), "routed twice");
}

/// Proves: under a steady stream through an untouched channel and route, 20 reloads that add, remove
/// and change other routes lose and duplicate nothing, and every message is routed entirely by one
/// table, the tables in force in order (the stream's per-generation copy on `b` says which).
#[test]
fn twenty_reloads_under_a_steady_stream_lose_nothing_and_route_each_message_by_one_table() {
    let (rec_a, rec_b) = (Recorder::start(), Recorder::start());
    let pb = Patchbay::start(&stream_config(rec_a.addr, rec_b.addr, 1));
    let src = pb.addr("src");
    let stream = Stream::start(src, 120_000);
    let coverage = |g: usize, a_at_apply: usize| {
        // Let each table serve some of the stream before the next save, so every one is exercised.
        if has_tag(g) {
            let tag = format!("/g{g}/seq");
            assert!(
                rec_b.wait_until(RELOAD_TIMEOUT, |got| got
                    .iter()
                    .any(|d| osc::address_of(d) == tag)),
                "generation {g} is in force but no {tag} reached b within {RELOAD_TIMEOUT:?}"
            );
        } else {
            assert!(
                rec_a.wait_until(RELOAD_TIMEOUT, |got| got.len() >= a_at_apply + 30),
                "generation {g} is in force but the stream stalled at a ({} messages)",
                rec_a.len()
            );
        }
    };
    coverage(1, 0);

    let mut observed_ms = Vec::new();
    for g in 2..=LAST_GENERATION {
        let saved = Instant::now();
        save(
            &pb,
            &stream_config(rec_a.addr, rec_b.addr, g),
            Save::InPlace,
        );
        let line = wait_applied(&pb, g - 1);
        observed_ms.push(saved.elapsed().as_millis());
        assert_eq!(
            field(&line, "generation"),
            Some(g as u64),
            "applied line: {line}"
        );
        coverage(g, rec_a.len());
    }
    let sent = stream.stop();
    assert!(sent > 0, "the stream sent nothing");
    let sent = sent as usize;

    // Drain: every stream message at a (bounded), then a barrier along both paths.
    let drained = rec_a.wait_until(RECV_TIMEOUT, |got| got.len() >= sent);
    send_to(&barrier(0), src);
    let fence = barrier(0);
    for (name, rec) in [("a", &rec_a), ("b", &rec_b)] {
        assert!(
            rec.wait_until(RECV_TIMEOUT, |got| got.contains(&fence)),
            "the barrier did not reach {name} within {RECV_TIMEOUT:?} (drained a: {drained})"
        );
    }
    let (got_a, got_b) = (rec_a.finish(), rec_b.finish());

    // a: every sequence number exactly once, byte-exact, nothing else.
    let mut count = vec![0u32; sent];
    let mut strays = Vec::new();
    for d in got_a.iter().filter(|d| **d != fence) {
        match parse_int_message(d) {
            Some((address, n)) if address == "/seq" && (0..sent as i32).contains(&n) => {
                count[n as usize] += 1
            }
            _ => strays.push(osc::address_of(d)),
        }
    }
    let lost: Vec<usize> = (0..sent).filter(|&n| count[n] == 0).collect();
    let duplicated: Vec<usize> = (0..sent).filter(|&n| count[n] > 1).collect();
    assert!(strays.is_empty(), "a got unexpected datagrams: {strays:?}");
    assert!(
        lost.is_empty() && duplicated.is_empty(),
        "of {sent} stream messages a lost {} (first {:?}) and got {} more than once (first {:?})",
        lost.len(),
        &lost[..lost.len().min(20)],
        duplicated.len(),
        &duplicated[..duplicated.len().min(20)]
    );

    // b: for each sequence number, the generation tag it got (at most one).
    let mut tags: Vec<Vec<usize>> = vec![Vec::new(); sent];
    for d in got_b.iter().filter(|d| **d != fence) {
        let parsed = parse_int_message(d).and_then(|(address, n)| {
            let g = generation_of(&address)?;
            (0..sent as i32).contains(&n).then_some((g, n as usize))
        });
        match parsed {
            Some((g, n)) => tags[n].push(g),
            None => panic!("b got an unexpected datagram {:?}", osc::address_of(d)),
        }
    }
    let several: Vec<(usize, &Vec<usize>)> = tags
        .iter()
        .enumerate()
        .filter(|(_, t)| t.len() > 1)
        .collect();
    assert!(
        several.is_empty(),
        "these sequence numbers reached b more than once (routed by more than one table): {:?}",
        &several[..several.len().min(20)]
    );

    // Each message by one table, tables in order.
    let seen_generations = one_table_each(&tags).unwrap_or_else(|e| panic!("{e}"));
    let expected: std::collections::BTreeSet<usize> =
        (1..=LAST_GENERATION).filter(|&g| has_tag(g)).collect();
    assert_eq!(
        seen_generations, expected,
        "every generation with a tag route served part of the stream"
    );
    eprintln!(
        "live_yaml: stream: {sent} messages through 20 reloads; save-to-seen-applied ms (test's poll) {observed_ms:?}"
    );
    record_times("stream", &pb);
}

// ---------------------------------------------------------------------------------------------------
// 2. Save styles and a save in two halves

/// The save-styles config: a barrier, four routes `k1..k4` to `a`, then `r` (`/x`) to `dest`.
fn styles_config(a: SocketAddr, b: SocketAddr, dest: &str) -> String {
    let mut routes = String::from(BARRIER_AB);
    for i in 1..=4 {
        routes += &route(&format!("k{i}"), &format!("/k{i}"), "a");
    }
    routes += &route("r", "/x", dest);
    format!("{}routes:\n{routes}", channels(a, b))
}

/// Proves: in-place, rename-over and delete-and-create saves are each picked up (the route change
/// takes effect, the watch survives), and a save written in two halves with a pause is never applied
/// half: the old routes keep serving through the pause and only the full file's change is applied.
#[test]
fn every_save_style_is_picked_up_and_a_save_in_two_halves_is_not_applied_half() {
    let (rx_a, rx_b) = (Receiver::new(), Receiver::new());
    let pb = Patchbay::start(&styles_config(rx_a.addr(), rx_b.addr(), "a"));
    let src = pb.addr("src");
    let x = osc::message("/x", &[]);
    through(&x, src, &rx_a, "/x before any edit");

    let steps = [
        (Save::InPlace, "b"),
        (Save::Rename, "a"),
        (Save::DeleteCreate, "b"),
    ];
    for (i, (how, dest)) in steps.into_iter().enumerate() {
        save(&pb, &styles_config(rx_a.addr(), rx_b.addr(), dest), how);
        let line = wait_applied(&pb, i + 1);
        assert_eq!(summary(&line), "routes: ~r", "{how:?} save: {line}");
        let (to, other) = if dest == "a" {
            (&rx_a, &rx_b)
        } else {
            (&rx_b, &rx_a)
        };
        through(&x, src, to, &format!("/x after the {how:?} save to {dest}"));
        nothing_before_barrier(
            src,
            other,
            i,
            &format!("after the {how:?} save, /x not to the old destination"),
        );
        // The barrier went to both; take it off the destination's socket too.
        to.expect_bytes(&barrier(i), "barrier at the destination");
    }

    // Two halves: the full file moves r back to a. The first half ends inside a later route, so it
    // lacks k3, k4 and r; applying it would stop /k4.
    let full = styles_config(rx_a.addr(), rx_b.addr(), "a");
    let from = full.len() / 2;
    let cut = from
        + full[from..]
            .find("match:")
            .expect("a route after the middle")
        + 3;
    let (first, rest) = full.split_at(cut);
    assert!(
        !first.contains("name: k4") && !first.contains("name: r\n"),
        "the half must lose routes:\n{first}"
    );
    let invalid_before = lines_with(&pb, INVALID).len();
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(config_path(&pb))
        .expect("open the config");
    file.write_all(first.as_bytes())
        .expect("write the first half");
    file.sync_all().expect("flush the first half");
    // The editor pauses longer than the host's settle (30 ms) plus debounce (40 ms).
    std::thread::sleep(Duration::from_millis(250));
    through(
        &osc::message("/k4", &[]),
        src,
        &rx_a,
        "/k4 while only half the file is saved",
    );
    through(
        &x,
        src,
        &rx_b,
        "/x (old route) while only half the file is saved",
    );
    assert_eq!(
        applied_lines(&pb).len(),
        3,
        "the half save was applied:\n{}",
        pb.stderr_text()
    );
    file.write_all(rest.as_bytes()).expect("write the rest");
    file.sync_all().expect("flush the rest");
    drop(file);
    let line = wait_applied(&pb, 4);
    assert_eq!(
        summary(&line),
        "routes: ~r",
        "only the full file's change is applied: {line}"
    );
    through(&x, src, &rx_a, "/x after the full save");
    through(
        &osc::message("/k4", &[]),
        src,
        &rx_a,
        "/k4 after the full save",
    );
    let invalid = lines_with(&pb, INVALID).len() - invalid_before;
    assert!(
        lines_with(&pb, "removes ").is_empty(),
        "no reload ever saw the routes the half lacks as removed:\n{}",
        pb.stderr_text()
    );
    eprintln!("live_yaml: two halves: the half was reported invalid {invalid} time(s)");
    record_times("save styles", &pb);
}

// ---------------------------------------------------------------------------------------------------
// 3. Invalid edits

/// Proves: a YAML syntax error and, separately, an unknown channel in a route keep the old routes
/// serving, are reported with file:line:column and counted as invalid; the fixed save then applies.
#[test]
fn an_invalid_edit_keeps_the_old_routes_serving_and_the_fixed_save_applies() {
    let (rx_a, rx_b) = (Receiver::new(), Receiver::new());
    let config = |r: &str| {
        format!(
            "{}routes:\n{BARRIER_AB}{r}{METRICS}",
            channels(rx_a.addr(), rx_b.addr())
        )
    };
    let pb = Patchbay::start(&config(&route("r", "/x", "a")));
    let (src, metrics) = (pb.addr("src"), pb.ready().metrics.expect("metrics address"));
    let x = osc::message("/x", &[]);
    through(&x, src, &rx_a, "/x before any edit");

    // A YAML syntax error (an unclosed flow sequence) in an edit that would move /x to b.
    let broken = config("  - name: r\n    match: /x\n    to: [ { forward: b }\n");
    save(&pb, &broken, Save::InPlace);
    let text = wait_count(&pb, INVALID, 1);
    let (line, _) = error_position(&text, "cfg.yaml", "invalid YAML");
    assert!(
        line <= broken.lines().count() + 1,
        "line {line} is inside the file"
    );
    wait_metric(metrics, r#"patchbay_reloads_total{result="invalid"}"#, 1.0);
    through(&x, src, &rx_a, "/x after the syntax error (old route)");

    // An unknown channel in a route.
    let unknown = config(&route("r", "/x", "nosuch"));
    save(&pb, &unknown, Save::InPlace);
    let text = wait_count(&pb, INVALID, 2);
    let (line, column) = error_position(&text, "cfg.yaml", "unknown channel `nosuch`");
    assert_eq!(
        (line, column),
        position(&unknown, "nosuch", 0),
        "the error points at the unknown name"
    );
    assert!(
        text.contains("routes[1].to[0].forward"),
        "the YAML path is named:\n{text}"
    );
    wait_metric(metrics, r#"patchbay_reloads_total{result="invalid"}"#, 2.0);
    through(&x, src, &rx_a, "/x after the unknown channel (old route)");
    assert!(applied_lines(&pb).is_empty(), "nothing was applied");

    // The fixed save applies.
    save(&pb, &config(&route("r", "/x", "b")), Save::InPlace);
    let line = wait_applied(&pb, 1);
    assert_eq!(summary(&line), "routes: ~r");
    through(&x, src, &rx_b, "/x after the fixed save");
    wait_metric(metrics, r#"patchbay_reloads_total{result="applied"}"#, 1.0);
    let body = wait_metric(metrics, "patchbay_config_generation", 2.0);
    assert_eq!(
        sample(&body, r#"patchbay_reloads_total{result="invalid"}"#),
        Some(2.0)
    );
    record_times("invalid edits", &pb);
}

// ---------------------------------------------------------------------------------------------------
// 4. A port held by another process

/// Proves: a reload whose rebind, or whose new channel, needs a port another process holds is rolled
/// back (logged, counted) and the old config keeps serving; once the port is free the save applies.
#[test]
fn a_reload_that_needs_a_held_port_rolls_back_and_the_old_config_keeps_serving() {
    let (rx_a, rx_b) = (Receiver::new(), Receiver::new());
    let holder = UdpSocket::bind("127.0.0.1:0").expect("hold a port");
    let held = holder.local_addr().unwrap();
    let base = channels(rx_a.addr(), rx_b.addr());
    let config = |chans: &str, dest: &str| {
        format!(
            "{chans}routes:\n{BARRIER_AB}{}{METRICS}",
            route("r", "/x", dest)
        )
    };
    let pb = Patchbay::start(&config(&base, "a"));
    let (src, metrics) = (pb.addr("src"), pb.ready().metrics.expect("metrics address"));
    let x = osc::message("/x", &[]);
    through(&x, src, &rx_a, "/x before any edit");

    // Rebind src onto the held port (and move /x to b in the same save).
    let rebind = base.replace("listen: 127.0.0.1:0", &format!("listen: {held}"));
    save(&pb, &config(&rebind, "b"), Save::InPlace);
    let text = wait_count(&pb, ROLLED_BACK, 1);
    let line = lines_with(&pb, ROLLED_BACK)[0].clone();
    assert!(
        line.contains("Rolled back") && line.contains("`src`") && line.contains(&held.to_string()),
        "the log says what and why: {line}\n{text}"
    );
    wait_metric(
        metrics,
        r#"patchbay_reloads_total{result="rolled_back"}"#,
        1.0,
    );
    through(
        &x,
        src,
        &rx_a,
        "/x through the old listen port after the rollback",
    );
    nothing_before_barrier(
        src,
        &rx_b,
        0,
        "the rolled-back route change is not in force",
    );
    rx_a.expect_bytes(&barrier(0), "barrier at a");

    // Add a channel on the held port (and move /x to b in the same save).
    let added = format!("{base}  extra:\n    kind: udp\n    listen: {held}\n");
    save(&pb, &config(&added, "b"), Save::InPlace);
    wait_count(&pb, ROLLED_BACK, 2);
    let line = lines_with(&pb, ROLLED_BACK)[1].clone();
    assert!(
        line.contains("`extra`"),
        "the log names the channel: {line}"
    );
    let body = wait_metric(
        metrics,
        r#"patchbay_reloads_total{result="rolled_back"}"#,
        2.0,
    );
    assert_eq!(sample(&body, "patchbay_config_generation"), Some(1.0));
    assert!(applied_lines(&pb).is_empty(), "nothing was applied");
    through(&x, src, &rx_a, "/x after the second rollback");
    let ready = pb.reread_ready().expect("ready file");
    assert_eq!(
        ready.channel("src").listen,
        Some(src),
        "src still listens where it did"
    );

    // Once the other process lets go, the same save applies.
    drop(holder);
    save(&pb, &config(&added, "b"), Save::InPlace);
    let line = wait_applied(&pb, 1);
    assert_eq!(summary(&line), "routes: ~r; channels: +extra");
    through(&x, src, &rx_b, "/x after the save applied");
    record_times("held port", &pb);
}

// ---------------------------------------------------------------------------------------------------
// 5. A live send change

/// `src` listens; `dev` listens and sends to `dest`; `/x` from src goes out through dev, `/echo` to
/// dev is answered from dev's socket, and the barrier goes to a side channel `side` (to `side_to`).
fn live_config(dest: SocketAddr, side_to: SocketAddr) -> String {
    format!(
        "version: 1\nchannels:\n  src:\n    kind: udp\n    listen: 127.0.0.1:0\n  dev:\n    kind: udp\n    listen: 127.0.0.1:0\n    send: {dest}\n  side:\n    kind: udp\n    send: {side_to}\nroutes:\n  - name: barrier\n    match: /barrier/*\n    stop: true\n    to:\n      - forward: side\n  - name: r\n    match: /x\n    from: [src]\n    to:\n      - forward: dev\n  - name: echo\n    match: /echo\n    to:\n      - reply: true\n"
    )
}

/// Proves: changing a send destination redirects traffic in place: the summary says `(live: send)`,
/// and the channel's socket (ready file `local`, source port of what it sends, its listen port still
/// answering) is the same before and after.
#[test]
fn a_send_change_redirects_traffic_without_rebinding_the_listening_socket() {
    let (rx_a, rx_b) = (Receiver::new(), Receiver::new());
    let pb = Patchbay::start(&live_config(rx_a.addr(), rx_a.addr()));
    let (src, dev) = (pb.addr("src"), pb.addr("dev"));
    let local = pb.channel("dev").local.expect("dev has a local address");
    assert_eq!(
        local, dev,
        "a channel with both sends from its listen socket"
    );
    let x = osc::message("/x", &[]);
    send_to(&x, src);
    let before = rx_a.expect_bytes(&x, "/x before the edit");
    assert_eq!(before, dev, "forwarded from dev's listening socket");

    save(&pb, &live_config(rx_b.addr(), rx_a.addr()), Save::InPlace);
    let line = wait_applied(&pb, 1);
    assert_eq!(summary(&line), "channels: ~dev (live: send)");
    send_to(&x, src);
    let after = rx_b.expect_bytes(&x, "/x after the edit");
    assert_eq!(after, before, "same source port before and after");
    nothing_before_barrier(src, &rx_a, 0, "/x no longer goes to the old destination");

    let echo = osc::message("/echo", &[]);
    let asker = Receiver::new();
    asker.send_to(&echo, dev);
    let answered_from = asker.expect_bytes(&echo, "/echo to dev's listen port after the edit");
    assert_eq!(answered_from, dev, "dev still listens on the same socket");
    let ready = pb.reread_ready().expect("ready file");
    assert_eq!(
        ready.channel("dev").local,
        Some(local),
        "same local address"
    );
    assert_eq!(
        ready.channel("dev").listen,
        Some(dev),
        "same listen address"
    );
    assert!(
        lines_with(&pb, "Channel is up. channel=dev").len() == 1,
        "dev was not brought up again:\n{}",
        pb.stderr_text()
    );
}

/// Proves: after a live send change the ready file names the new destination (it stays true).
#[test]
fn the_ready_file_names_the_new_destination_after_a_live_send_change() {
    let (rx_a, rx_b) = (Receiver::new(), Receiver::new());
    let pb = Patchbay::start(&live_config(rx_a.addr(), rx_a.addr()));
    assert_eq!(pb.channel("dev").send, Some(rx_a.addr()));
    save(&pb, &live_config(rx_b.addr(), rx_a.addr()), Save::InPlace);
    wait_applied(&pb, 1);
    // The summary line is logged just before the ready file is rewritten: poll it.
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let ready = pb.reread_ready().expect("ready file");
        if ready.channel("dev").send == Some(rx_b.addr()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within {RELOAD_TIMEOUT:?} of the live send change to {}, the ready file still says: {}",
            rx_b.addr(),
            ready.raw
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------------
// 6. A rebind

/// `src` listening on `listen`, `/x` to `a`, metrics on.
fn rebind_config(listen: &str, a: SocketAddr) -> String {
    format!(
        "version: 1\nchannels:\n  src:\n    kind: udp\n    listen: {listen}\n  a:\n    kind: udp\n    send: {a}\nroutes:\n{}{METRICS}",
        route("r", "/x", "a")
    )
}

/// Polls the ready file until `channel` listens on `addr` and is up.
fn wait_ready_listen(pb: &Patchbay, channel: &str, addr: SocketAddr) {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let ready = pb.reread_ready().expect("ready file");
        let info = ready.channel(channel);
        if info.listen == Some(addr) && info.up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ready file does not say {channel} is up on {addr} within {RELOAD_TIMEOUT:?}: {}",
            ready.raw
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Proves: changing a channel's `listen` port moves it: the new port serves, the old port is let go
/// (another socket can bind it, so the host receives nothing there), the ready file says the new one.
#[test]
fn a_rebind_moves_the_channel_to_the_new_port() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&rebind_config("127.0.0.1:0", rx.addr()));
    let old = pb.addr("src");
    let x = osc::message("/x", &[]);
    through(&x, old, &rx, "/x to the old port before the edit");

    let new: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    save(
        &pb,
        &rebind_config(&new.to_string(), rx.addr()),
        Save::InPlace,
    );
    let line = wait_applied(&pb, 1);
    assert_eq!(summary(&line), "channels: ~src (rebind: listen)");
    through(&x, new, &rx, "/x to the new port");
    wait_ready_listen(&pb, "src", new);

    // The old port is released: we can bind it, and what is sent there reaches us, not the host.
    let taken = wait_bindable(old);
    send_to(&x, old);
    let mut buf = [0u8; 64];
    taken.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let (n, _) = taken
        .recv_from(&mut buf)
        .expect("our socket on the old port gets it");
    assert_eq!(&buf[..n], &x[..]);
    nothing_before_barrier_on(new, &rx, "nothing sent to the old port was routed");

    // The new channel is unaffected by the old one closing.
    through(
        &x,
        new,
        &rx,
        "/x to the new port after the old socket closed",
    );
    wait_ready_listen(&pb, "src", new);
    record_times("rebind", &pb);
}

/// `rebind_config` has no barrier route: sends a marker `/x ,i -1` to `to` and asserts it is the
/// next thing `rx` gets.
fn nothing_before_barrier_on(to: SocketAddr, rx: &Receiver, what: &str) {
    let marker = osc::message("/x", &[patchbay_plugin_api::osc::OscArg::Int(-1)]);
    send_to(&marker, to);
    let before = rx.until_barrier(&marker);
    assert!(
        before.is_empty(),
        "{what}: got {:?}",
        before
            .iter()
            .map(|b| osc::address_of(b))
            .collect::<Vec<_>>()
    );
}

/// Proves: after a rebind, once the old socket has closed, `patchbay_channel_up` for the channel
/// still says 1 (the new socket is up).
#[test]
fn the_channel_up_metric_stays_1_after_a_rebind() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&rebind_config("127.0.0.1:0", rx.addr()));
    let (old, metrics) = (pb.addr("src"), pb.ready().metrics.expect("metrics address"));
    wait_metric(metrics, r#"patchbay_channel_up{channel="src"}"#, 1.0);
    let new: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    save(
        &pb,
        &rebind_config(&new.to_string(), rx.addr()),
        Save::InPlace,
    );
    wait_applied(&pb, 1);
    let _taken = wait_bindable(old);
    through(&osc::message("/x", &[]), new, &rx, "/x to the new port");
    let body = scrape(metrics);
    assert_eq!(
        sample(&body, r#"patchbay_channel_up{channel="src"}"#),
        Some(1.0),
        "src is up on {new}, but the metric says otherwise:\n{body}"
    );
}

// ---------------------------------------------------------------------------------------------------
// 7. Removing more than half of the routes

/// Proves: a valid save that removes more than half of the routes is applied, with a warning that
/// names what disappeared; the kept route serves and the removed ones stop.
#[test]
fn removing_more_than_half_of_the_routes_is_applied_with_a_warning_naming_them() {
    let (rx_a, rx_b) = (Receiver::new(), Receiver::new());
    let config = |gone: bool| {
        let mut routes = String::from(BARRIER_AB);
        routes += &route("keep", "/keep", "a");
        if !gone {
            for i in 1..=3 {
                routes += &route(&format!("gone{i}"), &format!("/gone{i}"), "a");
            }
        }
        format!("{}routes:\n{routes}", channels(rx_a.addr(), rx_b.addr()))
    };
    let pb = Patchbay::start(&config(false));
    let src = pb.addr("src");
    through(
        &osc::message("/gone2", &[]),
        src,
        &rx_a,
        "/gone2 before the edit",
    );

    save(&pb, &config(true), Save::InPlace);
    let line = wait_applied(&pb, 1);
    assert_eq!(summary(&line), "routes: -gone1 -gone2 -gone3");
    let warnings = lines_with(&pb, "removes 3 of 5 routes (gone1, gone2, gone3)");
    assert_eq!(warnings.len(), 1, "one warning:\n{}", pb.stderr_text());
    assert!(
        warnings[0].contains("WARN"),
        "logged as a warning: {}",
        warnings[0]
    );

    through(
        &osc::message("/keep", &[]),
        src,
        &rx_a,
        "/keep after the edit",
    );
    send_to(&osc::message("/gone2", &[]), src);
    nothing_before_barrier(src, &rx_a, 0, "/gone2 is no longer routed");
}

// ---------------------------------------------------------------------------------------------------
// 8. patchbay check NEW --against OLD

/// Runs `patchbay check NEW --against OLD` in a temp dir holding both files.
fn check_against(old: &str, new: &str) -> (Finished, String, String) {
    let dir = tempfile::Builder::new()
        .prefix("patchbay-against-")
        .tempdir()
        .expect("tempdir");
    fs::write(dir.path().join("old.yaml"), old).unwrap();
    fs::write(dir.path().join("new.yaml"), new).unwrap();
    let done = run_bounded(
        patchbay_cmd()
            .current_dir(dir.path())
            .args(["check", "new.yaml", "--against", "old.yaml"]),
        EXIT_TIMEOUT,
    );
    let old_after = fs::read_to_string(dir.path().join("old.yaml")).unwrap();
    let new_after = fs::read_to_string(dir.path().join("new.yaml")).unwrap();
    (done, old_after, new_after)
}

/// Proves: `patchbay check NEW --against OLD` prints the reload summary without applying anything
/// (exit 0, no socket bound: NEW's listen port is held by the test), warns about a large removal, and
/// a bad NEW exits 1 with positioned errors and no summary.
#[test]
fn check_against_previews_the_summary_without_applying() {
    let holder = UdpSocket::bind("127.0.0.1:0").expect("hold a port");
    let held = holder.local_addr().unwrap();
    let old = "version: 1\nchannels:\n  out: { kind: udp, send: 127.0.0.1:7000 }\n  desk: { kind: udp, listen: 127.0.0.1:9000 }\nroutes:\n  - { name: a, match: /a, to: [ { forward: out } ] }\n  - { name: b, match: '/b/*', to: [ { forward: out } ] }\n  - { name: c, match: /c, to: [ { forward: out } ] }\n";
    let new = old
        .replace("127.0.0.1:7000", "127.0.0.1:7010")
        .replace("127.0.0.1:9000", &held.to_string())
        .replace("  - { name: a, match: /a, to: [ { forward: out } ] }\n", "")
        .replace("'/b/*'", "'/b/?'")
        + "  - { name: d, match: /d, to: [ { forward: out } ] }\n";
    let (done, old_after, new_after) = check_against(old, &new);
    assert_eq!(done.code, Some(0), "{}", done.output());
    assert!(
        done.stdout.lines().any(|l| l
            == "changes against old.yaml: routes: +d -a ~b; channels: ~out (live: send) ~desk (rebind: listen)"),
        "the summary:\n{}",
        done.output()
    );
    assert!(
        done.stdout
            .contains("ok: new.yaml is valid (2 channels, 3 routes)"),
        "{}",
        done.output()
    );
    assert!(!done.output().contains("warning"), "{}", done.output());
    assert_eq!(
        (old_after.as_str(), new_after.as_str()),
        (old, new.as_str()),
        "files untouched"
    );

    // A large removal is flagged in the preview too.
    let small = old
        .replace("  - { name: a, match: /a, to: [ { forward: out } ] }\n", "")
        .replace("  - { name: c, match: /c, to: [ { forward: out } ] }\n", "");
    let (done, _, _) = check_against(old, &small);
    assert_eq!(done.code, Some(0), "{}", done.output());
    assert!(
        done.stdout
            .contains("changes against old.yaml: routes: -a -c")
            && done
                .stdout
                .contains("warning: this removes 2 of 3 routes (a, c)"),
        "{}",
        done.output()
    );

    // A bad NEW: exit 1, positioned errors, no summary.
    let bad = old.replace("/c, to: [ { forward: out", "/c, to: [ { forward: nosuch");
    let (done, _, _) = check_against(old, &bad);
    assert_eq!(done.code, Some(1), "{}", done.output());
    let (line, column) = position(&bad, "nosuch", 0);
    assert!(
        done.stdout.contains(&format!("new.yaml:{line}:{column}: ")),
        "positioned error:\n{}",
        done.output()
    );
    assert!(
        !done.output().contains("changes against"),
        "{}",
        done.output()
    );
    drop(holder);
}

// ---------------------------------------------------------------------------------------------------
// 9. Reload metrics over HTTP

/// Proves: the generation gauge goes up by one per applied reload and not otherwise; reloads are
/// counted by result (applied, invalid, rolled_back); the save-to-applied histogram counts each
/// applied reload with plausible values.
#[test]
fn reload_metrics_count_by_result_and_track_the_generation() {
    let (rx_a, rx_b) = (Receiver::new(), Receiver::new());
    let config = |extra: usize, chans: &str| {
        let mut routes = route("r", "/x", "a");
        for i in 0..extra {
            routes += &route(&format!("n{i}"), &format!("/n/{i}"), "b");
        }
        format!("{chans}routes:\n{routes}{METRICS}")
    };
    let base = channels(rx_a.addr(), rx_b.addr());
    let pb = Patchbay::start(&config(0, &base));
    let metrics = pb.ready().metrics.expect("metrics address");
    let body = wait_metric(metrics, "patchbay_config_generation", 1.0);
    for result in ["applied", "invalid", "rolled_back"] {
        let series = format!("patchbay_reloads_total{{result=\"{result}\"}}");
        assert_eq!(sample(&body, &series).unwrap_or(0.0), 0.0, "{series}");
    }
    let count = "patchbay_reload_save_to_applied_seconds_count";
    let sum = "patchbay_reload_save_to_applied_seconds_sum";
    assert_eq!(sample(&body, count).unwrap_or(0.0), 0.0);

    for i in 1..=3 {
        save(&pb, &config(i, &base), Save::InPlace);
        wait_applied(&pb, i);
        let body = wait_metric(metrics, "patchbay_config_generation", 1.0 + i as f64);
        assert_eq!(
            sample(&body, r#"patchbay_reloads_total{result="applied"}"#),
            Some(i as f64)
        );
        assert_eq!(sample(&body, count), Some(i as f64), "{body}");
        let total = sample(&body, sum).expect("histogram sum");
        assert!(
            total > 0.0 && total / (i as f64) < 5.0,
            "save-to-applied sum {total} over {i} reloads:\n{body}"
        );
    }

    save(&pb, "version: 1\nchannels: [\n", Save::InPlace);
    wait_count(&pb, INVALID, 1);
    let body = wait_metric(metrics, r#"patchbay_reloads_total{result="invalid"}"#, 1.0);
    assert_eq!(sample(&body, "patchbay_config_generation"), Some(4.0));
    assert_eq!(sample(&body, count), Some(3.0));

    let holder = UdpSocket::bind("127.0.0.1:0").expect("hold a port");
    let held = format!(
        "{base}  extra:\n    kind: udp\n    listen: {}\n",
        holder.local_addr().unwrap()
    );
    save(&pb, &config(3, &held), Save::InPlace);
    wait_count(&pb, ROLLED_BACK, 1);
    let body = wait_metric(
        metrics,
        r#"patchbay_reloads_total{result="rolled_back"}"#,
        1.0,
    );
    assert_eq!(sample(&body, "patchbay_config_generation"), Some(4.0));
    assert_eq!(
        sample(&body, r#"patchbay_reloads_total{result="applied"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&body, r#"patchbay_reloads_total{result="invalid"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&body, count), Some(3.0));
    eprintln!(
        "live_yaml: metrics: mean save-to-applied {:.1} ms over 3 reloads",
        1000.0 * sample(&body, sum).unwrap_or(0.0) / 3.0
    );
    record_times("metrics", &pb);
    drop(holder);
}
