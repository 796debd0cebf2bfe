//! Per-client limits: a token bucket per client (the `governor` crate) and a
//! cap on each client's requests in flight, so one client can neither flood
//! Lens nor hold every admission permit.
//!
//! A client is its API key when keys are on, else its IP address (an IPv6
//! client by its /64, which one host usually owns whole). The address is the
//! peer's, or with `--trust-proxy` the last one in `X-Forwarded-For` (the one
//! the proxy added; earlier ones are whatever the client sent).
//!
//! Memory is bounded: about `max_clients` clients are tracked. When the table
//! is full, buckets that have refilled are dropped (`retain_recent`, at most
//! once a second); while it stays full, requests count against one shared
//! overflow bucket, so a flood of addresses degrades to one global limit
//! rather than to unbounded memory.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use super::auth::{Caller, is_open_path};
use super::body::refuse;
use super::error::ApiError;

/// Who a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientId {
    Key(Arc<str>),
    Ip(IpAddr),
    /// Every new client once the table is full.
    Overflow,
}

/// The limits' settings (from `AccessArgs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitsConfig {
    pub rate_per_sec: Option<f64>,
    pub burst: Option<u32>,
    pub max_inflight: Option<usize>,
    pub max_clients: usize,
    pub trust_proxy: bool,
    /// Feedback reports per minute per client; `None`: unlimited.
    pub feedback_per_minute: Option<u32>,
}

pub struct ClientLimits {
    rate: Option<DefaultKeyedRateLimiter<ClientId>>,
    /// Feedback reports, per client: the database and the image store are
    /// shared by every client, so one must not fill them.
    feedback: Option<DefaultKeyedRateLimiter<ClientId>>,
    max_inflight: Option<usize>,
    /// Requests in flight per client; an entry lives while it is non-zero.
    inflight: Mutex<HashMap<ClientId, usize>>,
    max_clients: usize,
    trust_proxy: bool,
    last_sweep: Mutex<Instant>,
}

impl ClientLimits {
    /// Fails on a rate that is not a positive, finite number.
    pub fn new(cfg: LimitsConfig) -> Result<Self, String> {
        let rate = match cfg.rate_per_sec {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 => {
                let period = Duration::try_from_secs_f64(1.0 / r).map_err(|e| e.to_string())?;
                let burst = cfg.burst.unwrap_or_else(|| r.ceil().clamp(1.0, u32::MAX as f64) as u32);
                let quota = Quota::with_period(period)
                    .ok_or("--rate-limit is too high")?
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
                Some(RateLimiter::keyed(quota))
            }
            Some(r) => return Err(format!("--rate-limit must be a positive number, not {r}")),
        };
        let feedback =
            cfg.feedback_per_minute.and_then(NonZeroU32::new).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        Ok(ClientLimits {
            rate,
            feedback,
            max_inflight: cfg.max_inflight,
            inflight: Mutex::default(),
            max_clients: cfg.max_clients.max(1),
            trust_proxy: cfg.trust_proxy,
            last_sweep: Mutex::new(Instant::now()),
        })
    }

    pub fn is_off(&self) -> bool {
        self.rate.is_none() && self.max_inflight.is_none()
    }

    /// The client a request counts against.
    pub fn client_id(&self, caller: Option<&Caller>, peer: Option<IpAddr>, headers: &HeaderMap) -> ClientId {
        if let Some(c) = caller {
            return ClientId::Key(Arc::clone(&c.name));
        }
        let forwarded = self.trust_proxy.then(|| last_forwarded(headers)).flatten();
        match forwarded.or(peer) {
            Some(ip) => ClientId::Ip(client_net(ip)),
            None => ClientId::Overflow,
        }
    }

    /// Takes a token from the client's bucket, or says how many seconds
    /// until one is there.
    pub fn check_rate(&self, id: &ClientId) -> Result<(), u64> {
        self.rate.as_ref().map_or(Ok(()), |rate| self.take_token(rate, id))
    }

    /// Takes a token from the client's feedback bucket, or says how many
    /// seconds until one is there.
    pub fn check_feedback(&self, id: &ClientId) -> Result<(), u64> {
        self.feedback.as_ref().map_or(Ok(()), |feedback| self.take_token(feedback, id))
    }

    /// One token of `limiter` for `id`. While the table is full, refilled
    /// buckets are dropped (at most once a second) and new clients share the
    /// overflow bucket.
    fn take_token(&self, limiter: &DefaultKeyedRateLimiter<ClientId>, id: &ClientId) -> Result<(), u64> {
        if limiter.len() >= self.max_clients && self.sweep_due() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let id = if limiter.len() >= self.max_clients { &ClientId::Overflow } else { id };
        limiter.check_key(id).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }

    fn sweep_due(&self) -> bool {
        let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.elapsed() >= Duration::from_secs(1);
        if due {
            *last = Instant::now();
        }
        due
    }

    /// Counts a request in flight for `id` until the guard drops, or
    /// refuses it with the client's cap.
    pub fn enter(self: &Arc<Self>, id: ClientId) -> Result<InFlight, usize> {
        let Some(cap) = self.max_inflight else {
            return Ok(InFlight { limits: None, id });
        };
        let mut table = self.table();
        let id = if !table.contains_key(&id) && table.len() >= self.max_clients { ClientId::Overflow } else { id };
        let n = table.entry(id.clone()).or_insert(0);
        if *n >= cap {
            return Err(cap);
        }
        *n += 1;
        Ok(InFlight { limits: Some(Arc::clone(self)), id })
    }

