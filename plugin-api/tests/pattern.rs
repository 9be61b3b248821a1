//! The OSC address-pattern matcher: spec cases, captures, compile errors, hostile patterns,
//! rosc's discrepancies, and property tests against a `regex` translation of the pattern.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::pattern::{has_pattern_syntax, Captures, Pattern, PatternError};
use proptest::prelude::*;

fn compile(pattern: &str) -> Pattern {
    Pattern::compile(pattern).unwrap_or_else(|e| panic!("{pattern:?} should compile: {e}"))
}

/// The capture texts of a match, or `None`.
fn capture_texts(pattern: &str, address: &str) -> Option<Vec<String>> {
    let p = compile(pattern);
    let mut caps = Captures::new();
    if !p.captures(address, &mut caps) {
        return None;
    }
    assert_eq!(
        caps.spans.len(),
        p.capture_count(),
        "{pattern:?} on {address:?}"
    );
    Some(
        caps.spans
            .iter()
            .map(|&(s, e)| address[s..e].to_string())
            .collect(),
    )
}

/// Counts this thread's heap allocations, to check `is_match` (and a warmed-up `captures`) stays
/// off the heap.
struct Counting;

thread_local! {
    // Per thread, so the harness's other test threads do not disturb the count.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCS.with(|c| c.get())
}

