//! OSC address patterns: a spec-exact matcher that runs in time linear in the address.
//!
//! # Syntax
//!
//! A pattern starts with `/`. Every character matches itself (case-sensitively) except:
//!
//! | syntax      | matches                                                                    |
//! |-------------|----------------------------------------------------------------------------|
//! | `?`         | exactly one character other than `/`                                       |
//! | `*`         | zero or more characters, none of them `/`                                  |
//! | `[abc]`     | one character from the set; `a-z` is an inclusive range                    |
//! | `[!a-z]`    | one character *not* in the set (`!` negates only as the first character)   |
//! | `{foo,bar}` | one of the literal strings; alternatives may be empty (`/cue{,s}`)         |
//! | `//`        | (OSC 1.1) any number of levels: `/` then zero or more `segment/` groups    |
//!
//! Details: a `-` that cannot form a range (first or last in the class, or right after a range) is
//! a literal `-`; `!` that is not first is a literal `!`; other characters inside `[...]`, including
//! `[`, `{`, `}`, `*` and `?`, are literal members. A class never matches `/`, not even negated.
//! `{}` is one empty alternative. `//` may start the pattern (`//gain` matches `/gain`, `/a/gain`,
//! `/a/b/gain`) or sit in the middle (`/mixer//gain`); the levels it skips are `[^/]*/` each, so
//! it follows the regex `/(?:[^/]*/)*`.
//!
//! # Compile errors
//!
//! [`PatternError::position`] is the 0-based index, counted in characters (not bytes), of the
//! offending character in the pattern, so `" ".repeat(position) + "^"` points at it. Errors: a
//! pattern not starting with `/`; unclosed `[` or `{` (position of the opening bracket); stray `]`
//! or `}`; `{` nested in `{...}`; `?`, `*`, `[` or `]` inside `{...}` (alternatives are literal
//! strings); an empty class `[]` or `[!]`; a reversed range such as `[z-a]` (an operator typo, so
//! we refuse it rather than silently matching nothing); `/` inside `[...]` or `{...}`; three or
//! more `/` in a row (`//` already spans any number of levels); and `//` at the very end.
//!
//! # Captures
//!
//! Every wildcard (`?`, `*`, each `[...]`, each `{...}`, each `//`) is one capture, numbered left to
//! right from 1 (`$1`, `$2`, ... in rewrite templates). A capture is the byte range of the address
//! that the wildcard matched, so the address is exactly the pattern with each wildcard replaced by
//! its capture text. For `//` the capture includes the leading `/` and the trailing `/` of the
//! skipped levels: `//gain` against `/a/b/gain` captures `/a/b/`, against `/gain` it captures `/`
//! (so `/mixer//gain` with template `/desk$1level` turns `/mixer/ch/1/gain` into
//! `/desk/ch/1/level`).
//!
//! When an address can be split in several ways (`/*-*` against `/a-b-c`), the captures are the
//! *greedy, left to right* ones: the first wildcard takes the longest span that still lets the
//! rest of the pattern match, then the second, and so on. So `/*-*` gives `$1 = a-b`, `$2 = c`,
//! `{a,ab}` prefers `ab` over `a` when both fit, and `//` skips as many levels as it can. This is
//! what a backtracking matcher with greedy `*` and longest-first alternatives would pick (and
//! exactly what the `regex` crate picks for the translated pattern, which our tests check).
//!
//! # Cost
//!
//! A pattern compiles into a Thompson NFA with O(pattern length) instructions. [`Pattern::is_match`]
//! simulates it in lock step, O(address length × pattern length), with no backtracking, so hostile
//! patterns such as `/*a*a*a*a*b` or `/{a,aa,aaa}{a,aa,aaa}...` against long addresses stay fast.
//! It does not touch the heap for patterns of up to 256 instructions (a literal character is one;
//! with their capture marks `?` and a class are three, `*` five, `//` nine, `{...}` two plus its
//! characters plus two per extra alternative): its state lives in stack arrays sized to the
//! program; above that it allocates two small vectors per call.
//! [`Pattern::captures`] is a Pike VM (the same simulation carrying capture slots), in
//! O(address × pattern × captures); its thread lists are thread-local scratch, reused across calls
//! and sized to the largest pattern seen (dropped again after a call that needed over 64K slots),
//! so once warmed up it does not allocate either. A literal pattern (no wildcard;
//! [`Pattern::is_literal`]) is matched by plain string equality; any other pattern first checks its
//! literal prefix and suffix, and simulates only the part of the address between them.
//!
//! # Why not `rosc::address::Matcher`
//!
//! rosc 0.11's matcher is not spec-exact (each point is demonstrated by a test in
//! `plugin-api/tests/pattern.rs`):
//!
//! - A character class matches one *or more* characters (`is_a`/`is_not`): `/osc/[0-9]` matches
//!   `/osc/12`, and a negated class can even run across `/`: `/[!a]` matches `/b/c`.
//! - `*` at the end of a part must match at least one character: `/foo*` does not match `/foo`, nor
//!   `/a*/b` match `/a/b`.
//! - No backtracking: `*` commits to the *last* place its next component matches, and `{...}` to
//!   the first alternative that matches, so `/*a?` misses `/xaya` and `/{a,ab}` misses `/ab`.
//! - No OSC 1.1 `//`: `//x` is rejected as an invalid pattern.
//! - Empty alternatives (`/cue{,s}`) and single-character ranges (`[a-a]`) are rejected.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

