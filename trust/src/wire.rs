//! The messages the proxy and control exchange, defined once for both sides.
//!
//! - `POST /v1/receipts`: a [`ReceiptBatch`] in, an [`IngestResponse`] out (one [`ItemResult`]
//!   per receipt, in order). The proxy writes batches straight from its spool's bytes with
//!   [`ReceiptBatch::encode`], which produces exactly what control parses as a [`ReceiptBatch`].
//! - `GET /v1/revocations?after=N`: a [`RevocationPage`].
//! - `POST /v1/runs/{id}/budget/lease`: a [`LeaseRequest`] in, a [`Lease`] out.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/receipts` body: receipts (`fleetforge.receipt/v1` JSON), any order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReceiptBatch {
    /// Receipts (`fleetforge.receipt/v1` JSON), any order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub receipts: Vec<Value>,
}

impl ReceiptBatch {
    /// Writes a batch of already-serialized receipts (each one JSON object) into `out`, without
    /// parsing them: the form [`ReceiptBatch`] deserializes.
    pub fn encode<'a>(receipts: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"receipts\":[");
        for (i, r) in receipts.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(r);
        }
        out.extend_from_slice(b"]}");
    }
}

/// What control did with one receipt of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Stored now.
    Accepted,
    /// Stored before (ingest is idempotent by receipt id).
    Duplicate,
    /// Refused; the proxy keeps it in `rejected.jsonl`.
    Rejected,
}

/// The answer for one receipt of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ItemResult {
    /// Receipt id (or `""` when the item had none).
    pub id: String,
    /// What happened to it.
    pub status: ItemStatus,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `POST /v1/receipts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestResponse {
    /// One result per submitted receipt, in submission order.
    pub results: Vec<ItemResult>,
    /// How many were stored.
    pub accepted: usize,
    /// How many were already stored.
    pub duplicates: usize,
    /// How many were refused.
    pub rejected: usize,
}

/// `GET /v1/revocations?after=N`: revoked capability ids after sequence number `N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevocationPage {
    /// Revocation ids (hex), oldest first.
    pub revocations: Vec<String>,
    /// The sequence number to ask after next time.
    pub next_after: i64,
}

/// Amounts of a run's budget: tokens, cost and calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Slice {
    /// LLM tokens (input + output).
    #[serde(default)]
    pub tokens: u64,
    /// Cost, millionths of a US dollar.
    #[serde(default)]
    pub cost_micro_usd: u64,
    /// Calls.
    #[serde(default)]
    pub calls: u64,
}

/// `POST /v1/runs/{id}/budget/lease` body: one proxy (the holder) of a fleet sharing a run's
/// budget asks for more of it, or gives back what it does not need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The proxy asking: its receipt signing key id (its lane in the run's chain), stable across
    /// its restarts.
    pub holder: String,
    /// What the holder has committed of what it holds: used by settled calls plus reserved by
    /// calls in flight. Never given back.
    #[serde(default)]
    pub committed: Slice,
    /// How much more the holder wants (granted in full or in part: what the run has left).
    #[serde(default)]
    pub want: Slice,
    /// Give back everything held beyond `committed` (and grant nothing).
    #[serde(default)]
    pub release: bool,
}

/// The answer to a lease request: what the holder now holds of the run's budget, in total. A
/// member is `None` when the run's budget does not limit it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lease {
    /// Run id.
    pub run: String,
    /// The holder.
    pub holder: String,
    /// What the holder holds: its committed amount plus what it may still reserve.
    pub held: Held,
    /// The run's limits.
    pub limits: Held,
    /// What every holder together holds (never above the limits).
    pub leased: Slice,
}

/// Per-member amounts where a member may be unlimited (`None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Held {
    /// LLM tokens.
    pub tokens: Option<u64>,
    /// Cost, millionths of a US dollar.
    pub cost_micro_usd: Option<u64>,
    /// Calls.
    pub calls: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::{IngestResponse, ItemResult, ItemStatus, ReceiptBatch};

    #[test]
    fn an_encoded_batch_is_a_receipt_batch() {
        let receipts: [&[u8]; 2] = [br#"{"id":"a","n":1}"#, br#"{"id":"b"}"#];
        let mut out = Vec::new();
        ReceiptBatch::encode(receipts, &mut out);
        let batch: ReceiptBatch = serde_json::from_slice(&out).unwrap();
        assert_eq!(batch.receipts.len(), 2);
        assert_eq!(batch.receipts[1]["id"], "b");
        let mut empty = Vec::new();
        ReceiptBatch::encode([], &mut empty);
        assert_eq!(serde_json::from_slice::<ReceiptBatch>(&empty).unwrap().receipts.len(), 0);
    }

    #[test]
    fn results_read_as_control_writes_them() {
        let text = r#"{"results":[{"id":"a","status":"accepted"},{"id":"b","status":"rejected","error":"bad"}],"accepted":1,"duplicates":0,"rejected":1}"#;
        let r: IngestResponse = serde_json::from_str(text).unwrap();
        assert_eq!(
            r.results[1],
            ItemResult { id: "b".into(), status: ItemStatus::Rejected, error: Some("bad".into()) }
        );
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
    }
}
