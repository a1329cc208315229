//! The web view: server-rendered pages over the same store and checks as the API.
//!
//! - `/` — the runs the reader may see: status, calls, tokens, cost, verification;
//! - `/runs/{id}` — one run: its verification (checked when the page is drawn), a budget
//!   burn-down chart (inline SVG), the receipt timeline (step, time, host, method and path,
//!   decision and reasons, status, tokens, latency, rate wait, capability id, receipt id, W3C trace id) and links
//!   to the raw receipts and exports;
//! - `/demo` — the latest Hello Fleet run (`fleetforge-ctl demo`);
//! - `/login?code=…` — spends a one-time login code and sets the session cookie
//!   (`fleetforge_session`: HttpOnly, SameSite=Strict, 12 hours), then goes to `next` (a local
//!   path) or `/`.
//!
//! Login codes come from `POST /v1/ui/login-links` (any admin or reader token; the session reads
//! as a reader of that token's tenant); `fleetforge-ctl up`, `demo` and `login` print the URL.
//! Pages also accept `Authorization: Bearer`. A page asked for without either is `401` with how to
//! sign in; another tenant's run is `404`, as in the API. The pages load one small script
//! (`/ui.js`, built in) and nothing from elsewhere.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, App, principal, require, run_of};
use crate::auth::{self, LOGIN_CODE_TTL, Principal, Role, SESSION_TTL};

/// The session cookie's name.
pub const COOKIE: &str = "fleetforge_session";

/// The session secret a request's cookie carries.
pub(super) fn session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// `POST /v1/ui/login-links`: a one-time login URL path for the caller's tenant.
#[utoipa::path(post, path = "/v1/ui/login-links",
    responses((status = 200, description = "`{\"path\": \"/login?code=…\", \"expires_in_seconds\": 600}`"), (status = 403)),
    security(("bearer" = [])))]
pub(super) async fn login_link(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Admin, Role::Reader])?;
    let code = auth::new_token("ffl_");
    let expires = crate::store::now_micros() + micros(LOGIN_CODE_TTL);
    app.store.insert_ui_secret(&auth::token_hash(&code), "code", p.tenant.as_deref(), expires).await?;
    Ok(Json(json!({
        "path": format!("/login?code={code}"),
        "expires_in_seconds": LOGIN_CODE_TTL.as_secs(),
    })))
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    code: Option<String>,
    next: Option<String>,
}

/// `GET /login?code=…[&next=/path]`.
pub(super) async fn login(State(app): State<Arc<App>>, Query(q): Query<LoginQuery>) -> Response {
    let tenant = match q.code.as_deref() {
        Some(code) => app.store.take_login_code(&auth::token_hash(code)).await,
        None => Ok(None),
    };
    let session = match tenant {
        Ok(Some(tenant)) => {
            let session = auth::new_token("ffs_");
            let expires = crate::store::now_micros() + micros(SESSION_TTL);
            match app.store.insert_ui_secret(&auth::token_hash(&session), "session", tenant.as_deref(), expires).await {
                Ok(()) => Some(session),
                Err(e) => return failure(&format!("{e:?}")),
            }
        }
        Ok(None) => None,
        Err(e) => return failure(&format!("{e:?}")),
    };
    let Some(session) = session else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "<p>This login link is unknown, spent or expired: each link works once, for 10 minutes.</p>\
             <p>Get a new one with <code>fleetforge-ctl login</code>.</p>",
        );
    };
    // Only a local path: never an open redirect.
    let next = q.next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'));
    let mut response = Redirect::to(next.as_deref().unwrap_or("/")).into_response();
    let cookie = format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs());
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The reader behind a page request, or the sign-in page.
async fn reader(app: &App, headers: &HeaderMap) -> Result<Principal, Response> {
    principal(app, headers).await.map_err(|_| {
        page(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "<p>The web view shows receipts, so it needs a sign-in.</p>\
             <p>Open the one-time login URL that <code>fleetforge-ctl up</code> or <code>fleetforge-ctl demo</code> \
             printed, or get a new one with <code>fleetforge-ctl login</code>. Scripts can send \
             <code>Authorization: Bearer TOKEN</code> instead.</p>",
        )
    })
}