/// Why a pattern failed to compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {position}: {message}")]
pub struct PatternError {
    /// 0-based index of the offending character, counted in characters (not bytes).
    pub position: usize,
    pub message: String,
}

impl PatternError {
    fn new(position: usize, message: impl Into<String>) -> Self {
        PatternError {
            position,
            message: message.into(),
        }
    }
}

/// A compiled OSC address pattern. Cheap to share (`Send + Sync`); matching never mutates it.
/// `Debug` shows the source only (`Pattern("/a/*")`), not the compiled program.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    captures: usize,
    /// `None` for a literal pattern (no wildcard): matched by string equality.
    program: Option<Program>,
    /// The pattern is `PREFIX*SUFFIX` (one `*` between literal text, the commonest route shape):
    /// matched by the affix checks and a scan for `/`, without running the automaton.
    star_only: bool,
}

/// Byte ranges in the address matched by each wildcard of the pattern, in pattern order ($1, $2, ...).
///
/// `spans[0]` is `$1`; each span is a half-open `(start, end)` byte range, `&address[start..end]`.
#[derive(Debug, Default, Clone)]
pub struct Captures {
    pub spans: Vec<(usize, usize)>,
}

impl Captures {
    pub fn new() -> Self {
        Captures::default()
    }

    /// The text of capture `$n` (1-based, as in rewrite templates) in `address`, the address these
    /// captures were taken from.
    pub fn get<'a>(&self, address: &'a str, n: usize) -> Option<&'a str> {
        let &(start, end) = self.spans.get(n.checked_sub(1)?)?;
        address.get(start..end)
    }
}