    fn table(&self) -> MutexGuard<'_, HashMap<ClientId, usize>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Clients tracked now (rate buckets or requests in flight, whichever more).
    pub fn tracked(&self) -> usize {
        let buckets = self.rate.as_ref().map_or(0, |r| r.len());
        buckets.max(self.table().len())
    }
}

/// One request in flight; dropping it frees the client's slot.
pub struct InFlight {
    limits: Option<Arc<ClientLimits>>,
    id: ClientId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(limits) = &self.limits else { return };
        let mut table = limits.table();
        if let Some(n) = table.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.id);
            }
        }
    }
}

/// The last parseable address of the last `X-Forwarded-For` header.
fn last_forwarded(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
    value.rsplit(',').next()?.trim().parse().ok()
}

/// The address a client is counted by: IPv4 as is, IPv6 by its /64.
fn client_net(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// The middleware: 429 with `Retry-After` past the client's rate or its
/// requests in flight. Health probes and `/metrics` are never limited.
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limits = &state.client_limits;
    if limits.is_off() || is_open_path(req.uri().path(), false) {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let admitted = tracing::debug_span!("client limits").in_scope(|| {
        let id = limits.client_id(req.extensions().get::<Caller>(), peer, req.headers());
        limits.check_rate(&id).map_err(ApiError::RateLimited)?;
        limits.enter(id).map_err(ApiError::ClientBusy)
    });
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(e) => return refuse(e),
    };
    state.metrics.tracked_clients.set(limits.tracked() as i64);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cfg: LimitsConfig) -> Arc<ClientLimits> {
        Arc::new(ClientLimits::new(LimitsConfig { max_clients: cfg.max_clients.max(1), ..cfg }).unwrap())
    }

    fn ip(s: &str) -> ClientId {
        ClientId::Ip(s.parse().unwrap())
    }

    #[test]
    fn the_bucket_allows_the_burst_then_says_when_to_retry() {
        let l = limits(LimitsConfig { rate_per_sec: Some(0.5), burst: Some(2), max_clients: 10, ..Default::default() });
        assert!(l.check_rate(&ip("10.0.0.1")).is_ok());
        assert!(l.check_rate(&ip("10.0.0.1")).is_ok());
        assert_eq!(l.check_rate(&ip("10.0.0.1")), Err(2), "one token per 2 s");
        assert!(l.check_rate(&ip("10.0.0.2")).is_ok(), "another client has its own bucket");
    }

    #[test]
    fn a_full_table_puts_new_clients_in_one_overflow_bucket() {
        let l = limits(LimitsConfig { rate_per_sec: Some(0.01), burst: Some(1), max_clients: 2, ..Default::default() });
        assert!(l.check_rate(&ip("10.0.0.1")).is_ok());
        assert!(l.check_rate(&ip("10.0.0.2")).is_ok());
        assert!(l.check_rate(&ip("10.0.0.3")).is_ok(), "overflow bucket, first token");
        assert!(l.check_rate(&ip("10.0.0.4")).is_err(), "overflow bucket is shared");
        assert!(l.tracked() <= 3);
    }

    #[test]
    fn requests_in_flight_are_capped_per_client_and_freed_on_drop() {
        let l = limits(LimitsConfig { max_inflight: Some(2), max_clients: 10, ..Default::default() });
        let a = l.enter(ip("10.0.0.1")).unwrap();
        let _b = l.enter(ip("10.0.0.1")).unwrap();
        assert_eq!(l.enter(ip("10.0.0.1")).err(), Some(2));
        let _c = l.enter(ip("10.0.0.2")).unwrap();
        drop(a);
        let _d = l.enter(ip("10.0.0.1")).unwrap();
        drop((_b, _c, _d));
        assert_eq!(l.tracked(), 0, "idle clients are not kept");
    }

    #[test]
    fn feedback_has_its_own_bucket_per_client() {
        let l = limits(LimitsConfig { feedback_per_minute: Some(2), max_clients: 10, ..Default::default() });
        assert!(l.check_feedback(&ip("10.0.0.1")).is_ok());
        assert!(l.check_feedback(&ip("10.0.0.1")).is_ok());
        assert_eq!(l.check_feedback(&ip("10.0.0.1")), Err(30), "one report per 30 s");
        assert!(l.check_feedback(&ip("10.0.0.2")).is_ok());
        assert!(l.check_rate(&ip("10.0.0.1")).is_ok(), "requests in general are not limited");
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        let peer = Some("127.0.0.1".parse().unwrap());
        let open = limits(LimitsConfig { max_clients: 1, ..Default::default() });
        assert_eq!(open.client_id(None, peer, &h), ip("127.0.0.1"));
        let proxied = limits(LimitsConfig { trust_proxy: true, max_clients: 1, ..Default::default() });
        assert_eq!(proxied.client_id(None, peer, &h), ip("5.6.7.8"));
        let caller = Caller { name: "alice".into(), admin: false };
        assert_eq!(proxied.client_id(Some(&caller), peer, &h), ClientId::Key("alice".into()));
        let v6 = Some("2001:db8:1:2:3:4:5:6".parse().unwrap());
        assert_eq!(open.client_id(None, v6, &HeaderMap::new()), ip("2001:db8:1:2::"));
    }
}