/// `GET /`.
pub(super) async fn runs_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let p = match reader(&app, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rows = match app.store.runs(p.tenant_filter(), 200, None).await {
        Ok(rows) => rows,
        Err(e) => return failure(&format!("{e:?}")),
    };
    let mut body = String::from(
        "<table id=\"runs\"><thead><tr><th>run</th><th>status</th><th>created</th><th>calls</th><th>tokens</th>\
         <th>cost (USD)</th><th>verification</th><th>labels</th></tr></thead><tbody>",
    );
    for row in rows {
        let status = run_status(row.revoked_at, row.expires_at);
        let view = serde_json::to_value(super::runs::view(row)).unwrap_or_default();
        let id = view["id"].as_str().unwrap_or_default();
        let _ = write!(
            body,
            "<tr data-run-id=\"{}\"><td><a href=\"/runs/{}\">{}</a></td><td>{status}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.6}</td><td class=\"verification-{}\">{}</td><td>{}</td></tr>",
            esc(id),
            esc(id),
            esc(id),
            esc(view["created_at"].as_str().unwrap_or_default()),
            view["calls"],
            view["input_tokens"].as_i64().unwrap_or(0) + view["output_tokens"].as_i64().unwrap_or(0),
            view["cost_usd"].as_f64().unwrap_or(0.0),
            esc(view["verification"].as_str().unwrap_or_default()),
            esc(view["verification"].as_str().unwrap_or_default()),
            esc(&compact(&view["labels"])),
        );
    }
    body.push_str("</tbody></table>");
    page(StatusCode::OK, "Runs", &body)
}

