//! "Did you mean" hints for misspelt keys and names.

/// The closest of `known` to `word`, when it is close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_l = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    known
        .into_iter()
        .map(|k| (edit_distance(&word_l, &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The message for a key that is not one of `known`.
pub(crate) fn unknown_key_message(key: &str, known: &[&str]) -> String {
    let hint = match closest(key, known.iter().copied()) {
        Some(k) => format!("; did you mean `{k}`?"),
        None => String::new(),
    };
    format!(
        "unknown key `{key}`{hint} (known keys: {})",
        known.join(", ")
    )
}

/// Edit distance where swapping two neighbouring letters counts as one edit (`sned` -> `send`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos_only() {
        assert_eq!(
            closest("chanels", ["version", "channels", "routes"]),
            Some("channels")
        );
        assert_eq!(
            closest("Routes", ["version", "channels", "routes"]),
            Some("routes")
        );
        assert_eq!(closest("lisen", ["listen", "send"]), Some("listen"));
        assert_eq!(
            closest("scripts", ["version", "channels", "routes", "metrics"]),
            None
        );
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("sned", "send"), 1);
        assert_eq!(closest("sned", ["kind", "listen", "send"]), Some("send"));
    }
}