impl Pattern {
    /// Compiles `pattern`; see the [module docs](self) for the syntax and the errors.
    pub fn compile(pattern: &str) -> Result<Pattern, PatternError> {
        let tokens = parse(pattern)?;
        let captures = tokens
            .iter()
            .filter(|t| !matches!(t, Token::Lit(_)))
            .count();
        let program = (captures > 0).then(|| Program::new(&tokens));
        let star_only = program
            .as_ref()
            .is_some_and(|p| pattern.get(p.prefix_len..pattern.len() - p.suffix_len) == Some("*"));
        Ok(Pattern {
            source: pattern.to_string(),
            captures,
            program,
            star_only,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern has no wildcard at all (a plain address).
    pub fn is_literal(&self) -> bool {
        self.program.is_none()
    }

    /// How many captures a match produces.
    pub fn capture_count(&self) -> usize {
        self.captures
    }

    /// Whether `address` matches the whole pattern. No heap allocation for patterns of up to 256
    /// NFA instructions.
    pub fn is_match(&self, address: &str) -> bool {
        let Some(prog) = &self.program else {
            return self.source == address;
        };
        if !prog.affixes_match(&self.source, address) {
            return false;
        }
        if self.star_only {
            let middle = &address.as_bytes()[prog.prefix_len..address.len() - prog.suffix_len];
            return !middle.contains(&b'/');
        }
        // Stack buffers sized to the program (zeroing them is part of the cost of a call).
        match prog.insts.len() {
            0..=32 => prog.is_match_inline::<32, 1>(address),
            33..=64 => prog.is_match_inline::<64, 1>(address),
            65..=INLINE_INSTS => {
                prog.is_match_inline::<INLINE_INSTS, { INLINE_INSTS / 64 }>(address)
            }
            n => {
                let mut lists = vec![0u32; 3 * n];
                let mut seen = vec![0u64; n.div_ceil(64)];
                let (cur, rest) = lists.split_at_mut(n);
                let (next, stack) = rest.split_at_mut(n);
                prog.is_match(address, cur, next, stack, &mut seen)
            }
        }
    }

    /// On a match, fills `caps` (reusing its allocation) and returns true. On no match, returns
    /// false and leaves `caps` empty. See the [module docs](self#captures) for which split is chosen
    /// when several are possible.
    pub fn captures(&self, address: &str, caps: &mut Captures) -> bool {
        caps.spans.clear();
        let Some(prog) = &self.program else {
            return self.source == address;
        };
        if !prog.affixes_match(&self.source, address) {
            return false;
        }
        let nslots = 2 * self.captures;
        let shared = SCRATCH.try_with(|cell| {
            let mut scratch = cell.try_borrow_mut().ok()?;
            let matched = prog.fill_captures(address, nslots, &mut scratch, caps);
            if scratch.footprint() > MAX_KEPT_SCRATCH {
                *scratch = Scratch::default();
            }
            Some(matched)
        });
        // Only during thread teardown (or re-entrantly, which cannot happen) is the shared scratch
        // unavailable: use a private one then.
        match shared {
            Ok(Some(matched)) => matched,
            _ => prog.fill_captures(address, nslots, &mut Scratch::default(), caps),
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.source).finish()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::compile(s)
    }
}

/// True when `address` contains any pattern syntax (`?*[]{}` or `//`).
pub fn has_pattern_syntax(address: &str) -> bool {
    address
        .bytes()
        .any(|b| matches!(b, b'?' | b'*' | b'[' | b']' | b'{' | b'}'))
        || address.contains("//")
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Debug)]
enum Token {
    Lit(char),
    /// `?`
    Any,
    /// `*`
    Star,
    Class(Class),
    /// `{...}`, alternatives sorted longest first (so the greedy choice comes first), deduplicated.
    Alt(Vec<String>),
    /// `//`
    Levels,
}

/// A character class; never matches `/`.
#[derive(Debug, Clone)]
struct Class {
    negated: bool,
    /// Bit `c` set when ASCII `c` is listed (before negation).
    ascii: u128,
    /// Listed ranges that reach beyond ASCII (inclusive).
    ranges: Box<[(char, char)]>,
}

impl Class {
    fn new(negated: bool, listed: &[(char, char)]) -> Class {
        let mut ascii = 0u128;
        let mut ranges = Vec::new();
        for &(lo, hi) in listed {
            for c in (lo as u32)..=(hi as u32).min(127) {
                ascii |= 1 << c;
            }
            if hi as u32 > 127 {
                ranges.push((lo, hi));
            }
        }
        Class {
            negated,
            ascii,
            ranges: ranges.into_boxed_slice(),
        }
    }

    #[inline]
    fn matches(&self, c: char) -> bool {
        if c == '/' {
            return false;
        }
        let listed = if c.is_ascii() {
            self.ascii & (1 << c as u32) != 0
        } else {
            self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
        };
        listed != self.negated
    }
}

fn parse(src: &str) -> Result<Vec<Token>, PatternError> {
    let chars: Vec<char> = src.chars().collect();
    if chars.first() != Some(&'/') {
        return Err(PatternError::new(
            0,
            "an OSC address pattern must start with '/'",
        ));
    }
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                if chars.get(i + 2) == Some(&'/') {
                    return Err(PatternError::new(
                        i + 2,
                        "three '/' in a row: '//' already matches any number of levels",
                    ));
                }
                if i + 2 == chars.len() {
                    return Err(PatternError::new(
                        i,
                        "'//' at the end: it must be followed by an address part",
                    ));
                }
                tokens.push(Token::Levels);
                i += 2;
            }
            '?' => {
                tokens.push(Token::Any);
                i += 1;
            }
            '*' => {
                tokens.push(Token::Star);
                i += 1;
            }
            '[' => {
                let (class, next) = parse_class(&chars, i)?;
                tokens.push(Token::Class(class));
                i = next;
            }
            '{' => {
                let (alts, next) = parse_alternatives(&chars, i)?;
                tokens.push(Token::Alt(alts));
                i = next;
            }
            ']' => return Err(PatternError::new(i, "stray ']' without a matching '['")),
            '}' => return Err(PatternError::new(i, "stray '}' without a matching '{'")),
            c => {
                tokens.push(Token::Lit(c));
                i += 1;
            }
        }
    }
    Ok(tokens)
}