/// `GET /demo`: the latest Hello Fleet run.
pub(super) async fn demo(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let p = match reader(&app, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match app.store.runs(p.tenant_filter(), 500, None).await {
        Ok(rows) => match rows.iter().find(|r| r.labels.contains("\"demo\":\"hello-fleet\"")) {
            Some(run) => Redirect::to(&format!("/runs/{}", run.id)).into_response(),
            None => page(
                StatusCode::NOT_FOUND,
                "Hello Fleet",
                "<p>No Hello Fleet run yet: run <code>fleetforge-ctl demo</code>.</p>",
            ),
        },
        Err(e) => failure(&e.to_string()),
    }
}

/// `GET /runs/{id}`.
pub(super) async fn run_page(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let p = match reader(&app, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let run = match run_of(&app, &p, &id).await {
        Ok(run) => run,
        Err(_) => return page(StatusCode::NOT_FOUND, "Not found", &format!("<p>No run {}.</p>", esc(&id))),
    };
    let status = run_status(run.revoked_at, run.expires_at);
    let view = serde_json::to_value(super::runs::view(run)).unwrap_or_default();
    let verified = match super::receipts::verify_report(&app, &id).await {
        Ok(v) => v,
        Err(e) => return failure(&format!("{e:?}")),
    };
    let receipts = match app.store.receipts(&id, 0, 10_000).await {
        Ok(rows) => rows.into_iter().filter_map(|r| serde_json::from_str::<Value>(&r.body).ok()).collect::<Vec<_>>(),
        Err(e) => return failure(&format!("{e:?}")),
    };
    let enc = urlencode(&id);
    let mut body = String::new();
    let _ = write!(
        body,
        "<p class=\"meta\">status <b>{status}</b> · tenant {} · created {} · {} calls · {} tokens · {:.6} USD</p>\
         <p class=\"meta\">labels {} · budget {}</p>",
        esc(view["tenant"].as_str().unwrap_or_default()),
        esc(view["created_at"].as_str().unwrap_or_default()),
        view["calls"],
        view["input_tokens"].as_i64().unwrap_or(0) + view["output_tokens"].as_i64().unwrap_or(0),
        view["cost_usd"].as_f64().unwrap_or(0.0),
        esc(&compact(&view["labels"])),
        esc(&compact(&view["budget"])),
    );
    body.push_str("<h2>Verification</h2>");
    if verified.ok {
        let _ = write!(
            body,
            "<p id=\"verification\" data-ok=\"true\" class=\"ok\">✔ {} receipts verified: signatures, batch proofs, \
             hash chain, sequence and sealed blobs.</p>",
            verified.checked
        );
    } else {
        let _ = write!(
            body,
            "<div id=\"verification\" data-ok=\"false\" class=\"bad\"><p>✘ verification failed ({} receipts checked):</p><ul>",
            verified.checked
        );
        for problem in &verified.problems {
            let _ = write!(body, "<li>receipt {}: {}</li>", esc(&problem.receipt_id), esc(&problem.problem));
        }
        body.push_str("</ul></div>");
    }
    // The transparency log: how many of the run's receipts are leaves of the tenant's log, and
    // its signed head.
    let tenant = view["tenant"].as_str().unwrap_or_default().to_owned();
    let (entries, head) = match (app.store.log_entries_of_run(&id).await, app.store.log_head(&tenant).await) {
        (Ok(e), Ok(h)) => (e, h),
        (Err(e), _) | (_, Err(e)) => return failure(&format!("{e:?}")),
    };
    let logged = entries.iter().filter(|(_, e)| e.index.is_some()).count();
    let tenc = urlencode(&tenant);
    let _ = write!(
        body,
        "<h2>Transparency log</h2><p id=\"log\" data-included=\"{logged}\" data-size=\"{}\" class=\"{}\">{} {logged} of {} \
         receipts are leaves of the log of tenant {} (size {}, head <code>{}…</code>); their inclusion proofs are checked \
         above. <a href=\"/v1/log/{tenc}/checkpoint\">signed checkpoint</a> · <a href=\"/v1/log/{tenc}/head\">head (JSON)</a></p>",
        head.size,
        if logged == entries.len() { "ok" } else { "bad" },
        if logged == entries.len() { "✔" } else { "✘" },
        entries.len(),
        esc(&tenant),
        head.size,
        &fleetforge_trust::canonical::hex(&head.root)[..16],
    );
    body.push_str("<h2>Budget burn-down</h2>");
    body.push_str(&burn_down(&view["budget"], &receipts));
    body.push_str("<h2>Timeline</h2>");
    body.push_str(&timeline(&receipts));
    let _ = write!(
        body,
        "<h2>Evidence</h2><ul class=\"links\">\
         <li><a href=\"/v1/runs/{enc}/receipts?limit=1000\">signed receipts (JSON)</a></li>\
         <li><a href=\"/v1/runs/{enc}/verify\">verification report (JSON)</a></li>\
         <li><a href=\"/v1/runs/{enc}/replay-manifest\">replay manifest (signed)</a></li>\
         <li><a href=\"/v1/runs/{enc}/export/vc\">export: verifiable credential</a></li>\
         <li><a href=\"/v1/runs/{enc}/export/aibom\">export: AI bill of materials (CycloneDX 1.6)</a></li>\
         <li><a href=\"/v1/runs/{enc}/export/c2pa\">export: C2PA manifest of the receipts (.c2pa; <code>fleetforge-ctl export {} --format c2pa -o FILE.c2pa</code> writes the receipts beside it)</a></li>\
         <li><a href=\"/v1/runs/{enc}/scitt\">SCITT signed statements (each with its COSE receipt)</a></li>\
         <li><a href=\"/v1/runs/{enc}/attestations\">attestations</a></li></ul>\
         <p class=\"meta\">Everything above in one folder, checkable offline: <code>fleetforge-ctl export {} --format bundle -o DIR</code>, \
         then <code>fleetforge-ctl verify --bundle DIR</code>.</p>",
        esc(&id),
        esc(&id)
    );
    page(StatusCode::OK, &format!("Run {id}"), &body)
}

/// `active`, `revoked` or `expired`.
fn run_status(revoked_at: Option<i64>, expires_at: Option<i64>) -> &'static str {
    let now = crate::store::now_micros() / 1_000_000;
    match (revoked_at, expires_at) {
        (Some(_), _) => "revoked",
        (None, Some(exp)) if exp < now => "expired",
        _ => "active",
    }
}

/// The receipt timeline table.
fn timeline(receipts: &[Value]) -> String {
    let mut out = String::from(
        "<table id=\"timeline\"><thead><tr><th>step</th><th>time</th><th>host</th><th>request</th><th>decision</th>\
         <th>status</th><th>tokens</th><th>ms</th><th>rate wait ms</th><th>capability</th><th>receipt</th><th>trace</th></tr></thead><tbody>",
    );
    for r in receipts {
        let id = r["id"].as_str().unwrap_or_default();
        let allow = r["decision"]["allow"] == true;
        let mut decision =
            if allow { "allow".to_owned() } else { esc(r["decision"]["error"]["type"].as_str().unwrap_or("deny")) };
        // Why: the refusal's message, the policy reasons it does not already say, and a rate wait.
        let message = r["decision"]["error"]["message"].as_str().unwrap_or_default();
        let mut why: Vec<String> = Vec::new();
        if !message.is_empty() {
            why.push(esc(message));
        }
        for reason in r["decision"]["reasons"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !message.contains(reason) {
                why.push(esc(reason));
            }
        }
        if let Some(waited) = r["budget"]["throttled_ms"].as_u64().filter(|w| *w > 0) {
            why.push(format!("throttled: waited {waited} ms for the run's rate SLO"));
        }
        if !why.is_empty() {
            let _ = write!(decision, "<ul class=\"reasons\"><li>{}</li></ul>", why.join("</li><li>"));
        }
        let tokens = match (r["usage"]["input_tokens"].as_u64(), r["usage"]["output_tokens"].as_u64()) {
            (None, None) => "-".to_owned(),
            (i, o) => (i.unwrap_or(0) + o.unwrap_or(0)).to_string(),
        };
        let ms = match (time_of(&r["started_at"]), time_of(&r["ended_at"])) {
            (Some(a), Some(b)) => format!("{:.1}", (b - a) * 1e3),
            _ => "-".into(),
        };
        let capability = r["capability"]["token_id"].as_str().unwrap_or_default();
        // The W3C trace and span ids, to find the call's span in a tracing backend.
        let trace = match (r["trace"]["trace_id"].as_str(), r["trace"]["span_id"].as_str()) {
            (Some(t), Some(sp)) => {
                format!("<td><code class=\"trace\" title=\"trace {} span {}\">{}</code></td>", esc(t), esc(sp), esc(t))
            }
            _ => "<td>-</td>".to_owned(),
        };
        let step = match r["step_label"].as_str() {
            Some(label) => format!("{} <span class=\"label\">{}</span>", r["step"], esc(label)),
            None => r["step"].to_string(),
        };
        let _ = write!(
            out,
            "<tr id=\"r-{}\" data-receipt-id=\"{}\" class=\"{}\"><td>{step}</td><td>{}</td><td>{}</td><td>{} {}</td>\
             <td class=\"decision\">{decision}</td><td>{}</td><td>{tokens}</td><td>{ms}</td><td>{}</td>\
             <td><code title=\"{}\">{}</code></td><td><a class=\"receipt\" href=\"/v1/receipts/{}\">{}</a></td>{trace}</tr>",
            esc(id),
            esc(id),
            if allow { "allow" } else { "deny" },
            esc(r["started_at"].as_str().unwrap_or_default()),
            esc(r["upstream"]["host"].as_str().unwrap_or_default()),
            esc(r["upstream"]["method"].as_str().unwrap_or_default()),
            esc(r["upstream"]["path"].as_str().unwrap_or_default()),
            r["seal"]["status"].as_u64().map_or_else(|| "-".into(), |s| s.to_string()),
            r["budget"]["throttled_ms"].as_u64().filter(|w| *w > 0).map_or_else(|| "-".into(), |w| w.to_string()),
            esc(capability),
            esc(capability.get(..16).unwrap_or(capability)),
            urlencode(id),
            esc(id),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// Seconds since the epoch of an RFC 3339 time.
fn time_of(v: &Value) -> Option<f64> {
    let t = time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// What one receipt uses of a budget member.
type Usage = Box<dyn Fn(&Value) -> f64>;

/// The budget burn-down as inline SVG: for each budget member the run has (tokens, calls, cost),
/// the share left after each receipt over the run's time; without one, the tokens used.
fn burn_down(budget: &Value, receipts: &[Value]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 200.0;
    const PAD: f64 = 32.0;
    let times: Vec<f64> =
        receipts.iter().filter_map(|r| time_of(&r["ended_at"]).or_else(|| time_of(&r["started_at"]))).collect();
    let (Some(t0), Some(t1)) = (times.iter().copied().reduce(f64::min), times.iter().copied().reduce(f64::max)) else {
        return "<p id=\"burn-down\" class=\"empty\">No receipts yet.</p>".into();
    };
    let span = (t1 - t0).max(1e-3);
    // (name, limit, what one receipt uses)
    let mut series: Vec<(&str, f64, Usage)> = Vec::new();
    let tokens = |r: &Value| {
        (r["usage"]["input_tokens"].as_f64().unwrap_or(0.0)) + r["usage"]["output_tokens"].as_f64().unwrap_or(0.0)
    };
    if let Some(limit) = budget["tokens"].as_f64() {
        series.push(("tokens", limit, Box::new(tokens)));
    }
    if let Some(limit) = budget["calls"].as_f64() {
        series.push(("calls", limit, Box::new(|r: &Value| if r["decision"]["allow"] == true { 1.0 } else { 0.0 })));
    }
    if let Some(limit) = budget["cost_usd"].as_f64() {
        series.push(("cost", limit, Box::new(|r: &Value| r["usage"]["cost_micro_usd"].as_f64().unwrap_or(0.0) / 1e6)));
    }
    let burn = !series.is_empty();
    if !burn {
        let total: f64 = receipts.iter().map(tokens).sum();
        series.push(("tokens used", total.max(1.0), Box::new(tokens)));
    }
    let x = |t: f64| PAD + (t - t0) / span * (W - 2.0 * PAD);
    let y = |share: f64| PAD + (1.0 - share.clamp(0.0, 1.0)) * (H - 2.0 * PAD);
    let mut svg = format!(
        "<svg id=\"burn-down\" role=\"img\" aria-label=\"budget burn-down\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\">\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fafafa\" stroke=\"#ddd\"/>\
         <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"#999\"/>\
         <text x=\"4\" y=\"{}\" font-size=\"10\">100%</text><text x=\"10\" y=\"{}\" font-size=\"10\">0</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{span:.1} s</text>",
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD,
        PAD + 4.0,
        H - PAD,
        W - PAD,
        H - PAD + 14.0,
    );
    let colors = ["#1f77b4", "#d62728", "#2ca02c"];
    for (i, (name, limit, used)) in series.iter().enumerate() {
        let mut points = vec![format!("{:.1},{:.1}", x(t0), y(if burn { 1.0 } else { 0.0 }))];
        let mut spent = 0.0;
        for (r, t) in receipts.iter().zip(&times) {
            let before = spent;
            spent += used(r);
            let share = |s: f64| if burn { 1.0 - s / limit } else { s / limit };
            points.push(format!("{:.1},{:.1}", x(*t), y(share(before))));
            points.push(format!("{:.1},{:.1}", x(*t), y(share(spent))));
        }
        let label = if burn { format!("{name} left of {limit}") } else { (*name).to_owned() };
        let _ = write!(
            svg,
            "<polyline class=\"series\" data-series=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{}\">{}</text>",
            esc(name),
            colors[i % colors.len()],
            points.join(" "),
            PAD + 8.0 + 170.0 * i as f64,
            PAD - 10.0,
            colors[i % colors.len()],
            esc(&label),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// `GET /ui.js`: marks the rows of calls that were refused and lets a click on a row show the
/// signed receipt it stands for.
pub(super) async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

const SCRIPT: &str = r#""use strict";
document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("timeline");
  if (!table) return;
  table.dataset.ready = "true";
  table.addEventListener("click", async (event) => {
    const row = event.target.closest("tr[data-receipt-id]");
    if (!row || event.target.closest("a")) return;
    const next = row.nextElementSibling;
    if (next && next.classList.contains("raw")) { next.remove(); return; }
    const raw = document.createElement("tr");
    raw.className = "raw";
    const cell = document.createElement("td");
    cell.colSpan = row.children.length;
    const pre = document.createElement("pre");
    pre.textContent = "loading…";
    cell.appendChild(pre);
    raw.appendChild(cell);
    row.after(raw);
    const answer = await fetch("/v1/receipts/" + encodeURIComponent(row.dataset.receiptId), { credentials: "same-origin" });
    pre.textContent = answer.ok ? JSON.stringify(await answer.json(), null, 2) : "cannot load the receipt: " + answer.status;
  });
});
"#;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}\
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #e5e5e5;padding:4px 6px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}tr.deny td.decision{color:#b00020;font-weight:600}tr.allow td.decision{color:#1b5e20}\
tr[data-receipt-id]{cursor:pointer}.reasons{margin:2px 0 0 0;padding-left:16px;font-weight:400}\
.ok{color:#1b5e20}.bad{color:#b00020}.meta{color:#555}.label{color:#777}code{font-size:12px}pre{white-space:pre-wrap;font-size:12px}\
nav a{margin-right:12px}";

/// A whole page.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · FleetForge</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{STYLE}</style>\
         <script src=\"/ui.js\" defer></script></head><body><nav><a href=\"/\">FleetForge runs</a><a href=\"/demo\">Hello Fleet</a></nav>\
         <h1>{}</h1>{body}</body></html>",
        esc(title),
        esc(title)
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:"),
    );
    headers.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    response
}

fn failure(message: &str) -> Response {
    tracing::error!(error = message, "web view: reading the store failed");
    page(StatusCode::INTERNAL_SERVER_ERROR, "Error", "<p>Reading the store failed; the control log says why.</p>")
}

/// JSON on one line, for labels and budgets.
fn compact(v: &Value) -> String {
    if v.is_null() { "-".into() } else { v.to_string() }
}

/// HTML-escapes text for element content and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{esc, session, urlencode};

    #[test]
    fn escaping_and_cookies() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(urlencode("run 1/é"), "run%201%2F%C3%A9");
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("cookie", "a=b; fleetforge_session=ffs_x; c=d".parse().unwrap());
        assert_eq!(session(&headers), Some("ffs_x"));
        headers.insert("cookie", "fleetforge_session_other=1".parse().unwrap());
        assert_eq!(session(&headers), None);
    }
}
