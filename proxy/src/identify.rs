//! Phase 1, identify: which run a call belongs to, and its step number.
//!
//! The run is taken, in order, from proxy credentials (`Proxy-Authorization: Basic RUN:TOKEN`,
//! which unmodified clients send when `HTTPS_PROXY=http://RUN:TOKEN@host:port`; inside an
//! intercepted tunnel the credentials of its `CONNECT` apply), from the `x-fleetforge-run` /
//! `x-fleetforge-token` headers, or from the listener's or the proxy's default run (with
//! `FLEETFORGE_DEFAULT_TOKEN` as its token, when set).
//!
//! Result: `Ok(())` with `call.identity` and `call.ledger` set — continue to authorize; or a 407
//! `proxy_auth_required` error when credentials are malformed, or missing while
//! `require_credentials` is on. This phase checks the *form* of credentials only; the run token
//! itself is verified by the authorize phase.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fleetforge_trust::RunId;
use http::HeaderMap;
use http::header::PROXY_AUTHORIZATION;

use crate::context::{Call, ConnCtx, Credentials, Identity, IdentitySource, Token};
use crate::error::{ErrorKind, Phase, ProxyError, Side};
use crate::headers::{X_RUN, X_STEP, X_TOKEN};
use crate::state::Proxy;

/// The longest step label kept, in bytes.
const MAX_STEP_LABEL: usize = 128;

fn auth_error(message: impl Into<String>, reason: &str) -> ProxyError {
    ProxyError::new(ErrorKind::ProxyAuthRequired, Phase::Identify, Side::Agent, message).with_reason(reason)
}

/// Parses `Proxy-Authorization: Basic base64(RUN:TOKEN)`.
///
/// Returns `Ok(None)` when the header is absent, and a 407 error naming what is wrong when it is
/// present but malformed. The token is never echoed in the message.
pub fn credentials(headers: &HeaderMap) -> Result<Option<Credentials>, ProxyError> {
    let Some(value) = headers.get(PROXY_AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| {
        auth_error(
            "Proxy-Authorization is not ASCII; expected `Basic base64(RUN_ID:RUN_TOKEN)`",
            "malformed_proxy_authorization",
        )
    })?;
    let (scheme, encoded) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(auth_error(
            format!(
                "Proxy-Authorization scheme {scheme:?} is not supported; use Basic, e.g. HTTPS_PROXY=http://RUN_ID:RUN_TOKEN@127.0.0.1:8080"
            ),
            "unsupported_auth_scheme",
        ));
    }
    let decoded =
        STANDARD.decode(encoded.trim()).ok().and_then(|bytes| String::from_utf8(bytes).ok()).ok_or_else(|| {
            auth_error(
                "Proxy-Authorization Basic credentials are not valid base64 of RUN_ID:RUN_TOKEN",
                "malformed_proxy_authorization",
            )
        })?;
    // The colon is required: without it there is no telling a run id from a token pasted alone,
    // and taking the whole value as a run id would let a malformed credential through.
    let Some((run, token)) = decoded.split_once(':') else {
        return Err(auth_error(
            "Proxy-Authorization Basic credentials have no colon; expected base64(RUN_ID:RUN_TOKEN), e.g. HTTPS_PROXY=http://RUN_ID:RUN_TOKEN@127.0.0.1:8080",
            "malformed_proxy_authorization",
        ));
    };
    let run = percent_decode(run);
    let run =
        RunId::new(&run).map_err(|e| auth_error(format!("the proxy user name must be a run id: {e}"), "bad_run_id"))?;
    let token = percent_decode(token);
    Ok(Some(Credentials { run, token: (!token.is_empty()).then(|| Token::new(token)) }))
}