/// Parses the class opening at `chars[open] == '['`; returns it and the index after its `]`.
fn parse_class(chars: &[char], open: usize) -> Result<(Class, usize), PatternError> {
    let mut i = open + 1;
    let negated = chars.get(i) == Some(&'!');
    if negated {
        i += 1;
    }
    let mut listed = Vec::new();
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(PatternError::new(open, "unclosed '[': missing ']'"));
        };
        match c {
            ']' if listed.is_empty() => {
                let what = if negated {
                    "empty character class '[!]'"
                } else {
                    "empty character class '[]'"
                };
                return Err(PatternError::new(open, what));
            }
            ']' => return Ok((Class::new(negated, &listed), i + 1)),
            '/' => return Err(slash_inside(i, "[...]", ']')),
            _ => match (chars.get(i + 1), chars.get(i + 2)) {
                (Some('-'), Some(&hi)) if hi != ']' => {
                    if hi == '/' {
                        return Err(slash_inside(i + 2, "[...]", ']'));
                    }
                    if hi < c {
                        return Err(PatternError::new(
                            i,
                            format!("reversed range '{c}-{hi}' matches nothing (did you mean '{hi}-{c}'?)"),
                        ));
                    }
                    listed.push((c, hi));
                    i += 3;
                }
                _ => {
                    listed.push((c, c));
                    i += 1;
                }
            },
        }
    }
}

/// Parses the alternatives opening at `chars[open] == '{'`; returns them (longest first,
/// deduplicated) and the index after the `}`.
fn parse_alternatives(chars: &[char], open: usize) -> Result<(Vec<String>, usize), PatternError> {
    let mut alts = vec![String::new()];
    let mut i = open + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(PatternError::new(open, "unclosed '{': missing '}'"));
        };
        match c {
            '}' => break,
            ',' => alts.push(String::new()),
            '{' => return Err(PatternError::new(i, "nested '{' inside '{...}'")),
            '/' => return Err(slash_inside(i, "{...}", '}')),
            '?' | '*' | '[' | ']' => {
                return Err(PatternError::new(
                    i,
                    format!("'{c}' inside '{{...}}': alternatives are literal strings"),
                ))
            }
            _ => alts.last_mut().expect("never empty").push(c),
        }
        i += 1;
    }
    // Longest first: the priority order then gives the greedy choice. Stable, then dedup.
    alts.sort_by_key(|a| std::cmp::Reverse(a.len()));
    let mut unique: Vec<String> = Vec::with_capacity(alts.len());
    for alt in alts {
        if !unique.contains(&alt) {
            unique.push(alt);
        }
    }
    Ok((unique, i + 1))
}

fn slash_inside(position: usize, what: &str, close: char) -> PatternError {
    PatternError::new(
        position,
        format!("'/' inside '{what}' (missing '{close}'?): a wildcard never spans a '/'"),
    )
}

// ---------------------------------------------------------------------------------------------
// The NFA

/// Patterns with at most this many instructions are matched by `is_match` without the heap.
const INLINE_INSTS: usize = 256;
/// The thread-local Pike VM scratch is dropped after a call when it holds more slots than this.
const MAX_KEPT_SCRATCH: usize = 1 << 16;

