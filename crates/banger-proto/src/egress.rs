//! A VM's egress policy as users write it (`--egress`, `[network] egress`)
//! and as the API carries it: `all`, `none` (what `--no-egress` means), or
//! `allow:NAME,NAME…` — only the addresses banger's DNS server resolved for
//! those names. A name matches exactly; `*.example.com` matches the names
//! under example.com (not example.com itself).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most names one allowlist may hold.
pub const MAX_ALLOWED_NAMES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum EgressPolicy {
    #[default]
    All,
    None,
    Allow {
        names: Vec<String>,
    },
}

impl EgressPolicy {
    /// Whether a query for `name` (any case, with or without the final dot)
    /// may be answered for a VM with this policy, and its answer granted.
    pub fn allows_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            EgressPolicy::All => true,
            EgressPolicy::None => false,
            EgressPolicy::Allow { names } => names.iter().any(|n| match n.strip_prefix("*.") {
                Some(parent) => name
                    .strip_suffix(parent)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => *n == name,
            }),
        }
    }
}

impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressPolicy::All => f.write_str("all"),
            EgressPolicy::None => f.write_str("none"),
            EgressPolicy::Allow { names } => write!(f, "allow:{}", names.join(",")),
        }
    }
}

const HINT: &str = "use all, none, or allow:NAME[,NAME…] such as allow:github.com,pypi.org";

/// One allowlist entry: a DNS name of letters, digits and hyphens in at
/// least two labels, optionally `*.` in front.
fn check_name(raw: &str) -> Result<String, String> {
    let n = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let body = n.strip_prefix("*.").unwrap_or(&n);
    let labels: Vec<&str> = body.split('.').collect();
    let ok = body.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(format!(
            "{raw:?} is not a domain name like github.com or *.githubusercontent.com"
        ));
    }
    if body.ends_with(".vm") {
        return Err(format!(
            "{raw:?} is a .vm name; VMs are reached on the bridge, not through egress"
        ));
    }
    Ok(n)
}

impl FromStr for EgressPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => return Ok(EgressPolicy::All),
            "none" => return Ok(EgressPolicy::None),
            _ => {}
        }
        let Some(list) = s.trim().strip_prefix("allow:") else {
            return Err(format!("egress policy {s:?} is not understood; {HINT}"));
        };
        let mut names = Vec::new();
        for raw in list.split(',').filter(|p| !p.trim().is_empty()) {
            let n = check_name(raw).map_err(|e| format!("egress policy {s:?}: {e}"))?;
            if !names.contains(&n) {
                names.push(n);
            }
        }
        if names.is_empty() {
            return Err(format!(
                "egress policy {s:?} allows no name; {HINT} (or none for no egress at all)"
            ));
        }
        if names.len() > MAX_ALLOWED_NAMES {
            return Err(format!(
                "egress policy {s:?} lists {} names; at most {MAX_ALLOWED_NAMES} are allowed",
                names.len()
            ));
        }
        Ok(EgressPolicy::Allow { names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for s in [
            "all",
            "none",
            "allow:github.com,pypi.org",
            "allow:*.pythonhosted.org",
        ] {
            let p: EgressPolicy = s.parse().expect(s);
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            "allow: GitHub.com., github.com ,pypi.org".parse::<EgressPolicy>(),
            Ok(EgressPolicy::Allow {
                names: vec!["github.com".into(), "pypi.org".into()]
            })
        );
    }

    #[test]
    fn bad_policies_say_what_to_write() {
        for s in [
            "",
            "some",
            "allow:",
            "allow:,",
            "allow:com",
            "allow:exa mple.com",
            "allow:-a.com",
            "allow:a..com",
            "allow:*.com",
            "allow:web.vm",
            "allow:github.com/x",
        ] {
            let e = s.parse::<EgressPolicy>().expect_err(s);
            assert!(e.contains("egress policy"), "{s}: {e}");
        }
        let many = format!(
            "allow:{}",
            (0..65)
                .map(|i| format!("h{i}.example.com"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(many.parse::<EgressPolicy>().is_err());
    }

    #[test]
    fn names_match_exactly_or_under_a_wildcard() {
        let p: EgressPolicy = "allow:github.com,*.githubusercontent.com"
            .parse()
            .expect("p");
        assert!(p.allows_name("github.com"));
        assert!(p.allows_name("GitHub.com."));
        assert!(!p.allows_name("api.github.com"));
        assert!(!p.allows_name("evilgithub.com"));
        assert!(!p.allows_name("github.com.evil.net"));
        assert!(p.allows_name("raw.githubusercontent.com"));
        assert!(!p.allows_name("githubusercontent.com"));
        assert!(!p.allows_name("xgithubusercontent.com"));
        assert!(EgressPolicy::All.allows_name("anything.example"));
        assert!(!EgressPolicy::None.allows_name("github.com"));
    }
}