#[test]
fn spec_table() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, bool)] = &[
        // Literals: exact, case-sensitive, whole address.
        ("/a/b", "/a/b", true),
        ("/a/b", "/a/B", false),
        ("/a/b", "/a/b/", false),
        ("/a/b", "/a", false),
        ("/A", "/a", false),
        ("/a,b#c", "/a,b#c", true),
        ("/", "/", true),
        // `?`: exactly one character, never '/'.
        ("/a/?", "/a/x", true),
        ("/a/?", "/a/é", true),
        ("/a/?", "/a/", false),
        ("/a/?", "/a/xy", false),
        ("/a?b", "/a/b", false),
        ("/??", "/ab", true),
        ("/??", "/a", false),
        // `*`: zero or more, never across '/'.
        ("/a/*", "/a/", true),
        ("/a/*", "/a/xyz", true),
        ("/a/*", "/a/x/y", false),
        ("/a*", "/a", true),
        ("/a*/b", "/a/b", true),
        ("/a*b", "/ab", true),
        ("/a*b", "/axyzb", true),
        ("/a*b", "/ax/b", false),
        ("/a*b", "/abc", false),
        ("/*", "/", true),
        ("/*", "/a/b", false),
        ("/*/*", "/a/b", true),
        ("/*/*", "/a", false),
        ("/*a*a*b", "/aab", true),
        ("/*a*a*b", "/ab", false),
        ("/**", "/xy", true),
        ("/*?", "/", false),
        ("/*?", "/x", true),
        // `[...]`: one character from the set.
        ("/[abc]", "/b", true),
        ("/[abc]", "/d", false),
        ("/[abc]", "/ab", false),
        ("/[abc]", "/", false),
        ("/[a-c]", "/b", true),
        ("/[a-c]", "/d", false),
        ("/[a-cx-z]", "/y", true),
        ("/[a-cx-z]", "/m", false),
        ("/[0-9]", "/5", true),
        ("/[0-9]", "/12", false),
        ("/[a-a]", "/a", true),
        ("/[à-é]", "/è", true),
        ("/[à-é]", "/a", false),
        // `[!...]`: negation, only when first; never matches '/'.
        ("/[!a-c]", "/d", true),
        ("/[!a-c]", "/b", false),
        ("/[!a-c]", "/é", true),
        ("/x[!a]y", "/x/y", false),
        ("/[a!]", "/!", true),
        ("/[a!]", "/b", false),
        ("/[!!]", "/!", false),
        ("/[!!]", "/a", true),
        // `-` is literal first or last.
        ("/[-a]", "/-", true),
        ("/[-a]", "/a", true),
        ("/[a-]", "/-", true),
        ("/[a-]", "/a", true),
        ("/[a-]", "/b", false),
        ("/[-]", "/-", true),
        ("/[!-]", "/-", false),
        ("/[!-]", "/a", true),
        ("/[a-c-e]", "/-", true),
        ("/[a-c-e]", "/e", true),
        ("/[a-c-e]", "/d", false),
        // Other syntax characters are literal inside a class.
        ("/[*?{]", "/*", true),
        ("/[*?{]", "/{", true),
        ("/[*?{]", "/a", false),
        // `{...}`: literal alternatives, possibly empty.
        ("/{foo,bar}", "/foo", true),
        ("/{foo,bar}", "/bar", true),
        ("/{foo,bar}", "/baz", false),
        ("/{foo,bar}", "/foobar", false),
        ("/{foo,bar}", "/", false),
        ("/cue{,s}", "/cue", true),
        ("/cue{,s}", "/cues", true),
        ("/cue{,s}", "/cuess", false),
        ("/{}x", "/x", true),
        ("/{a,ab}c", "/abc", true),
        ("/{a,ab}c", "/ac", true),
        ("/{a,ab}c", "/abbc", false),
        ("/{a,ab}", "/ab", true),
        ("/{a,b}{c,d}", "/bd", true),
        ("/{a,b}{c,d}", "/bb", false),
        // `//` at the start: `/` then any number of `segment/` levels.
        ("//x", "/x", true),
        ("//x", "/a/x", true),
        ("//x", "/a/b/x", true),
        ("//x", "/a/b/y", false),
        ("//x", "/ax", false),
        ("//x", "/xa", false),
        ("//x", "/a/xa", false),
        // `//` in the middle.
        ("/a//b", "/a/b", true),
        ("/a//b", "/a/x/b", true),
        ("/a//b", "/a/x/y/b", true),
        ("/a//b", "/ab", false),
        ("/a//b", "/x/a/b", false),
        ("/a//b", "/a/x/y/bb", false),
        ("/mixer//gain", "/mixer/ch/1/gain", true),
        ("//*/gain", "/ch/gain", true),
        ("//*/gain", "/a/b/gain", true),
        ("//*/gain", "/gain", false),
        ("//a//b", "/x/a/y/z/b", true),
        ("//a//b", "/b/a", false),
        // Mixed.
        ("/lx/[0-9]/{int,col}*", "/lx/4/intensity", true),
        ("/lx/[0-9]/{int,col}*", "/lx/4/level", false),
        ("/ü/?", "/ü/é", true),
    ];
    let mut failures = Vec::new();
    for &(pattern, address, expected) in cases {
        let p = compile(pattern);
        if p.is_match(address) != expected {
            failures.push(format!("{pattern:?} on {address:?}: expected {expected}"));
        }
        // `captures` must agree with `is_match`.
        let mut caps = Captures::new();
        assert_eq!(
            p.captures(address, &mut caps),
            expected,
            "captures: {pattern:?} on {address:?}"
        );
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

#[test]
fn captures_table() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, Option<&[&str]>)] = &[
        ("/a/*", "/a/xyz", Some(&["xyz"])),
        ("/a/*", "/a/", Some(&[""])),
        ("/*", "/", Some(&[""])),
        ("/?/*", "/x/", Some(&["x", ""])),
        ("/[a-c]?", "/by", Some(&["b", "y"])),
        ("/[!a-c]", "/z", Some(&["z"])),
        // Greedy, left to right: the first `*` takes the longest span that still matches.
        ("/*-*", "/a-b-c", Some(&["a-b", "c"])),
        ("/a*a*", "/aaaa", Some(&["aa", ""])),
        ("/*a*", "/aaaa", Some(&["aaa", ""])),
        ("/*/*", "/a/b", Some(&["a", "b"])),
        ("/*?", "/abc", Some(&["ab", "c"])),
        // Alternatives: the longest one that still lets the rest match.
        ("/cue{,s}/*", "/cues/1", Some(&["s", "1"])),
        ("/cue{,s}/*", "/cue/1", Some(&["", "1"])),
        ("/{a,ab}*", "/abc", Some(&["ab", "c"])),
        ("/{a,ab}b*", "/abx", Some(&["a", "x"])),
        // `//`: the leading '/' plus the skipped levels, as many as possible.
        ("//gain", "/gain", Some(&["/"])),
        ("//gain", "/a/b/gain", Some(&["/a/b/"])),
        ("/mixer//gain", "/mixer/ch/1/gain", Some(&["/ch/1/"])),
        ("//x//y", "/x/x/y/y", Some(&["/x/", "/y/"])),
        ("//*/gain", "/a/b/gain", Some(&["/a/", "b"])),
        // Byte spans stay on character boundaries.
        ("/*é", "/aéé", Some(&["aé"])),
        ("/?/[à-é]", "/ü/è", Some(&["ü", "è"])),
        // Literal patterns have no captures.
        ("/a/b", "/a/b", Some(&[])),
        ("/a/b", "/a/c", None),
        ("/a/*", "/b/x", None),
    ];
    for &(pattern, address, expected) in cases {
        let got = capture_texts(pattern, address);
        let expected = expected.map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, expected, "{pattern:?} on {address:?}");
    }
}

