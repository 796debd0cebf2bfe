//! Reading request bodies, once, under the cost model (`super::cost`).
//!
//! Every body is read here before a handler sees it, so no handler can hold
//! more than the body's own bytes:
//! - a `Content-Length` over `--body-limit` is refused at once (413,
//!   `Connection: close`), with no byte read; a chunked body is refused at
//!   the first byte past the limit;
//! - memory is taken from the `--body-memory-mb` [`BodyBudget`] **as bytes
//!   arrive**, never for bytes only declared, so a client that declares 10 MB
//!   and sends 5 bytes holds 5 bytes (twice that while the chunks are put
//!   together, see [`ASSEMBLY_FACTOR`]);
//! - a body that sends nothing for `--body-timeout-secs` is answered 408 and
//!   its connection closed: a stalled upload holds its bytes for that long at
//!   most.
//!
//! The handler then gets the whole body as one contiguous chunk, so parsing
//! it (multipart, JSON) slices it rather than copying it again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::Instrument as _;

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::Notify;

use super::AppState;
use super::error::ApiError;

/// While a body is read, it is held as the chunks that arrived and then
/// once more as the one contiguous copy handed to the handler: twice its
/// size, until the chunks are dropped.
pub const ASSEMBLY_FACTOR: u64 = 2;

/// Memory that request bodies hold together, taken as their bytes arrive.
///
/// A body waits for memory only while the budget is spent, and the oldest
/// body still being read never waits (it may go past the budget by at most
/// one body limit): bodies that each hold part of the budget and wait for
/// more could otherwise wait for one another for ever.
#[derive(Debug)]
pub struct BodyBudget {
    total: u64,
    state: Mutex<BudgetState>,
    /// Woken whenever memory is given back or the oldest reader changes.
    changed: Notify,
}

#[derive(Debug, Default)]
struct BudgetState {
    used: u64,
    /// Sequence numbers of the bodies being read, oldest first.
    reading: BTreeSet<u64>,
    next: u64,
}

/// One request's share of the budget; given back when dropped.
#[derive(Debug)]
pub struct BodyShare {
    budget: Arc<BodyBudget>,
    seq: u64,
    held: u64,
    reading: bool,
}

impl BodyBudget {
    pub fn new(total: u64) -> Arc<Self> {
        Arc::new(BodyBudget { total: total.max(1), state: Mutex::default(), changed: Notify::new() })
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Bytes held by bodies now.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    fn lock(&self) -> MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A share for a body about to be read; it holds nothing yet.
    pub fn share(self: &Arc<Self>) -> BodyShare {
        let mut state = self.lock();
        let seq = state.next;
        state.next += 1;
        state.reading.insert(seq);
        BodyShare { budget: Arc::clone(self), seq, held: 0, reading: true }
    }

    fn give_back(&self, bytes: u64) {
        let mut state = self.lock();
        state.used = state.used.saturating_sub(bytes);
        drop(state);
        self.changed.notify_waiters();
    }
}

impl BodyShare {
    /// Takes `bytes` more, waiting while the budget is spent (unless this is
    /// the oldest body being read).
    pub async fn grow(&mut self, bytes: u64) {
        let budget = Arc::clone(&self.budget);
        loop {
            let notified = budget.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = budget.lock();
                let oldest = state.reading.first() == Some(&self.seq);
                if state.used + bytes <= budget.total || oldest {
                    state.used += bytes;
                    self.held += bytes;
                    return;
                }
            }
            notified.await;
        }
    }

    /// Gives back `bytes` of what this share holds.
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.held);
        self.held -= bytes;
        self.budget.give_back(bytes);
    }

    /// The body is read: the next oldest reader may now go past the budget.
    fn done_reading(&mut self) {
        if std::mem::take(&mut self.reading) {
            self.budget.lock().reading.remove(&self.seq);
            self.budget.changed.notify_waiters();
        }
    }

    pub fn held(&self) -> u64 {
        self.held
    }
}

impl Drop for BodyShare {
    fn drop(&mut self) {
        self.done_reading();
        let held = std::mem::take(&mut self.held);
        self.budget.give_back(held);
    }
}

/// The middleware: reads the body under the limit, the budget and the
/// progress timeout, then runs the handler with it, holding the body's
/// memory until the response is built. Bodiless requests pass.
pub async fn read_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.limits.body_bytes as u64;
    let headers = req.headers();
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => return refuse(ApiError::TooLarge(state.limits.body_bytes)),
        Some(0) => return next.run(req).await,
        // HTTP/1 with neither length nor chunks has no body; HTTP/2 (gRPC)
        // declares no length, and says at the head when there is no body.
        None if req.body().is_end_stream() => return next.run(req).await,
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let mut share = state.limits.bodies.share();
    let reading = tracing::debug_span!("read body", lens.body.bytes = tracing::field::Empty);
    let read = read_all(body, &mut share, limit, state.limits.body_timeout).instrument(reading.clone()).await;
    if let Ok(bytes) = &read {
        reading.record("lens.body.bytes", bytes.len() as i64);
    }
    drop(reading);
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(e) => return refuse(e),
    };
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    drop(share);
    response
}

/// Reads `body` whole into one chunk, taking its memory from `share`.
async fn read_all(mut body: Body, share: &mut BodyShare, limit: u64, idle: Duration) -> Result<Bytes, ApiError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ApiError::BodyTimeout(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ApiError::BadRequest(format!("cannot read the request body: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if total > limit {
            return Err(ApiError::TooLarge(limit as usize));
        }
        share.grow(data.len() as u64 * ASSEMBLY_FACTOR).await;
        chunks.push(data);
    }
    share.done_reading();
    let whole = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut whole = BytesMut::with_capacity(total as usize);
            for chunk in chunks.drain(..) {
                whole.extend_from_slice(&chunk);
            }
            whole.freeze()
        }
    };
    // The chunks are gone: the body now holds its size once.
    share.shrink(share.held().saturating_sub(total));
    Ok(whole)
}

/// A refusal that reads no more of the body: the answer goes out at once
/// and the connection closes after it (hyper would otherwise have to read
/// the rest of the body to reuse the connection).
pub fn refuse(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_share_takes_what_arrives_and_gives_it_back() {
        let budget = BodyBudget::new(100);
        let mut a = budget.share();
        a.grow(60).await;
        assert_eq!(budget.used_bytes(), 60);
        a.shrink(20);
        assert_eq!(budget.used_bytes(), 40);
        drop(a);
        assert_eq!(budget.used_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_younger_body_waits_while_the_budget_is_spent() {
        let budget = BodyBudget::new(100);
        let mut old = budget.share();
        old.grow(90).await;
        let mut young = budget.share();
        let waiting = tokio::spawn(async move {
            young.grow(20).await;
            young
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "past the budget, a younger body waits");
        drop(old);
        let young = waiting.await.unwrap();
        assert_eq!(young.held(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_body_never_waits_so_readers_cannot_deadlock() {
        let budget = BodyBudget::new(100);
        let mut old = budget.share();
        let mut young = budget.share();
        young.grow(80).await;
        // Both hold part of the budget; the oldest goes past it instead of
        // waiting for the younger one, which itself waits for more.
        tokio::time::timeout(Duration::from_secs(1), old.grow(50)).await.expect("the oldest reader must not wait");
        assert_eq!(budget.used_bytes(), 130);
        old.done_reading();
        // Now `young` is the oldest reader.
        tokio::time::timeout(Duration::from_secs(1), young.grow(50)).await.expect("now the oldest");
    }
}
