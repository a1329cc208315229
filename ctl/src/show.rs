//! Reading a run back: its receipts as a table and its verification.

use std::process::ExitCode;

use crate::client::{ClientError, ControlClient};

/// The message for a run control does not know.
pub fn not_found(run: &str) -> impl FnOnce(ClientError) -> anyhow::Error + '_ {
    move |e| match e {
        ClientError::NotFound(_) => anyhow::anyhow!("run {run} not found (or not visible to this token's tenant)"),
        e => e.into(),
    }
}

/// `fleetforge-ctl receipts RUN [--json]`: the run's receipts as a table, or one JSON object per line.
pub async fn receipts(c: &ControlClient, run: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut after = 0i64;
    if !as_json {
        println!(
            "{:>5} {:>5}  {:<27} {:<28} {:<40} {:<18} {:>6} {:>8} {:>9}  TRACE",
            "STEP", "SEQ", "TIME", "HOST", "METHOD PATH", "DECISION", "STATUS", "TOKENS", "MS"
        );
    }
    loop {
        let page = c.get(&format!("/v1/runs/{run}/receipts?after={after}&limit=1000")).await.map_err(not_found(run))?;
        let items = page["receipts"].as_array().cloned().unwrap_or_default();
        for r in &items {
            if as_json {
                println!("{r}");
                continue;
            }
            let ms = match (r["started_at"].as_str(), r["ended_at"].as_str()) {
                (Some(a), Some(b)) => millis_between(a, b).map_or_else(|| "-".into(), |m| format!("{m:.1}")),
                _ => "-".into(),
            };
            let mut target = format!(
                "{} {}",
                r["upstream"]["method"].as_str().unwrap_or_default(),
                r["upstream"]["path"].as_str().unwrap_or_default()
            );
            if target.len() > 40 {
                target.truncate(37);
                target.push_str("...");
            }
            let decision = if r["decision"]["allow"] == true {
                "allow".to_owned()
            } else {
                r["decision"]["error"]["type"].as_str().unwrap_or("deny").to_owned()
            };
            // Tokens are counted once the usage of known LLM APIs is parsed; "-" until then.
            let tokens = match (r["usage"]["input_tokens"].as_u64(), r["usage"]["output_tokens"].as_u64()) {
                (None, None) => "-".to_owned(),
                (i, o) => (i.unwrap_or(0) + o.unwrap_or(0)).to_string(),
            };
            // The W3C trace id, to find the call's span in a tracing backend.
            let trace = r["trace"]["trace_id"].as_str().unwrap_or("-");
            println!(
                "{:>5} {:>5}  {:<27} {:<28} {:<40} {:<18} {:>6} {:>8} {:>9}  {trace}",
                r["step"].to_string(),
                r["chain"]["seq"].to_string(),
                r["started_at"].as_str().unwrap_or_default(),
                r["upstream"]["host"].as_str().unwrap_or_default(),
                target,
                decision,
                r["seal"]["status"].as_u64().map_or_else(|| "-".into(), |s| s.to_string()),
                tokens,
                ms
            );
        }
        match page["next_after"].as_i64() {
            Some(next) if !items.is_empty() => after = next,
            _ => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `fleetforge-ctl verify RUN`: exit 0 only if every receipt of the run verifies (control's
/// report) and is in its tenant's transparency log, and the log is consistent with the head seen
/// last ([`crate::log`]).
pub async fn verify(c: &ControlClient, run: &str) -> anyhow::Result<ExitCode> {
    // Control checks every receipt's signature and log inclusion in this one request: a run of
    // a million receipts takes minutes.
    let report = c
        .with_timeout(std::time::Duration::from_secs(1800))
        .get(&format!("/v1/runs/{run}/verify"))
        .await
        .map_err(not_found(run))?;
    let checked = report["checked"].as_u64().unwrap_or(0);
    let mut ok = report["ok"] == true;
    if ok {
        println!("run {run}: {checked} receipts verified (signatures, proofs, chain, seq)");
    } else {
        println!("run {run}: verification FAILED ({checked} receipts checked)");
        for p in report["problems"].as_array().into_iter().flatten() {
            println!("  receipt {}: {}", p["receipt_id"].as_str().unwrap_or("?"), p["problem"].as_str().unwrap_or("?"));
        }
    }
    let tenant = c.get(&format!("/v1/runs/{run}")).await.map_err(not_found(run))?["tenant"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let receipts = all_receipts(c, run).await?;
    let findings = crate::log::check(c, &tenant, &receipts).await?;
    for line in &findings.lines {
        println!("{line}");
    }
    ok &= !findings.failed;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Every receipt of `run`, in chain order.
pub async fn all_receipts(c: &ControlClient, run: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut after = 0i64;
    loop {
        let page = c.get(&format!("/v1/runs/{run}/receipts?after={after}&limit=1000")).await.map_err(not_found(run))?;
        let items = page["receipts"].as_array().cloned().unwrap_or_default();
        let empty = items.is_empty();
        out.extend(items);
        match page["next_after"].as_i64() {
            Some(next) if !empty => after = next,
            _ => return Ok(out),
        }
    }
}

/// Milliseconds from RFC 3339 time `a` to `b`.
pub fn millis_between(a: &str, b: &str) -> Option<f64> {
    let parse = |s: &str| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
    Some((parse(b)? - parse(a)?).as_seconds_f64() * 1e3)
}