#[test]
fn capture_spans_are_byte_ranges_and_buffer_is_reused() {
    let p = compile("/mixer/*/[0-9]");
    let mut caps = Captures {
        spans: Vec::with_capacity(8),
    };
    let buffer = caps.spans.as_ptr();
    assert!(p.captures("/mixer/ch/7", &mut caps));
    assert_eq!(caps.spans, vec![(7, 9), (10, 11)]);
    assert_eq!(caps.spans.as_ptr(), buffer, "the buffer was reallocated");
    assert_eq!(caps.get("/mixer/ch/7", 1), Some("ch"));
    assert_eq!(caps.get("/mixer/ch/7", 2), Some("7"));
    assert_eq!(caps.get("/mixer/ch/7", 0), None);
    assert_eq!(caps.get("/mixer/ch/7", 3), None);
    // No match: false, and the stale spans are gone.
    assert!(!p.captures("/mixer/ch/x", &mut caps));
    assert!(caps.spans.is_empty());
}

/// What a route's `/lx/sub/$1`-style rewrite does with the captures.
fn rewrite(pattern: &str, template: &[Result<&str, usize>], address: &str) -> Option<String> {
    let p = compile(pattern);
    let mut caps = Captures::new();
    if !p.captures(address, &mut caps) {
        return None;
    }
    Some(
        template
            .iter()
            .map(|part| match part {
                Ok(text) => text.to_string(),
                Err(n) => caps.get(address, *n).expect("capture exists").to_string(),
            })
            .collect(),
    )
}

#[test]
fn rewrite_templates_use_captures() {
    assert_eq!(
        rewrite("/lx/*/level", &[Ok("/lx/sub/"), Err(1)], "/lx/front/level").as_deref(),
        Some("/lx/sub/front")
    );
    assert_eq!(
        rewrite(
            "/mixer//gain",
            &[Ok("/desk"), Err(1), Ok("level")],
            "/mixer/ch/1/gain"
        )
        .as_deref(),
        Some("/desk/ch/1/level")
    );
    assert_eq!(
        rewrite(
            "/mixer//gain",
            &[Ok("/desk"), Err(1), Ok("level")],
            "/mixer/gain"
        )
        .as_deref(),
        Some("/desk/level")
    );
    assert_eq!(
        rewrite(
            "/ch/[0-9]/{mute,solo}",
            &[Ok("/"), Err(2), Ok("/"), Err(1)],
            "/ch/3/solo"
        )
        .as_deref(),
        Some("/solo/3")
    );
}

#[test]
fn capture_count_counts_every_wildcard() {
    for (pattern, count) in [
        ("/a/b", 0),
        ("/?", 1),
        ("/*", 1),
        ("/**", 2),
        ("/[a-z][!0-9]", 2),
        ("/{a,b}{,c}", 2),
        ("//a//b", 2),
        ("//?/*/[ab]/{x,y}", 5),
    ] {
        assert_eq!(compile(pattern).capture_count(), count, "{pattern:?}");
    }
}

#[test]
fn literal_patterns() {
    for literal in ["/", "/a", "/mixer/ch/1/gain", "/a,b#c", "/ü/é", "/a/"] {
        let p = compile(literal);
        assert!(p.is_literal(), "{literal:?}");
        assert!(!has_pattern_syntax(literal), "{literal:?}");
        assert!(p.is_match(literal));
        assert!(!p.is_match(&format!("{literal}x")));
        assert_eq!(p.as_str(), literal);
        assert_eq!(p.to_string(), literal);
    }
    for wild in ["/?", "/*", "/[a]", "/{a}", "//a", "/a//b", "/{}"] {
        let p = compile(wild);
        assert!(!p.is_literal(), "{wild:?}");
        assert!(has_pattern_syntax(wild), "{wild:?}");
    }
    let parsed: Pattern = "/a/*".parse().expect("parses");
    assert_eq!(parsed.as_str(), "/a/*");
    assert!("nope".parse::<Pattern>().is_err());
}

