//! Glob patterns for hosts, models and tool names.
//!
//! The only special character is `*`, which matches any run of characters, dots included:
//! `*.example.com` matches `api.example.com` and `a.b.example.com` but not `example.com` itself
//! (list both), and `gpt-4o*` matches `gpt-4o` and `gpt-4o-mini`. Matching is ASCII
//! case-insensitive. Host matching also ignores one trailing dot and the brackets of an IPv6
//! literal on either side, so `example.com.` cannot slip past a pattern for `example.com`. These
//! are the semantics of the proxy's own allow-lists (`proxy/src/pattern.rs`).
//!
//! Matching walks the bytes without allocating; worst case O(pattern × text).

/// Whether `text` matches `pattern` (`*` = any run of characters, ASCII case-insensitive).
pub fn matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: the pattern index after it, and the text index it
    // currently absorbs up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                star = Some((p, t));
            }
            Some(c) if c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((after_star, absorbed)) => {
                    p = after_star;
                    t = absorbed + 1;
                    star = Some((after_star, t));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The first of `patterns` that `text` matches.
pub fn first_match<'p>(patterns: &'p [String], text: &str) -> Option<&'p str> {
    patterns.iter().map(String::as_str).find(|pattern| matches(pattern, text))
}

/// Whether `text` matches any of `patterns`.
pub fn any(patterns: &[String], text: &str) -> bool {
    first_match(patterns, text).is_some()
}

/// Whether `host` matches the host pattern `pattern`, ignoring one trailing dot and IPv6
/// brackets on either.
pub fn matches_host(pattern: &str, host: &str) -> bool {
    matches(host_part(pattern), host_part(host))
}

/// The first of `patterns` that `host` matches as a host.
pub fn first_host_match<'p>(patterns: &'p [String], host: &str) -> Option<&'p str> {
    patterns.iter().map(String::as_str).find(|pattern| matches_host(pattern, host))
}

/// Whether `host` matches any of the host `patterns`.
pub fn any_host(patterns: &[String], host: &str) -> bool {
    first_host_match(patterns, host).is_some()
}

/// `host` without the trailing dot of an absolute DNS name or the brackets of an IPv6 literal.
fn host_part(host: &str) -> &str {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::{any, any_host, first_match, matches, matches_host};

    #[test]
    fn literals_match_exactly_ignoring_ascii_case() {
        assert!(matches("api.openai.com", "api.openai.com"));
        assert!(matches("API.OpenAI.com", "api.openai.COM"));
        assert!(!matches("api.openai.com", "api.openai.co"));
        assert!(!matches("api.openai.com", "api.openai.com.evil"));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
    }

    #[test]
    fn star_matches_any_run() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything.at.all"));
        assert!(matches("*.example.com", "api.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "evilexample.com"));
        assert!(matches("gpt-4o*", "gpt-4o"));
        assert!(matches("gpt-4o*", "gpt-4o-mini"));
        assert!(!matches("gpt-4o*", "gpt-4"));
        assert!(matches("claude-*-sonnet*", "claude-3-5-sonnet-latest"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("**", "x"));
        assert!(matches("*aab", "aaaab"));
    }

    #[test]
    fn non_ascii_text_is_matched_bytewise_but_safely() {
        assert!(matches("*é*", "café-au-lait"));
        assert!(!matches("é", "e"));
    }

    #[test]
    fn hosts_ignore_a_trailing_dot_and_ipv6_brackets() {
        assert!(matches_host("example.com", "example.com."));
        assert!(matches_host("[::1]", "::1"));
        assert!(matches_host("::1", "[::1]"));
        assert!(matches_host("*.example.com.", "api.example.com"));
        assert!(!matches_host("example.com", "example.com.."));
    }

    #[test]
    fn lists() {
        let patterns = vec!["gpt-4o*".to_owned(), "claude-*".to_owned()];
        assert_eq!(first_match(&patterns, "claude-3-haiku"), Some("claude-*"));
        assert!(!any(&patterns, "llama-3"));
        assert!(!any(&[], "x"));
        assert!(any_host(&["*.openai.com".to_owned()], "api.openai.com."));
    }
}