#[derive(Debug, Clone, Copy)]
enum Inst {
    Char(char),
    /// Any character but `/`.
    Any,
    /// Index into `Program::classes`.
    Class(u32),
    /// Try the first target, then the second (priority order).
    Split(u32, u32),
    Jmp(u32),
    /// Record the current position in this capture slot.
    Save(u32),
    Match,
}

#[derive(Debug, Clone)]
struct Program {
    insts: Box<[Inst]>,
    classes: Box<[Class]>,
    /// First instruction after the literal prefix: the simulation starts there, at byte
    /// `prefix_len` of the address.
    start: usize,
    /// First instruction of the literal suffix (`Match` when there is none): the simulation stops
    /// `suffix_len` bytes before the end of the address and accepts if a thread is there.
    end: usize,
    /// Byte lengths of the literal prefix (`source[..prefix_len]`) and suffix.
    prefix_len: usize,
    suffix_len: usize,
}

impl Program {
    fn new(tokens: &[Token]) -> Program {
        let mut insts: Vec<Inst> = Vec::new();
        let mut classes = Vec::new();
        let mut slot = 0u32;
        let pc = |insts: &Vec<Inst>| insts.len() as u32;
        for token in tokens {
            if let Token::Lit(c) = token {
                insts.push(Inst::Char(*c));
                continue;
            }
            insts.push(Inst::Save(slot));
            match token {
                Token::Lit(_) => unreachable!(),
                Token::Any => insts.push(Inst::Any),
                Token::Star => {
                    // l: split(l+1, l+3); l+1: any; l+2: jmp l; l+3:
                    let l = pc(&insts);
                    insts.extend([Inst::Split(l + 1, l + 3), Inst::Any, Inst::Jmp(l)]);
                }
                Token::Class(class) => {
                    insts.push(Inst::Class(classes.len() as u32));
                    classes.push(class.clone());
                }
                Token::Alt(alts) => {
                    let mut jumps = Vec::new();
                    for (k, alt) in alts.iter().enumerate() {
                        let last = k + 1 == alts.len();
                        let split = pc(&insts);
                        if !last {
                            insts.push(Inst::Split(0, 0)); // patched below
                        }
                        insts.extend(alt.chars().map(Inst::Char));
                        if !last {
                            jumps.push(insts.len());
                            insts.push(Inst::Jmp(0)); // patched below
                            insts[split as usize] = Inst::Split(split + 1, pc(&insts));
                        }
                    }
                    let end = pc(&insts);
                    for j in jumps {
                        insts[j] = Inst::Jmp(end);
                    }
                }
                Token::Levels => {
                    // '/', then greedily (segment '/')*:
                    // l: split(l+1, l+6); l+1: split(l+2, l+4); l+2: any; l+3: jmp l+1;
                    // l+4: '/'; l+5: jmp l; l+6:
                    insts.push(Inst::Char('/'));
                    let l = pc(&insts);
                    insts.extend([
                        Inst::Split(l + 1, l + 6),
                        Inst::Split(l + 2, l + 4),
                        Inst::Any,
                        Inst::Jmp(l + 1),
                        Inst::Char('/'),
                        Inst::Jmp(l),
                    ]);
                }
            }
            insts.push(Inst::Save(slot + 1));
            slot += 2;
        }
        insts.push(Inst::Match);

        let lit_len = |t: &Token| match t {
            Token::Lit(c) => Some(c.len_utf8()),
            _ => None,
        };
        let start = tokens.iter().take_while(|t| lit_len(t).is_some()).count();
        let end = insts.len()
            - 1
            - tokens
                .iter()
                .rev()
                .take_while(|t| lit_len(t).is_some())
                .count();
        let prefix_len = tokens.iter().map_while(lit_len).sum();
        let suffix_len = tokens.iter().rev().map_while(lit_len).sum();
        Program {
            insts: insts.into(),
            classes: classes.into(),
            start,
            end,
            prefix_len,
            suffix_len,
        }
    }

    /// The literal prefix and suffix are necessary conditions; checking them first is cheap.
    #[inline]
    fn affixes_match(&self, source: &str, address: &str) -> bool {
        address.len() >= self.prefix_len + self.suffix_len
            && address
                .as_bytes()
                .starts_with(&source.as_bytes()[..self.prefix_len])
            && address
                .as_bytes()
                .ends_with(&source.as_bytes()[source.len() - self.suffix_len..])
    }