#[test]
fn compile_errors_with_positions() {
    #[rustfmt::skip]
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "must start with '/'"),
        ("a/b", 0, "must start with '/'"),
        ("*/b", 0, "must start with '/'"),
        ("/a[bc", 2, "unclosed '['"),
        ("/a/[", 3, "unclosed '['"),
        ("/a{b,c", 2, "unclosed '{'"),
        ("/a]b", 2, "stray ']'"),
        ("/a}", 2, "stray '}'"),
        ("/a/b}{c}", 4, "stray '}'"),
        ("/{a{b}}", 3, "nested '{'"),
        ("/[]", 1, "empty character class"),
        ("/x[!]", 2, "empty character class"),
        ("/[z-a]", 2, "reversed range 'z-a'"),
        ("/[ab9-0]", 4, "reversed range '9-0'"),
        ("/[a/b]", 3, "'/' inside '[...]'"),
        ("/[a-/]", 4, "'/' inside '[...]'"),
        ("/x[ab/cd", 5, "'/' inside '[...]'"),
        ("/{a/b}", 3, "'/' inside '{...}'"),
        ("/{a*}", 3, "'*' inside '{...}'"),
        ("/{a,?}", 4, "'?' inside '{...}'"),
        ("/{[a]}", 2, "'[' inside '{...}'"),
        ("/a///b", 4, "three '/' in a row"),
        ("///b", 2, "three '/' in a row"),
        ("/a//", 2, "'//' at the end"),
        ("//", 0, "'//' at the end"),
        // Positions count characters, not bytes.
        ("/é[", 2, "unclosed '['"),
        ("/éé]", 3, "stray ']'"),
    ];
    for &(pattern, position, fragment) in cases {
        let err = Pattern::compile(pattern).expect_err(pattern);
        assert_eq!(err.position, position, "{pattern:?}: {err}");
        assert!(
            err.message.contains(fragment),
            "{pattern:?}: {err:?} should mention {fragment:?}"
        );
    }
    let err = Pattern::compile("/a[bc").unwrap_err();
    assert_eq!(
        err,
        PatternError {
            position: 2,
            message: "unclosed '[': missing ']'".into()
        }
    );
    assert_eq!(err.to_string(), "at character 2: unclosed '[': missing ']'");
}

/// A loose smoke guard only; the real guarantee is the algorithm (no backtracking).
const SMOKE_BOUND: Duration = Duration::from_secs(2);

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < SMOKE_BOUND, "{what} took {took:?}");
    out
}

#[test]
fn hostile_stars_finish() {
    let pattern = compile(&format!("/{}*b", "*a".repeat(10)));
    let no = format!("/{}", "a".repeat(10_000));
    let yes = format!("{no}b");
    let mut caps = Captures::new();
    timed("stars, no match", || assert!(!pattern.is_match(&no)));
    timed("stars, match", || assert!(pattern.is_match(&yes)));
    timed("stars, captures", || {
        assert!(!pattern.captures(&no, &mut caps))
    });
    timed("stars, captures match", || {
        assert!(pattern.captures(&yes, &mut caps))
    });
    // Greedy: the first `*` took everything but the nine `a`s the rest needs.
    assert_eq!(caps.spans[0], (1, 1 + 10_000 - 10));
    assert_eq!(caps.spans.len(), 11);
}

#[test]
fn hostile_alternatives_finish() {
    let pattern = compile(&format!("/{}", "{a,aa,aaa}".repeat(20)));
    let long = format!("/{}", "a".repeat(10_000));
    let mut caps = Captures::new();
    timed("alternatives, no match", || {
        assert!(!pattern.is_match(&long))
    });
    timed("alternatives, captures", || {
        assert!(!pattern.captures(&long, &mut caps))
    });
    let fits = format!("/{}", "a".repeat(59));
    timed("alternatives, match", || {
        assert!(pattern.captures(&fits, &mut caps))
    });
    // Longest first, left to right: 19 × "aaa" then "aa".
    assert!(caps.spans[..19].iter().all(|&(s, e)| e - s == 3));
    assert_eq!(caps.spans[19].1 - caps.spans[19].0, 2);
    assert!(!pattern.is_match(&format!("/{}", "a".repeat(61))));
    assert!(!pattern.is_match(&format!("/{}", "a".repeat(19))));
}