/// Reads `x-fleetforge-run` and `x-fleetforge-token`. Returns `Ok(None)` without
/// `x-fleetforge-run`, and a 407 error naming what is wrong when either header is malformed.
pub fn header_credentials(headers: &HeaderMap) -> Result<Option<Credentials>, ProxyError> {
    let Some(run) = headers.get(X_RUN) else { return Ok(None) };
    let run = run.to_str().ok().and_then(|r| RunId::new(r.trim()).ok()).ok_or_else(|| {
        auth_error("x-fleetforge-run is not a valid run id (1-128 of A-Z a-z 0-9 . _ -)", "bad_run_id")
    })?;
    let token = headers
        .get(X_TOKEN)
        .map(|t| t.to_str().map(|t| Token::new(t.trim().to_owned())))
        .transpose()
        .map_err(|_| auth_error("x-fleetforge-token is not ASCII", "malformed_token"))?;
    Ok(Some(Credentials { run, token }))
}

/// Decodes `%XX` escapes (some clients escape reserved characters of proxy URL credentials).
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The 407 for a call without credentials on a proxy that requires them.
pub fn missing_credentials() -> ProxyError {
    auth_error(
        "this proxy requires run credentials: set HTTPS_PROXY=http://RUN_ID:RUN_TOKEN@HOST:PORT or send x-fleetforge-run and x-fleetforge-token",
        "missing_credentials",
    )
}

/// Identifies the call's run and assigns its step. See the module docs for the order of sources.
pub fn identify(proxy: &Proxy, conn: &ConnCtx, call: &mut Call, headers: &HeaderMap) -> Result<(), ProxyError> {
    let from_proxy_auth = match credentials(headers)? {
        Some(c) => Some(c),
        None => conn.credentials.clone(),
    };
    let (run, token, source) = if let Some(c) = from_proxy_auth {
        (c.run, c.token, IdentitySource::ProxyAuthorization)
    } else if let Some(Credentials { run, token }) = header_credentials(headers)? {
        (run, token, IdentitySource::Headers)
    } else if proxy.config.require_credentials {
        return Err(missing_credentials());
    } else {
        let run = conn.default_run.clone().or_else(|| proxy.config.default_run.clone());
        let token = proxy.config.default_token.as_ref().map(|t| Token::new(t.expose().to_owned()));
        (run.unwrap_or_else(|| proxy.anonymous_run.clone()), token, IdentitySource::Default)
    };
    let step_label = headers
        .get(X_STEP)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().chars().take(MAX_STEP_LABEL).collect::<String>())
        .filter(|v| !v.is_empty());
    // A run new to this proxy's ledger continues its steps, and its budget spend, after the
    // receipts the spool holds.
    let (ledger, step) = proxy.runs.begin_with(&run, || {
        let (step, spent) = proxy.spool.as_ref().and_then(|s| s.resume(run.as_str())).unwrap_or_default();
        crate::runs::Resume {
            step,
            tokens_used: spent.tokens,
            cost_micro_usd: spent.cost_micro_usd,
            calls_admitted: spent.calls,
        }
    });
    call.ledger = Some(ledger);
    call.identity = Some(Identity { run, token, source, step, step_label });
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use http::{HeaderMap, HeaderValue};

    use super::{credentials, percent_decode};
    use crate::error::ErrorKind;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("proxy-authorization", HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn parses_basic_run_and_token() {
        let h = with_auth(&format!("Basic {}", STANDARD.encode("run-7:tok.en")));
        let c = credentials(&h).unwrap().unwrap();
        assert_eq!(c.run.as_str(), "run-7");
        assert_eq!(c.token.unwrap().expose(), "tok.en");
        let h = with_auth(&format!("basic {}", STANDARD.encode("run-7:")));
        assert!(credentials(&h).unwrap().unwrap().token.is_none(), "an empty password is no token");
        assert!(credentials(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn malformed_credentials_are_407_without_echoing_the_secret() {
        for bad in [
            "Basic !!!notbase64",
            "Bearer abc",
            "Basic",
            &format!("Basic {}", STANDARD.encode("bad run:s3cr3t")),
            &format!("Basic {}", STANDARD.encode("no-colon-here")),
            &format!("Basic {}", STANDARD.encode(":s3cr3t")),
            &format!("Basic {}", STANDARD.encode([0xff, b':', b's'])),
        ] {
            let err = credentials(&with_auth(bad)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::ProxyAuthRequired, "{bad}");
            assert!(!err.message.contains("s3cr3t"));
        }
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode("a%2Fb%3a"), "a/b:");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