    #[inline]
    fn step(&self, pc: usize, c: char) -> bool {
        match self.insts[pc] {
            Inst::Char(want) => want == c,
            Inst::Any => c != '/',
            Inst::Class(k) => self.classes[k as usize].matches(c),
            _ => false,
        }
    }

    /// `is_match` with its state in stack arrays of `N >= insts.len()` entries (`W` words of bits).
    fn is_match_inline<const N: usize, const W: usize>(&self, address: &str) -> bool {
        let n = self.insts.len();
        let mut cur = [0u32; N];
        let mut next = [0u32; N];
        let mut stack = [0u32; N];
        let mut seen = [0u64; W];
        self.is_match(
            address,
            &mut cur[..n],
            &mut next[..n],
            &mut stack[..n],
            &mut seen[..n.div_ceil(64)],
        )
    }

    /// The part of the address between the literal prefix and suffix (call after
    /// `affixes_match`; both end on character boundaries, being whole characters).
    #[inline]
    fn middle<'a>(&self, address: &'a str) -> &'a str {
        &address[self.prefix_len..address.len() - self.suffix_len]
    }

    /// Lock-step NFA simulation without captures, over the middle of the address. All slices
    /// have `insts.len()` entries except `seen`, a bitset of that many bits.
    fn is_match<'a>(
        &self,
        address: &str,
        mut cur: &'a mut [u32],
        mut next: &'a mut [u32],
        stack: &mut [u32],
        seen: &mut [u64],
    ) -> bool {
        seen.fill(0);
        let mut len = self.closure(self.start, cur, 0, stack, seen);
        for c in self.middle(address).chars() {
            if len == 0 {
                return false;
            }
            seen.fill(0);
            let mut next_len = 0;
            for &pc in &cur[..len] {
                if self.step(pc as usize, c) {
                    next_len = self.closure(pc as usize + 1, next, next_len, stack, seen);
                }
            }
            std::mem::swap(&mut cur, &mut next);
            len = next_len;
        }
        cur[..len].contains(&(self.end as u32))
    }

    /// Adds to `list[len..]` the consuming instructions (and `Match`) reachable from `pc` through
    /// jumps, splits and saves, skipping those already `seen` in this step. Returns the new length.
    fn closure(
        &self,
        pc: usize,
        list: &mut [u32],
        mut len: usize,
        stack: &mut [u32],
        seen: &mut [u64],
    ) -> usize {
        // Marking on push means each instruction enters the stack at most once per step, so
        // neither `stack` nor `list` can overflow.
        let mut push = |pc: u32, stack: &mut [u32], sp: &mut usize| {
            let (word, bit) = (pc as usize / 64, 1u64 << (pc % 64));
            if seen[word] & bit == 0 {
                seen[word] |= bit;
                stack[*sp] = pc;
                *sp += 1;
            }
        };
        let mut sp = 0;
        push(pc as u32, stack, &mut sp);
        while sp > 0 {
            sp -= 1;
            let pc = stack[sp];
            match self.insts[pc as usize] {
                Inst::Jmp(to) => push(to, stack, &mut sp),
                Inst::Split(first, second) => {
                    push(second, stack, &mut sp);
                    push(first, stack, &mut sp);
                }
                Inst::Save(_) => push(pc + 1, stack, &mut sp),
                _ => {
                    list[len] = pc;
                    len += 1;
                }
            }
        }
        len
    }

    fn fill_captures(
        &self,
        address: &str,
        nslots: usize,
        scratch: &mut Scratch,
        caps: &mut Captures,
    ) -> bool {
        match self.captures(address, nslots, scratch) {
            Some(slots) => {
                caps.spans
                    .extend(slots.chunks_exact(2).map(|s| (s[0], s[1])));
                true
            }
            None => false,
        }
    }

    /// Pike VM: the same simulation, each thread carrying its capture slots, threads kept in
    /// priority order so the thread that reaches the literal suffix (or `Match`) at the end of the
    /// middle is the one with the greedy captures.
    fn captures<'s>(
        &self,
        address: &str,
        nslots: usize,
        scratch: &'s mut Scratch,
    ) -> Option<&'s [usize]> {
        let n = self.insts.len();
        scratch.prepare(n, nslots);
        let Scratch {
            cur,
            next,
            stack,
            slots,
        } = scratch;
        self.add_thread(cur, self.start, self.prefix_len, slots, stack);
        for (offset, c) in self.middle(address).char_indices() {
            if cur.len == 0 {
                return None;
            }
            let after = self.prefix_len + offset + c.len_utf8();
            next.clear();
            for k in 0..cur.len {
                let pc = cur.dense[k] as usize;
                if self.step(pc, c) {
                    slots.copy_from_slice(cur.slots_of(pc, nslots));
                    self.add_thread(next, pc + 1, after, slots, stack);
                }
            }
            std::mem::swap(cur, next);
        }
        let cur: &'s Threads = cur;
        // Threads are in priority order, but only one can be at `end`.
        cur.dense[..cur.len]
            .contains(&(self.end as u32))
            .then(|| cur.slots_of(self.end, nslots))
    }

    /// Adds the closure of `pc` to `list` in priority order, with `slots` as the thread's
    /// captures at position `pos` (restored on return).
    fn add_thread(
        &self,
        list: &mut Threads,
        pc: usize,
        pos: usize,
        slots: &mut [usize],
        stack: &mut Vec<Frame>,
    ) {
        stack.push(Frame::Explore(pc as u32));
        while let Some(frame) = stack.pop() {
            let pc = match frame {
                Frame::Restore(slot, old) => {
                    slots[slot as usize] = old;
                    continue;
                }
                Frame::Explore(pc) => pc,
            };
            if !list.insert(pc) {
                continue;
            }
            match self.insts[pc as usize] {
                Inst::Jmp(to) => stack.push(Frame::Explore(to)),
                Inst::Split(first, second) => {
                    stack.push(Frame::Explore(second));
                    stack.push(Frame::Explore(first));
                }
                Inst::Save(slot) => {
                    stack.push(Frame::Restore(slot, slots[slot as usize]));
                    slots[slot as usize] = pos;
                    stack.push(Frame::Explore(pc + 1));
                }
                _ => {
                    let nslots = slots.len();
                    list.slots[pc as usize * nslots..][..nslots].copy_from_slice(slots);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pike VM scratch

#[derive(Debug, Clone, Copy)]
enum Frame {
    Explore(u32),
    Restore(u32, usize),
}

/// A sparse set of instruction indices in insertion (= priority) order, with each member's
/// capture slots.
#[derive(Debug, Default)]
struct Threads {
    dense: Vec<u32>,
    sparse: Vec<u32>,
    len: usize,
    slots: Vec<usize>,
}

impl Threads {
    fn prepare(&mut self, n: usize, nslots: usize) {
        if self.dense.len() < n {
            self.dense.resize(n, 0);
            self.sparse.resize(n, 0);
        }
        if self.slots.len() < n * nslots {
            self.slots.resize(n * nslots, usize::MAX);
        }
        self.len = 0;
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// Inserts `pc`; false when it was already there.
    fn insert(&mut self, pc: u32) -> bool {
        let at = self.sparse[pc as usize] as usize;
        if at < self.len && self.dense[at] == pc {
            return false;
        }
        self.sparse[pc as usize] = self.len as u32;
        self.dense[self.len] = pc;
        self.len += 1;
        true
    }

    fn slots_of(&self, pc: usize, nslots: usize) -> &[usize] {
        &self.slots[pc * nslots..][..nslots]
    }
}

#[derive(Debug, Default)]
struct Scratch {
    cur: Threads,
    next: Threads,
    stack: Vec<Frame>,
    /// The slots of the thread being extended.
    slots: Vec<usize>,
}

impl Scratch {
    fn prepare(&mut self, n: usize, nslots: usize) {
        self.cur.prepare(n, nslots);
        self.next.prepare(n, nslots);
        self.stack.clear();
        self.slots.clear();
        self.slots.resize(nslots, usize::MAX);
    }

    /// Roughly how many words this scratch holds on to.
    fn footprint(&self) -> usize {
        self.cur.slots.capacity() + self.next.slots.capacity() + self.stack.capacity() * 2
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}
