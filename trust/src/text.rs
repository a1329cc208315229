//! Text forms the proxy, control and the CLI write the same way: times, hex, and paths with their
//! credential-like query values redacted.

use std::borrow::Cow;
use std::time::SystemTime;

pub use crate::canonical::hex;

/// A wall-clock time as RFC 3339 UTC with exactly six fraction digits, e.g.
/// `2025-11-26T18:00:00.123456Z` (the receipts' `started_at` / `ended_at` form).
pub fn rfc3339_micros(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Microseconds since the Unix epoch as RFC 3339 (as short as the value allows); `""` when out of
/// range.
pub fn rfc3339_from_unix_micros(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Seconds since the Unix epoch as RFC 3339; the number itself when out of range.
pub fn rfc3339_from_unix_secs(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// Query parameter names whose values are credentials (Gemini's `?key=`, OAuth `access_token`,
/// presigned-URL signatures, …). Matched case-insensitively as substrings.
const SECRET_PARAMS: &[&str] =
    &["key", "token", "secret", "password", "passwd", "auth", "sig", "credential", "session"];

/// Whether a query parameter name looks like it carries a credential (`key`, `api_key`,
/// `access_token`, `sig`, …).
pub fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// The path and query with credential-like query values replaced by `[redacted]`, for receipts,
/// logs and policy input. Borrows when nothing needs redacting (the common case).
pub fn redact_path(path: &str) -> Cow<'_, str> {
    let Some((base, query)) = path.split_once('?') else { return path.into() };
    let secret = is_secret_param;
    if !query.split('&').any(|pair| secret(pair.split_once('=').map_or(pair, |(k, _)| k))) {
        return path.into();
    }
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}=[redacted]"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", redacted.join("&")).into()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{redact_path, rfc3339_from_unix_micros, rfc3339_from_unix_secs, rfc3339_micros};

    #[test]
    fn credential_query_values_are_redacted() {
        assert_eq!(redact_path("/v1/models"), "/v1/models");
        assert_eq!(redact_path("/v1/x?alt=sse&limit=3"), "/v1/x?alt=sse&limit=3");
        assert_eq!(
            redact_path("/v1beta/models/g:generateContent?key=AIzaSECRET&alt=sse"),
            "/v1beta/models/g:generateContent?key=[redacted]&alt=sse"
        );
        assert_eq!(
            redact_path("/cb?Access_Token=abc&X-Amz-Signature=def&q=1"),
            "/cb?Access_Token=[redacted]&X-Amz-Signature=[redacted]&q=1"
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_180_000_123_456);
        assert_eq!(rfc3339_micros(t), "2025-11-26T18:00:00.123456Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_from_unix_micros(1_764_180_000_123_456), "2025-11-26T18:00:00.123456Z");
        assert_eq!(rfc3339_from_unix_secs(1_764_180_000), "2025-11-26T18:00:00Z");
    }
}