#[test]
fn hostile_levels_finish() {
    let pattern = compile("//a//a//a//a//b");
    let no = "/a".repeat(5_000);
    let yes = format!("{no}/b");
    let mut caps = Captures::new();
    timed("levels, no match", || assert!(!pattern.is_match(&no)));
    timed("levels, match", || assert!(pattern.is_match(&yes)));
    timed("levels, captures", || {
        assert!(pattern.captures(&yes, &mut caps))
    });
    // Greedy: the first `//` skips all levels but the three `a/`s the rest needs.
    assert_eq!(caps.spans[0], (0, yes.len() - "a/a/a/b".len() - 2));
    let many_q = compile(&format!("/{}*", "?".repeat(50)));
    timed("question marks", || {
        assert!(many_q.is_match(&format!("/{}", "x".repeat(10_000))))
    });
}

#[test]
fn large_patterns_fall_back_to_the_heap() {
    // Well over the 256 inline instructions.
    let pattern = compile(&format!("/{}", "[ab]".repeat(120)));
    assert!(pattern.is_match(&format!("/{}", "ab".repeat(60))));
    assert!(!pattern.is_match(&format!("/{}c", "ab".repeat(59))));
    assert!(!pattern.is_match(&format!("/{}", "ab".repeat(61))));
    let mut caps = Captures::new();
    assert!(pattern.captures(&format!("/{}", "ba".repeat(60)), &mut caps));
    assert_eq!(caps.spans.len(), 120);
    assert_eq!(caps.spans[119], (120, 121));
    let alts: Vec<String> = (0..300).map(|i| format!("n{i}")).collect();
    let pattern = compile(&format!("/x/{{{}}}/*", alts.join(",")));
    assert!(pattern.is_match("/x/n299/y"));
    assert!(pattern.is_match("/x/n0/"));
    assert!(!pattern.is_match("/x/n300/y"));
    assert!(pattern.captures("/x/n17/yz", &mut caps));
    assert_eq!(caps.spans, vec![(3, 6), (7, 9)]);
}

#[test]
fn matching_stays_off_the_heap() {
    let patterns: Vec<Pattern> = [
        "/mixer/ch/1/gain",
        "/mixer/ch/*/gain",
        "/lx/[0-9]/{intensity,color}*",
        "//gain",
        "/a//b/?/[!x-z]",
        "/*a*a*a*a*a*a*a*a*a*a*b",
    ]
    .iter()
    .map(|p| compile(p))
    .collect();
    let addresses = [
        "/mixer/ch/1/gain",
        "/mixer/ch/12/gain",
        "/lx/4/intensity",
        "/a/x/y/b/q/w",
        "/aaaaaaaaaaaaaaaaaaaaaaaaaab",
        "/nothing",
    ];
    let mut caps = Captures {
        spans: Vec::with_capacity(16),
    };
    // Warm up the thread-local Pike VM scratch.
    for p in &patterns {
        for a in addresses {
            p.captures(a, &mut caps);
        }
    }
    let before = allocations();
    let mut matched = 0;
    for p in &patterns {
        for a in addresses {
            matched += usize::from(p.is_match(a));
        }
    }
    assert_eq!(allocations(), before, "is_match allocated");
    let before = allocations();
    for p in &patterns {
        for a in addresses {
            matched -= usize::from(p.captures(a, &mut caps));
        }
    }
    assert_eq!(allocations(), before, "a warmed-up captures allocated");
    assert_eq!(matched, 0, "is_match and captures disagree");
    // The counter does see allocations: a pattern over the inline limit takes the heap path.
    let big = compile(&format!("/{}", "[ab]".repeat(120)));
    let before = allocations();
    assert!(big.is_match(&format!("/{}", "a".repeat(120))));
    assert!(allocations() > before);
}

