//! Rewrite templates: `/lx/sub/$1`, where `$N` is the Nth capture (1-based) and `$$` a literal `$`.

use super::plan::{Rewrite, RewritePart};

/// A problem in a template, at a character index of it (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateError {
    pub index: usize,
    pub message: String,
}

/// How many captures the route's match provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Captures {
    /// A `match:` pattern with this many captures.
    Pattern(usize),
    /// An `unmatched: true` route: nothing was matched, so nothing was captured.
    Unmatched,
}

/// Splits `source` into literal text and captures, checking every `$N` against `captures`.
pub(crate) fn parse(source: &str, captures: Captures) -> Result<Rewrite, Vec<TemplateError>> {
    let mut errors = Vec::new();
    if !source.starts_with('/') {
        errors.push(TemplateError {
            index: 0,
            message: format!(
                "a rewrite must be an OSC address starting with `/`, e.g. `/lx/sub/$1` (got `{source}`)"
            ),
        });
    }
    let chars: Vec<char> = source.chars().collect();
    let mut parts = Vec::new();
    let mut literal = String::new();
    // Literal characters with their index, captures as None: to find `//` across parts.
    let mut flat: Vec<(Option<char>, usize)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            if matches!(c, '?' | '*' | '[' | ']' | '{' | '}') {
                errors.push(TemplateError {
                    index: i,
                    message: format!(
                        "`{c}` is OSC pattern syntax and cannot appear in a rewritten address"
                    ),
                });
            }
            literal.push(c);
            flat.push((Some(c), i));
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'$') {
            literal.push('$');
            flat.push((Some('$'), i));
            i += 2;
            continue;
        }
        let digits: String = chars[i + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .collect();
        if digits.is_empty() {
            errors.push(TemplateError {
                index: i,
                message: "`$` must be followed by a capture number like `$1`; write `$$` for a \
                          literal `$`"
                    .to_string(),
            });
            i += 1;
            continue;
        }
        let n = digits.parse::<usize>().unwrap_or(usize::MAX);
        match captures {
            _ if n == 0 => errors.push(TemplateError {
                index: i,
                message: "captures are numbered from `$1`; `$0` does not exist".to_string(),
            }),
            Captures::Unmatched => errors.push(TemplateError {
                index: i,
                message: format!(
                    "`${digits}` refers to a capture, but an `unmatched` route has no captures"
                ),
            }),
            Captures::Pattern(count) if n > count => errors.push(TemplateError {
                index: i,
                message: format!(
                    "`${digits}` refers to capture {digits}, but the route's pattern has {}",
                    match count {
                        0 => "no captures (it has no wildcards)".to_string(),
                        1 => "only 1 capture".to_string(),
                        c => format!("only {c} captures"),
                    }
                ),
            }),
            Captures::Pattern(_) => {}
        }
        if !literal.is_empty() {
            parts.push(RewritePart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(RewritePart::Capture(n));
        flat.push((None, i));
        i += 1 + digits.len();
    }
    if !literal.is_empty() {
        parts.push(RewritePart::Literal(literal));
    }
    if let Some(w) = flat
        .windows(2)
        .find(|w| w[0].0 == Some('/') && w[1].0 == Some('/'))
    {
        errors.push(TemplateError {
            index: w[0].1,
            message: "`//` is OSC pattern syntax and cannot appear in a rewritten address"
                .to_string(),
        });
    }
    if errors.is_empty() {
        Ok(Rewrite {
            source: source.to_string(),
            parts,
        })
    } else {
        errors.sort_by_key(|e| e.index);
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> RewritePart {
        RewritePart::Literal(s.to_string())
    }

    #[test]
    fn splits_literals_and_captures() {
        let r = parse("/lx/sub/$1/$2x$$", Captures::Pattern(2)).expect("valid");
        assert_eq!(
            r.parts,
            vec![
                lit("/lx/sub/"),
                RewritePart::Capture(1),
                lit("/"),
                RewritePart::Capture(2),
                lit("x$")
            ]
        );
        assert_eq!(r.source, "/lx/sub/$1/$2x$$");
        let r = parse("/a/$12", Captures::Pattern(12)).expect("valid");
        assert_eq!(r.parts, vec![lit("/a/"), RewritePart::Capture(12)]);
        let r = parse("/plain", Captures::Unmatched).expect("valid");
        assert_eq!(r.parts, vec![lit("/plain")]);
    }

    #[test]
    fn reports_each_problem_with_its_index() {
        let errs = parse("/a/$3/$0/$x", Captures::Pattern(1)).unwrap_err();
        let idx: Vec<usize> = errs.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![3, 6, 9]);
        assert!(
            errs[0].message.contains("only 1 capture"),
            "{}",
            errs[0].message
        );
        assert!(errs[1].message.contains("`$0`"), "{}", errs[1].message);
        assert!(errs[2].message.contains("`$$`"), "{}", errs[2].message);

        let errs = parse("lx/$1", Captures::Unmatched).unwrap_err();
        assert_eq!(errs[0].index, 0);
        assert!(errs[0].message.contains("starting with `/`"));
        assert!(
            errs[1].message.contains("no captures"),
            "{}",
            errs[1].message
        );

        let errs = parse("/a/*/b", Captures::Pattern(0)).unwrap_err();
        assert_eq!(errs[0].index, 3);
        let errs = parse("/a//b", Captures::Pattern(0)).unwrap_err();
        assert_eq!(errs[0].index, 2);
        assert!(errs[0].message.contains("`//`"));
        // `$$` then `/`: a literal dollar between slashes is fine.
        assert!(parse("/a/$$/b", Captures::Pattern(0)).is_ok());
    }
}
