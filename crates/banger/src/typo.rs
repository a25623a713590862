//! "Did you mean" for mistyped subcommands that clap's own similarity
//! measure misses: it compares with Jaro, which scores short words with a
//! dropped or swapped letter (`vm rn`, `vm strat`) too low to suggest.
//! Here a word one edit away (two for longer words) from a subcommand or
//! alias is suggested, added to clap's error so it prints as clap's `tip:`.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Edits (insert, delete, substitute, swap adjacent) between two words.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
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
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The subcommands (names first, then aliases) close to `typed`.
pub fn near<'a>(typed: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let limit = if typed.chars().count() >= 5 { 2 } else { 1 };
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if distance(typed, n) <= limit && !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    }
    out
}

/// Adds a suggestion to an "unrecognized subcommand" error that has none.
/// `args` are the command line's words after the program name: they say
/// which command's subcommands were meant.
pub fn suggest(mut err: clap::Error, root: &clap::Command, args: &[String]) -> clap::Error {
    if err.kind() != ErrorKind::InvalidSubcommand
        || err.get(ContextKind::SuggestedSubcommand).is_some()
    {
        return err;
    }
    let Some(ContextValue::String(typed)) = err.get(ContextKind::InvalidSubcommand).cloned() else {
        return err;
    };
    let mut cmd = root;
    for a in args {
        if *a == typed {
            break;
        }
        if let Some(sub) = cmd.find_subcommand(a) {
            cmd = sub;
        }
    }
    let names = cmd
        .get_subcommands()
        .flat_map(|s| std::iter::once(s.get_name()).chain(s.get_all_aliases()));
    let found = near(&typed, names);
    if !found.is_empty() {
        err.insert(
            ContextKind::SuggestedSubcommand,
            ContextValue::Strings(found),
        );
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn edits() {
        assert_eq!(distance("rn", "run"), 1);
        assert_eq!(distance("strat", "start"), 1);
        assert_eq!(distance("lsit", "list"), 1);
        assert_eq!(distance("", "ls"), 2);
        assert_eq!(distance("delte", "delete"), 1);
        assert_eq!(distance("xyz", "run"), 3);
    }

    fn error_for(args: &[&str]) -> String {
        let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let root = crate::cli::Cli::command();
        let err = root
            .clone()
            .try_get_matches_from(std::iter::once("banger".to_string()).chain(argv.clone()))
            .expect_err("a typo");
        suggest(err, &root, &argv).render().to_string()
    }

    #[test]
    fn mistyped_subcommands_get_a_tip() {
        let e = error_for(&["vm", "rn"]);
        assert!(e.contains("'run'"), "{e}");
        let e = error_for(&["vm", "strat", "x"]);
        assert!(e.contains("'start'"), "{e}");
        let e = error_for(&["--socket", "/s", "imgae", "ls"]);
        assert!(e.contains("'image'"), "{e}");
        // Nothing close: no invented tip.
        let e = error_for(&["vm", "qqqqqq"]);
        assert!(!e.contains("tip:"), "{e}");
    }
}