#[test]
fn patterns_are_shareable_across_threads() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_traits::<Pattern>();
    assert_traits::<Captures>();
    assert_traits::<PatternError>();
    let pattern = std::sync::Arc::new(compile("/ch/*/{mute,solo}"));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let pattern = pattern.clone();
            std::thread::spawn(move || {
                let mut caps = Captures::new();
                for n in 0..200 {
                    let address = format!("/ch/{i}x{n}/solo");
                    assert!(pattern.captures(&address, &mut caps));
                    assert_eq!(caps.get(&address, 1), Some(format!("{i}x{n}").as_str()));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let cloned = pattern.as_ref().clone();
    assert!(cloned.is_match("/ch/1/mute"));
    assert!(format!("{cloned:?}").contains("/ch/*/{mute,solo}"));
}

// ---------------------------------------------------------------------------------------------
// rosc 0.11's Matcher is not spec-exact: each discrepancy the module docs list, demonstrated.

mod rosc_discrepancies {
    use super::compile;
    use rosc::address::{Matcher, OscAddress};

    /// `None` when rosc rejects the pattern.
    fn rosc_matches(pattern: &str, address: &str) -> Option<bool> {
        let matcher = Matcher::new(pattern).ok()?;
        Some(matcher.match_address(&OscAddress::new(address.to_string()).expect("valid address")))
    }

    #[test]
    fn class_matches_several_characters() {
        assert_eq!(rosc_matches("/osc/[0-9]", "/osc/12"), Some(true));
        assert!(!compile("/osc/[0-9]").is_match("/osc/12"));
    }

    #[test]
    fn negated_class_crosses_slash() {
        assert_eq!(rosc_matches("/[!a]", "/b/c"), Some(true));
        assert!(!compile("/[!a]").is_match("/b/c"));
    }

    #[test]
    fn star_at_part_end_needs_a_character() {
        assert_eq!(rosc_matches("/foo*", "/foo"), Some(false));
        assert!(compile("/foo*").is_match("/foo"));
        assert_eq!(rosc_matches("/a*/b", "/a/b"), Some(false));
        assert!(compile("/a*/b").is_match("/a/b"));
    }

    #[test]
    fn star_does_not_backtrack() {
        // rosc's `*` jumps to the last `a`, and then `?` has nothing left.
        assert_eq!(rosc_matches("/*a?", "/xaa"), Some(false));
        assert!(compile("/*a?").is_match("/xaa"));
    }

    #[test]
    fn alternatives_do_not_backtrack() {
        // rosc commits to `a`, the first alternative that matches, and `b` is left over.
        assert_eq!(rosc_matches("/{a,ab}", "/ab"), Some(false));
        assert!(compile("/{a,ab}").is_match("/ab"));
    }

    #[test]
    fn no_osc_1_1_double_slash() {
        assert_eq!(rosc_matches("//x", "/a/x"), None);
        assert_eq!(rosc_matches("/a//x", "/a/b/x"), None);
        assert!(compile("//x").is_match("/a/x"));
        assert!(compile("/a//x").is_match("/a/b/x"));
    }

    #[test]
    fn empty_alternative_and_single_character_range_rejected() {
        assert_eq!(rosc_matches("/cue{,s}", "/cue"), None);
        assert!(compile("/cue{,s}").is_match("/cue"));
        assert_eq!(rosc_matches("/[a-a]", "/a"), None);
        assert!(compile("/[a-a]").is_match("/a"));
    }

    #[test]
    fn where_rosc_agrees() {
        // Sanity check of the harness: plain cases agree.
        for (pattern, address) in [
            ("/a/*/c", "/a/b/c"),
            ("/a/[0-9]", "/a/7"),
            ("/{x,y}", "/y"),
            ("/a", "/b"),
        ] {
            assert_eq!(
                rosc_matches(pattern, address),
                Some(compile(pattern).is_match(address)),
                "{pattern} {address}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests against a reference: the pattern translated to an anchored `regex`.

/// A wildcard-or-literal inside one address part.
#[derive(Debug, Clone)]
enum Tok {
    Lit(String),
    Any,
    Star,
    Class {
        negated: bool,
        dash_first: bool,
        items: Vec<(char, char)>,
        bang: bool,
        dash_last: bool,
    },
    Alt(Vec<String>),
}

/// A pattern: parts, each introduced by `/` (false) or `//` (true).
#[derive(Debug, Clone)]
struct Pat {
    parts: Vec<(bool, Vec<Tok>)>,
}

const PART_CHARS: &[char] = &['a', 'b', 'c', 'é'];

fn part_char() -> impl Strategy<Value = char> {
    prop::sample::select(PART_CHARS)
}

fn tok() -> impl Strategy<Value = Tok> {
    let item = (part_char(), part_char()).prop_map(|(x, y)| if x <= y { (x, y) } else { (y, x) });
    let single = part_char().prop_map(|c| (c, c));
    prop_oneof![
        3 => prop::collection::vec(part_char(), 1..3).prop_map(|cs| Tok::Lit(cs.into_iter().collect())),
        2 => Just(Tok::Any),
        3 => Just(Tok::Star),
        2 => (any::<bool>(), any::<bool>(), prop::collection::vec(prop_oneof![item, single], 1..3), any::<bool>(), any::<bool>())
            .prop_map(|(negated, dash_first, items, bang, dash_last)| Tok::Class { negated, dash_first, items, bang, dash_last }),
        2 => prop::collection::vec(prop::sample::select(&["", "a", "b", "ab", "é", "ba"][..]), 1..4)
            .prop_map(|alts| Tok::Alt(alts.into_iter().map(String::from).collect())),
    ]
}

fn pat() -> impl Strategy<Value = Pat> {
    prop::collection::vec(
        (
            prop::bool::weighted(0.3),
            prop::collection::vec(tok(), 1..4),
        ),
        1..4,
    )
    .prop_map(|parts| Pat { parts })
}

impl Pat {
    fn osc(&self) -> String {
        let mut s = String::new();
        for (levels, toks) in &self.parts {
            s.push_str(if *levels { "//" } else { "/" });
            for t in toks {
                match t {
                    Tok::Lit(l) => s.push_str(l),
                    Tok::Any => s.push('?'),
                    Tok::Star => s.push('*'),
                    Tok::Class {
                        negated,
                        dash_first,
                        items,
                        bang,
                        dash_last,
                    } => {
                        s.push('[');
                        if *negated {
                            s.push('!');
                        }
                        if *dash_first {
                            s.push('-');
                        }
                        for &(lo, hi) in items {
                            s.push(lo);
                            if lo != hi {
                                s.push('-');
                                s.push(hi);
                            }
                        }
                        if *bang {
                            s.push('!');
                        }
                        if *dash_last {
                            s.push('-');
                        }
                        s.push(']');
                    }
                    Tok::Alt(alts) => {
                        s.push('{');
                        s.push_str(&alts.join(","));
                        s.push('}');
                    }
                }
            }
        }
        s
    }

    /// The reference: an anchored regex with one group per wildcard, derived from the semantics
    /// (greedy `*`, longest alternative first, `//` = `/(?:[^/]*/)*`).
    fn regex(&self) -> regex::Regex {
        let hex = |c: char| format!("\\x{{{:x}}}", c as u32);
        let mut r = String::from(r"\A");
        for (levels, toks) in &self.parts {
            r.push_str(if *levels { "(/(?:[^/]*/)*)" } else { "/" });
            for t in toks {
                match t {
                    Tok::Lit(l) => r.push_str(&regex::escape(l)),
                    Tok::Any => r.push_str("([^/])"),
                    Tok::Star => r.push_str("([^/]*)"),
                    Tok::Class {
                        negated,
                        dash_first,
                        items,
                        bang,
                        dash_last,
                    } => {
                        r.push_str(if *negated { "([^/" } else { "([" });
                        for &(lo, hi) in items {
                            r.push_str(&format!("{}-{}", hex(lo), hex(hi)));
                        }
                        if *dash_first || *dash_last {
                            r.push_str(r"\-");
                        }
                        if *bang {
                            r.push('!');
                        }
                        r.push_str("])");
                    }
                    Tok::Alt(alts) => {
                        let mut sorted = alts.clone();
                        sorted.sort_by_key(|a| std::cmp::Reverse(a.len()));
                        let escaped: Vec<String> =
                            sorted.iter().map(|a| regex::escape(a)).collect();
                        r.push_str(&format!("({})", escaped.join("|")));
                    }
                }
            }
        }
        r.push_str(r"\z");
        regex::Regex::new(&r).unwrap_or_else(|e| panic!("reference regex {r:?}: {e}"))
    }

    /// An address built by choosing, for each wildcard, something it can match (classes may be
    /// unsatisfiable from our candidates, so not every instance matches).
    fn instance(&self, choices: &[u8]) -> String {
        let mut choice = choices.iter().cycle().copied();
        let mut pick = |n: usize| choice.next().unwrap_or(0) as usize % n;
        let candidates = ['a', 'b', 'c', 'd', 'é', '-', '!'];
        let mut s = String::new();
        for (levels, toks) in &self.parts {
            s.push('/');
            if *levels {
                for _ in 0..pick(3) {
                    for _ in 0..pick(3) {
                        s.push(PART_CHARS[pick(PART_CHARS.len())]);
                    }
                    s.push('/');
                }
            }
            for t in toks {
                match t {
                    Tok::Lit(l) => s.push_str(l),
                    Tok::Any => s.push(PART_CHARS[pick(PART_CHARS.len())]),
                    Tok::Star => {
                        for _ in 0..pick(4) {
                            s.push(PART_CHARS[pick(PART_CHARS.len())]);
                        }
                    }
                    Tok::Class { .. } => s.push(candidates[pick(candidates.len())]),
                    Tok::Alt(alts) => s.push_str(&alts[pick(alts.len())]),
                }
            }
        }
        s
    }

    /// The pattern's pieces in order: `Ok(literal text)` or `Err(wildcard regex)`.
    fn pieces(&self) -> Vec<Result<String, regex::Regex>> {
        let whole = |r: &str| regex::Regex::new(&format!(r"\A(?:{r})\z")).expect("piece regex");
        let mut out = Vec::new();
        for (levels, toks) in &self.parts {
            out.push(if *levels {
                Err(whole("/(?:[^/]*/)*"))
            } else {
                Ok("/".to_string())
            });
            for t in toks {
                out.push(match t {
                    Tok::Lit(l) => Ok(l.clone()),
                    Tok::Any => Err(whole("[^/]")),
                    Tok::Star => Err(whole("[^/]*")),
                    Tok::Class { .. } => Err(whole("[^/]")), // membership is checked by the reference
                    Tok::Alt(alts) => Err(whole(
                        &alts
                            .iter()
                            .map(|a| regex::escape(a))
                            .collect::<Vec<_>>()
                            .join("|"),
                    )),
                });
            }
        }
        out
    }
}

fn address_for(p: &Pat, mode: u8, choices: &[u8], random: &str) -> String {
    match mode % 3 {
        0 => p.instance(choices),
        1 => {
            // One random edit of an instance: near misses.
            let mut chars: Vec<char> = p.instance(choices).chars().collect();
            let at = choices.first().copied().unwrap_or(0) as usize % (chars.len() + 1);
            let c = ['a', 'b', '/', 'é'][choices.get(1).copied().unwrap_or(0) as usize % 4];
            match choices.get(2).copied().unwrap_or(0) % 3 {
                0 => chars.insert(at, c),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ if at < chars.len() => chars[at] = c,
                _ => chars.push(c),
            }
            chars.into_iter().collect()
        }
        _ => random.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_the_regex_reference(
        p in pat(),
        mode in any::<u8>(),
        choices in prop::collection::vec(any::<u8>(), 1..24),
        random in "/[ab/é]{0,10}",
    ) {
        let source = p.osc();
        let pattern = Pattern::compile(&source).map_err(|e| TestCaseError::fail(format!("{source:?}: {e}")))?;
        let reference = p.regex();
        let address = address_for(&p, mode, &choices, &random);

        let expected = reference.captures(&address);
        prop_assert_eq!(pattern.is_match(&address), expected.is_some(), "is_match {:?} on {:?}", source, address);
        let mut caps = Captures::new();
        prop_assert_eq!(pattern.captures(&address, &mut caps), expected.is_some());
        let Some(expected) = expected else { return Ok(()) };

        // Same spans as the reference's groups.
        let want: Vec<(usize, usize)> = expected.iter().skip(1).map(|g| {
            let g = g.expect("every group takes part");
            (g.start(), g.end())
        }).collect();
        prop_assert_eq!(&caps.spans, &want, "captures {:?} on {:?}", source, address);

        // The literal pieces and the captures re-assemble the address, each capture matching its
        // own wildcard.
        let mut pos = 0;
        let mut spans = caps.spans.iter();
        for piece in p.pieces() {
            match piece {
                Ok(text) => {
                    prop_assert!(address[pos..].starts_with(&text), "{:?} on {:?} at {}", source, address, pos);
                    pos += text.len();
                }
                Err(wildcard) => {
                    let &(start, end) = spans.next().expect("a span per wildcard");
                    prop_assert_eq!(start, pos);
                    prop_assert!(wildcard.is_match(&address[start..end]), "{:?} on {:?}: {:?}", source, address, &address[start..end]);
                    pos = end;
                }
            }
        }
        prop_assert!(spans.next().is_none());
        prop_assert_eq!(pos, address.len());
    }

    #[test]
    fn compile_never_panics_and_literal_means_no_syntax(source in "[/ab!,{}\\[\\]*?-]{0,12}") {
        match Pattern::compile(&source) {
            Ok(pattern) => {
                prop_assert_eq!(pattern.is_literal(), !has_pattern_syntax(&source));
                prop_assert_eq!(pattern.is_literal(), pattern.capture_count() == 0);
                if pattern.is_literal() {
                    prop_assert!(pattern.is_match(&source));
                }
                // Matching arbitrary strings never panics either.
                let _ = pattern.is_match(&source);
                let _ = pattern.captures(&source, &mut Captures::new());
            }
            Err(e) => prop_assert!(e.position <= source.chars().count(), "{e}"),
        }
    }
}
