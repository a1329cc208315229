//! Allow-list patterns for hosts and model names.
//!
//! A pattern is an exact name or a glob where `*` matches any run of characters (`*.openai.com`,
//! `gpt-4o*`); a lone `*` matches everything. Matching is ASCII case-insensitive. Host names are
//! normalized before matching (lowercase, no trailing dot, no IPv6 brackets), so the same name
//! always gets the same decision whichever way a client spells it.

use std::collections::HashSet;

/// A set of patterns; a name is in the set when any pattern matches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternSet {
    any: bool,
    exact: HashSet<String>,
    globs: Vec<String>,
}

impl PatternSet {
    /// A set that matches every name.
    pub fn any() -> Self {
        Self { any: true, ..Self::default() }
    }

    /// Builds a set from patterns; empty entries are ignored.
    pub fn new<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = Self::default();
        for p in patterns {
            let p = normalize_host(p.as_ref().trim());
            if p.is_empty() {
                continue;
            }
            if p == "*" {
                set.any = true;
            } else if p.contains('*') {
                set.globs.push(p);
            } else {
                set.exact.insert(p);
            }
        }
        set
    }

    /// True when the set matches every name.
    pub fn is_any(&self) -> bool {
        self.any
    }

    /// True when the set matches nothing.
    pub fn is_empty(&self) -> bool {
        !self.any && self.exact.is_empty() && self.globs.is_empty()
    }

    /// The patterns, sorted (`*` when the set matches everything), e.g. for a digest of the set.
    pub fn patterns(&self) -> Vec<String> {
        let mut all: Vec<String> = self.exact.iter().chain(&self.globs).cloned().collect();
        if self.any {
            all.push("*".into());
        }
        all.sort();
        all
    }

    /// Whether `name` matches, ignoring ASCII case.
    pub fn matches(&self, name: &str) -> bool {
        if self.any {
            return true;
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.matches_lower(&name.to_ascii_lowercase());
        }
        self.matches_lower(name)
    }

    fn matches_lower(&self, name: &str) -> bool {
        self.exact.contains(name) || self.globs.iter().any(|g| glob_match(g, name))
    }
}

/// Lowercases a host, drops one trailing dot and the brackets of an IPv6 literal.
pub fn normalize_host(host: &str) -> String {
    let h = host.strip_suffix('.').unwrap_or(host);
    let h = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h);
    h.to_ascii_lowercase()
}

/// Glob match where `*` matches any (possibly empty) run of bytes. Iterative, no backtracking
/// blow-up: at most O(pattern × name).
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::{PatternSet, glob_match, normalize_host};

    #[test]
    fn globs_match_like_shell_stars() {
        assert!(glob_match("*.openai.com", "api.openai.com"));
        assert!(glob_match("*.openai.com", "a.b.openai.com"));
        assert!(!glob_match("*.openai.com", "openai.com"));
        assert!(!glob_match("*.openai.com", "api.openai.com.evil.test"));
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn sets_normalize_and_match() {
        let set = PatternSet::new(["API.OpenAI.com.", "*.anthropic.com", ""]);
        assert!(set.matches("api.openai.com"));
        assert!(set.matches("API.OPENAI.COM"));
        assert!(set.matches("x.anthropic.com"));
        assert!(!set.matches("example.com"));
        assert!(!set.is_any());
        assert!(PatternSet::new(["*"]).matches("anything"));
        assert!(PatternSet::new(Vec::<String>::new()).is_empty());
        assert_eq!(normalize_host("[::1]"), "::1");
        let models = PatternSet::new(["gpt-4o*"]);
        assert!(models.matches("GPT-4o-mini"));
        assert!(!models.matches("o3"));
    }
}
