//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`,
//! as Triton serves it on :8001 and `tritonclient[grpc]` calls it.
//!
//! A new front on the same predictor: each RPC calls what the `/v2` HTTP
//! routes call ([`crate::http::v2`]: the input check, the outputs plan, the
//! prediction, the repository), so it does not matter which protocol asks.
//! The gRPC router runs behind the same middleware as HTTP (keys, per-client
//! limits, the body read under `--body-limit` and the body memory budget,
//! the request log and metrics, panics caught), served by the same accept
//! loop speaking HTTP/2 ([`crate::http::server`]). Inside it, `framing`
//! checks that the body read is whole, uncompressed messages. Around it:
//! - `deadline`: the client's `grpc-timeout`, capped by
//!   `--request-timeout-secs`; past it the call ends (its work is dropped,
//!   as when the client goes) with DEADLINE_EXCEEDED;
//! - `statuses`: a refusal made by the shared middleware (an HTTP status
//!   and a JSON error) becomes the gRPC status that status means, with the
//!   same message.
//!
//! RPCs Lens does not serve (shared memory, trace and log settings, and
//! `ModelStreamInfer`) answer UNIMPLEMENTED.

pub mod service;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::http::AppState;
use crate::http::error::{ApiError, grpc_code};
use crate::predictor::PredictError;

/// The generated messages and service (`proto/grpc_service.proto`).
// The proto's comments are Triton's prose, not rustdoc: `<model name>` is no HTML tag.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links,
    rustdoc::bare_urls
)]
pub mod proto {
    tonic::include_proto!("inference");
}

/// The longest error body read back to make a gRPC status message.
const ERROR_BODY_BYTES: usize = 16 * 1024;

/// The gRPC service as a router behind Lens's middleware.
pub fn app(state: AppState) -> Router {
    let limit = state.limits.body_bytes;
    let timeout = state.limits.request_timeout;
    let service =
        proto::grpc_inference_service_server::GrpcInferenceServiceServer::new(service::Oip::new(state.clone()))
            .max_decoding_message_size(limit)
            // Answers are bounded by the cost model (crate::cost::response_bound).
            .max_encoding_message_size(usize::MAX);
    let router = tonic::service::Routes::new(service).into_axum_router().layer(middleware::from_fn(framing));
    crate::http::guarded(router, state)
        .layer(middleware::from_fn_with_state(timeout, deadline))
        .layer(middleware::from_fn(statuses))
}

/// Checks, once the body is read, that it is whole gRPC messages: each a
/// flag byte (0: uncompressed; compression is not offered) and a 4-byte
/// length, then that many bytes. A truncated or compressed message is the
/// client's error (INVALID_ARGUMENT), not a decoding failure of the server's.
async fn framing(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    // The body was read whole by the body middleware: this takes it back, no copy.
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::BadRequest("cannot read the gRPC message".into()).into_response();
    };
    if let Err(why) = check_frames(&bytes) {
        return ApiError::BadRequest(why).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// `Ok` if `body` is a sequence of complete uncompressed gRPC messages.
pub fn check_frames(mut body: &[u8]) -> Result<(), String> {
    while !body.is_empty() {
        let Some((head, rest)) = body.split_first_chunk::<5>() else {
            return Err(format!(
                "the gRPC message is truncated: {} bytes where its 5-byte prefix should be",
                body.len()
            ));
        };
        if head[0] != 0 {
            return Err("compressed gRPC messages are not accepted: send them uncompressed".into());
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > rest.len() {
            return Err(format!("the gRPC message is truncated: it declares {len} bytes and {} follow", rest.len()));
        }
        body = &rest[len..];
    }
    Ok(())
}

/// Ends the call at the client's `grpc-timeout` or the server's request
/// timeout, whichever comes first. Dropping the call drops its predictions:
/// work no one waits for any more is abandoned, as when the client goes.
async fn deadline(State(server): State<Duration>, req: Request, next: Next) -> Response {
    let asked = req.headers().get("grpc-timeout").and_then(|v| parse_timeout(v.as_bytes()));
    let limit = asked.map_or(server, |asked| asked.min(server));
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Predict(PredictError::Timeout(limit)).into_response(),
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Turns a plain HTTP answer (a refusal by the shared middleware: 401, 403,
/// 408, 413, 429, 503, 504, with a JSON `error`) into the gRPC status its
/// HTTP status means, carrying the same message. gRPC answers pass as they are.
async fn statuses(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if is_grpc(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, ERROR_BODY_BYTES).await.unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| parts.status.canonical_reason().unwrap_or("refused").to_owned());
    tonic::Status::new(grpc_code(parts.status), message).into_http::<Body>()
}

fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers.get(axum::http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_service_has_the_name_keys_and_metrics_know() {
        use tonic::server::NamedService;
        type Server = proto::grpc_inference_service_server::GrpcInferenceServiceServer<service::Oip>;
        assert_eq!(<Server as NamedService>::NAME, crate::http::GRPC_SERVICE);
        for method in crate::http::GRPC_METHODS {
            let path = format!("/{}/{method}", crate::http::GRPC_SERVICE);
            let needs_key = !crate::http::auth::is_open_path(&path, false);
            assert_eq!(needs_key, !matches!(method, "ServerLive" | "ServerReady"), "{path}");
            assert_eq!(crate::http::auth::is_admin_path(&path), method.starts_with("RepositoryModel"), "{path}");
        }
    }

    #[test]
    fn only_whole_uncompressed_messages_pass() {
        assert!(check_frames(b"").is_ok());
        assert!(check_frames(b"\0\0\0\0\x02ab\0\0\0\0\0").is_ok());
        assert!(check_frames(b"\0\0\0\0\x10abc").unwrap_err().contains("declares 16 bytes and 3 follow"));
        assert!(check_frames(b"\0\0\0").unwrap_err().contains("5-byte prefix"));
        assert!(check_frames(b"\x01\0\0\0\x01a").unwrap_err().contains("compressed"));
    }

    #[test]
    fn grpc_timeouts_parse_by_their_unit_and_reject_the_rest() {
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b""[..], b"m", b"123456789m", b"-5S", b"5x", b"1.5S", b" 5S"] {
            assert_eq!(parse_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
