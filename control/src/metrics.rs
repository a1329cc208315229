//! Prometheus metrics of the control service (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// What became of a blob offered with `PUT /v1/seals/{sha256}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealResult {
    /// Stored.
    Stored,
    /// Stored already; nothing changed.
    Duplicate,
    /// Its bytes do not hash to its address; not stored.
    Mismatch,
}

/// Control metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    batches: [AtomicU64; BUCKETS.len()],
    batch_count: AtomicU64,
    batch_micros: AtomicU64,
    /// Blobs offered, by [`SealResult`] (in declaration order).
    seals: [AtomicU64; 3],
    seal_bytes: AtomicU64,
    statements: AtomicU64,
}

impl Metrics {
    /// Counts run statements the outbox worker emitted.
    pub fn statements(&self, n: u64) {
        self.statements.fetch_add(n, Relaxed);
    }

    /// Counts a request by route and status.
    pub fn request(&self, route: &str, status: u16) {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry((route.to_owned(), status)).or_default() += 1;
    }

    /// Counts an ingest batch.
    pub fn ingested(&self, accepted: usize, duplicates: usize, rejected: usize, took: Duration) {
        self.accepted.fetch_add(accepted as u64, Relaxed);
        self.duplicates.fetch_add(duplicates as u64, Relaxed);
        self.rejected.fetch_add(rejected as u64, Relaxed);
        if let Some(i) = BUCKETS.iter().position(|b| took.as_secs_f64() <= *b) {
            self.batches[i].fetch_add(1, Relaxed);
        }
        self.batch_count.fetch_add(1, Relaxed);
        self.batch_micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Counts a blob offered for sealing; `bytes` of it were stored.
    pub fn sealed(&self, result: SealResult, bytes: usize) {
        self.seals[result as usize].fetch_add(1, Relaxed);
        self.seal_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "# HELP fleetforge_control_requests_total API requests by route and status.")?;
        writeln!(out, "# TYPE fleetforge_control_requests_total counter")?;
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            writeln!(out, "fleetforge_control_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}")?;
        }
        writeln!(out, "# HELP fleetforge_control_receipts_total Receipts offered for ingest, by result.")?;
        writeln!(out, "# TYPE fleetforge_control_receipts_total counter")?;
        writeln!(out, "fleetforge_control_receipts_total{{result=\"accepted\"}} {}", self.accepted.load(Relaxed))?;
        writeln!(out, "fleetforge_control_receipts_total{{result=\"duplicate\"}} {}", self.duplicates.load(Relaxed))?;
        writeln!(out, "fleetforge_control_receipts_total{{result=\"rejected\"}} {}", self.rejected.load(Relaxed))?;
        writeln!(out, "# HELP fleetforge_control_ingest_batch_seconds Time to verify and store one batch.")?;
        writeln!(out, "# TYPE fleetforge_control_ingest_batch_seconds histogram")?;
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.batches[i].load(Relaxed);
            writeln!(out, "fleetforge_control_ingest_batch_seconds_bucket{{le=\"{b}\"}} {cumulative}")?;
        }
        let count = self.batch_count.load(Relaxed);
        writeln!(out, "fleetforge_control_ingest_batch_seconds_bucket{{le=\"+Inf\"}} {count}")?;
        writeln!(out, "fleetforge_control_ingest_batch_seconds_sum {}", self.batch_micros.load(Relaxed) as f64 / 1e6)?;
        writeln!(out, "fleetforge_control_ingest_batch_seconds_count {count}")?;
        writeln!(out, "# HELP fleetforge_control_seals_total Sealed blobs offered with PUT /v1/seals, by result.")?;
        writeln!(out, "# TYPE fleetforge_control_seals_total counter")?;
        for (result, n) in ["stored", "duplicate", "mismatch"].iter().zip(&self.seals) {
            writeln!(out, "fleetforge_control_seals_total{{result=\"{result}\"}} {}", n.load(Relaxed))?;
        }
        writeln!(out, "# HELP fleetforge_control_seal_bytes_total Bytes of sealed blobs stored.")?;
        writeln!(out, "# TYPE fleetforge_control_seal_bytes_total counter")?;
        writeln!(out, "fleetforge_control_seal_bytes_total {}", self.seal_bytes.load(Relaxed))?;
        writeln!(
            out,
            "# HELP fleetforge_control_scitt_outbox_emitted_total Runs whose ending the outbox worker turned into a SCITT statement."
        )?;
        writeln!(out, "# TYPE fleetforge_control_scitt_outbox_emitted_total counter")?;
        writeln!(out, "fleetforge_control_scitt_outbox_emitted_total {}", self.statements.load(Relaxed))?;
        Ok(())
    }
}
