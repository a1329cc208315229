//! Sealed blobs: `PUT /v1/seals/{sha256}` (proxy or admin: store the bytes whose SHA-256 is the
//! address) and `GET /v1/seals/{sha256}` (read them back).
//!
//! A blob is stored only when its bytes hash to its address, and once: storing it again changes
//! nothing. The body is read only after the caller is authenticated, and never past
//! [`MAX_SEAL_BYTES`]. A blob belongs to the tenant that stored it first; another tenant's blob is
//! `404`, exactly as a missing one.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetforge_trust::canonical::{hex, sha256};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde_json::json;

use super::{ApiError, ApiResult, App, ErrorKind, principal, require};
use crate::auth::Role;
use crate::metrics::SealResult;

/// The largest blob `PUT /v1/seals/{sha256}` takes: 32 MiB (this route's body limit).
pub const MAX_SEAL_BYTES: usize = 32 << 20;

/// A blob's raw bytes, as OpenAPI shows them (a binary string).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code, reason = "a schema only: the handlers move the bytes as `Bytes`")]
pub struct Blob(Vec<u8>);

/// Bodies at least this large are hashed on a blocking thread.
const HASH_INLINE_MAX: usize = 256 << 10;

/// The address, when it is 64 lowercase hex digits; else `400 invalid_request` naming it.
fn address(value: &str) -> ApiResult<&str> {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Ok(value);
    }
    let shown: String = value.chars().take(80).collect();
    Err(ApiError::bad_request(format!(
        "seal address {shown:?} is not a SHA-256 digest: expected 64 lowercase hex digits"
    )))
}

/// The body, up to [`MAX_SEAL_BYTES`]; `413` past it.
async fn read_body(body: Body) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::new(
            ErrorKind::BodyTooLarge,
            format!("the blob is over the {} MiB limit of a seal", MAX_SEAL_BYTES >> 20),
        )
    };
    if axum::body::HttpBody::size_hint(&body).lower() > MAX_SEAL_BYTES as u64 {
        return Err(too_large());
    }
    match Limited::new(body, MAX_SEAL_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    }
}

/// Stores a blob under its SHA-256: `201` when new, `200` when it was stored already.
#[utoipa::path(put, path = "/v1/seals/{sha256}",
    params(("sha256" = String, Path, description = "SHA-256 of the body, 64 lowercase hex digits")),
    request_body(content = Blob, content_type = "application/octet-stream",
        description = "The blob's bytes, at most 32 MiB"),
    responses((status = 201, description = "Stored: `{address, size, created: true}`"),
        (status = 200, description = "Stored already; nothing changed: `{address, size, created: false}`"),
        (status = 400, description = "`invalid_request`: the address is not 64 lowercase hex digits"),
        (status = 403), (status = 413, description = "The body is over 32 MiB"),
        (status = 422, description = "`seal_mismatch`: the body's SHA-256 is not the address; nothing is stored")),
    security(("bearer" = [])))]
pub(super) async fn put_seal(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let p = principal(&app, &headers).await?;
    require(&p, &[Role::Proxy, Role::Admin])?;
    let address = address(&raw)?;
    let bytes = read_body(body).await?;
    let digest = if bytes.len() < HASH_INLINE_MAX {
        hex(&sha256(&bytes))
    } else {
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || hex(&sha256(&b)))
            .await
            .map_err(|e| ApiError::internal(format!("seal digest worker failed: {e}")))?
    };
    if digest != address {
        app.metrics.sealed(SealResult::Mismatch, 0);
        return Err(ApiError::new(
            ErrorKind::SealMismatch,
            format!("the body's SHA-256 is {digest}, not the address {address}; the blob was not stored"),
        ));
    }
    let created = app.store.put_seal(address, &bytes, p.write_tenant()).await?;
    let size = bytes.len();
    if created {
        app.metrics.sealed(SealResult::Stored, size);
        tracing::debug!(address, size, "seal stored");
    } else {
        app.metrics.sealed(SealResult::Duplicate, 0);
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "address": address, "size": size, "created": created }))).into_response())
}

/// The bytes of a blob.
#[utoipa::path(get, path = "/v1/seals/{sha256}",
    params(("sha256" = String, Path, description = "SHA-256 of the blob, 64 lowercase hex digits")),
    responses((status = 200, description = "The blob's bytes", content_type = "application/octet-stream", body = Blob),
        (status = 400, description = "`invalid_request`: the address is not 64 lowercase hex digits"),
        (status = 404, description = "`not_found`: no such blob in the token's tenant")),
    security(("bearer" = [])))]
pub(super) async fn get_seal(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let p = principal(&app, &headers).await?;
    let address = address(&raw)?;
    match app.store.seal(address).await? {
        Some(row) if p.can_read(&row.tenant) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], row.bytes).into_response())
        }
        _ => Err(ApiError::not_found(&format!("seal {address}"))),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::{MAX_SEAL_BYTES, address, read_body};
    use crate::api::ErrorKind;

    #[tokio::test]
    async fn a_blob_over_32_mib_is_refused_and_one_at_the_limit_is_read() {
        assert_eq!(read_body(Body::from(vec![7u8; MAX_SEAL_BYTES])).await.unwrap().len(), MAX_SEAL_BYTES);
        let err = read_body(Body::from(vec![7u8; MAX_SEAL_BYTES + 1])).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::BodyTooLarge);
        assert!(err.message.contains("32 MiB"), "{}", err.message);
        // A streamed body (no length known up front) is cut at the limit too.
        let chunks = (0..33).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1 << 20]));
        let streamed = Body::from_stream(futures_util::stream::iter(chunks));
        assert_eq!(read_body(streamed).await.unwrap_err().kind, ErrorKind::BodyTooLarge);
    }

    #[test]
    fn an_address_is_64_lowercase_hex_digits() {
        let good = "ab".repeat(32);
        assert_eq!(address(&good).unwrap(), good);
        for bad in ["AB".repeat(32), "ab".repeat(31), "ab".repeat(33), "zz".repeat(32), String::new()] {
            assert!(address(&bad).is_err(), "{bad:?}");
        }
    }
}
