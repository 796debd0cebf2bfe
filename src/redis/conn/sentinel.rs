//! Following the Redis primary that a set of Sentinels names:
//! `redis+sentinel://[USER[:PASSWORD]@]HOST1:PORT1,HOST2:PORT2,.../SERVICE[/DB]`
//! (`rediss+sentinel://` for TLS to the Sentinels and the data nodes).
//!
//! The `redis` crate's [`redis::sentinel::SentinelClient`] answers which
//! server is the primary now; it does not follow a failover by itself. A
//! [`Following`] connection does: it holds a self-reconnecting connection to
//! the primary it last resolved, and when a command fails in a way a
//! failover causes (the connection refused or dropped, a timeout, `READONLY`
//! from a demoted primary, `UNBLOCKED` for a blocked read, `MASTERDOWN`), the
//! next command asks the Sentinels again, at most once per
//! [`RESOLVE_BACKOFF`] (plus jitter), and moves to the new primary if it
//! changed. Commands still fail fast meanwhile; the callers retry, as they do
//! while a single Redis is down. What asynchronous replication lost is put
//! back by the API nodes (a new primary has a new `run_id`: see
//! `redis::queue::recovery`).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, Value};

use super::{ConfigError, TlsFiles, redact, tls_certificates};

/// The longest a question to the Sentinels may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time between two questions to the Sentinels from one connection.
pub const RESOLVE_BACKOFF: Duration = Duration::from_millis(200);
/// The default Sentinel port.
const SENTINEL_PORT: u16 = 26379;

/// What the Sentinels' users count: failovers seen and reconnections to a
/// primary ([`crate::metrics::Metrics`] registers them).
#[derive(Clone, Debug, Default)]
pub struct Events {
    pub failovers: Counter,
    pub reconnects: Counter,
}

/// A set of Sentinels and the service they watch.
pub struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    service: String,
    /// The URL without its password, for logs and errors.
    pub shown: String,
    events: OnceLock<Events>,
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels").field("url", &self.shown).finish()
    }
}

/// A `redis+sentinel://` URL taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct SentinelUrl {
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinels: Vec<(String, u16)>,
    pub service: String,
    pub db: i64,
}

/// Whether `url` names Sentinels rather than one server.
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

/// Parses `redis[s]+sentinel://[USER[:PASSWORD]@]HOST[:PORT],.../SERVICE[/DB]`.
pub fn parse(url: &str) -> Result<SentinelUrl, ConfigError> {
    let bad = |reason: &str| ConfigError::Url { url: redact(url), reason: reason.to_owned() };
    let (tls, rest) = match url.split_once("://") {
        Some(("redis+sentinel", rest)) => (false, rest),
        Some(("rediss+sentinel", rest)) => (true, rest),
        _ => return Err(bad("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, password)) => ((!user.is_empty()).then(|| user.to_owned()), Some(password.to_owned())),
            None => ((!info.is_empty()).then(|| info.to_owned()), None),
        },
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (name, port.parse::<u16>().map_err(|_| bad("a Sentinel port is not a number"))?),
            None => (host, SENTINEL_PORT),
        };
        if name.is_empty() {
            return Err(bad("a Sentinel host is empty"));
        }
        sentinels.push((name.trim_start_matches('[').trim_end_matches(']').to_owned(), port));
    }
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let service = parts.next().ok_or_else(|| bad("the URL names no service: end it with /SERVICE"))?.to_owned();
    let db = match parts.next() {
        None => 0,
        Some(db) => db.parse().map_err(|_| bad("the database after the service is not a number"))?,
    };
    if parts.next().is_some() {
        return Err(bad("nothing may follow /SERVICE/DB"));
    }
    Ok(SentinelUrl { tls, username, password, sentinels, service, db })
}

impl Sentinels {
    /// The Sentinels of `url`; the data nodes' password falls back to
    /// `env_password`. TLS files apply to the Sentinels and the data nodes.
    pub fn new(url: &str, tls: &TlsFiles, env_password: Option<&str>) -> Result<Sentinels, ConfigError> {
        let parsed = parse(url)?;
        let shown = redact(url);
        let uses_files = tls.ca_file.is_some() || tls.client_cert.is_some() || tls.client_key.is_some();
        if uses_files && !parsed.tls {
            return Err(ConfigError::TlsWithoutRediss(shown));
        }
        let addrs = parsed.sentinels.iter().map(|(host, port)| match parsed.tls {
            true => ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure: false, tls_params: None },
            false => ConnectionAddr::Tcp(host.clone(), *port),
        });
        let mut builder = SentinelClientBuilder::new(addrs, &parsed.service, SentinelServerType::Master)
            .map_err(|e| ConfigError::Url { url: shown.clone(), reason: e.to_string() })?
            .set_client_to_redis_db(parsed.db);
        if let Some(user) = &parsed.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = parsed.password.as_deref().or(env_password.filter(|p| !p.is_empty())) {
            builder = builder.set_client_to_redis_password(password);
        }
        if parsed.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_redis_certificates(tls_certificates(tls)?)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_certificates(tls_certificates(tls)?);
        }
        let client = builder.build().map_err(|e| ConfigError::Url { url: shown.clone(), reason: e.to_string() })?;
        Ok(Sentinels {
            client: tokio::sync::Mutex::new(client),
            service: parsed.service,
            shown,
            events: OnceLock::new(),
        })
    }

    /// Counts failovers and reconnections in `events` from now on.
    pub fn observe(&self, events: Events) {
        let _ = self.events.set(events);
    }

    /// A client of the primary the Sentinels name now, and its address.
    pub async fn primary(&self) -> Result<(redis::Client, String), RedisError> {
        let asked = async {
            let client = self.client.lock().await.async_get_client().await?;
            let address = client.get_connection_info().addr().to_string();
            Ok::<_, RedisError>((client, address))
        };
        match tokio::time::timeout(RESOLVE_TIMEOUT, asked).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(self.unresolved(e.to_string())),
            Err(_) => Err(self.unresolved(format!("no answer within {RESOLVE_TIMEOUT:?}"))),
        }
    }

    fn unresolved(&self, why: String) -> RedisError {
        let message = format!("no primary for service {:?} from the Sentinels of {}: {why}", self.service, self.shown);
        RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, message))
    }
}

/// Whether `e` is what a failover looks like from a connection.
pub fn follows_failover(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "UNBLOCKED" | "MASTERDOWN" | "LOADING"))
}

/// A connection to whichever server the Sentinels name as primary.
#[derive(Clone)]
pub struct Following {
    shared: Arc<Shared>,
}

struct Shared {
    sentinels: Arc<Sentinels>,
    config: ConnectionManagerConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The primary in use: its address and a connection to it.
    current: Option<(String, ConnectionManager)>,
    /// A command failed the way a failover makes it fail: ask again.
    stale: bool,
    last_asked: Option<Instant>,
}

impl Following {
    pub fn new(sentinels: Arc<Sentinels>, config: ConnectionManagerConfig) -> Self {
        Following { shared: Arc::new(Shared { sentinels, config, state: Mutex::new(State::default()) }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection to use now: the current primary's, unless it is stale
    /// (or there is none) and the Sentinels may be asked again.
    async fn manager(&self) -> Result<ConnectionManager, RedisError> {
        let (current, ask) = {
            let state = self.state();
            let due = state.last_asked.is_none_or(|at| at.elapsed() >= RESOLVE_BACKOFF + jitter());
            (state.current.as_ref().map(|(_, m)| m.clone()), (state.stale || state.current.is_none()) && due)
        };
        if !ask {
            return current.ok_or_else(|| self.shared.sentinels.unresolved("asked too recently".into()));
        }
        self.state().last_asked = Some(Instant::now());
        let (client, address) = match self.shared.sentinels.primary().await {
            Ok(found) => found,
            Err(e) => return current.ok_or(e),
        };
        let mut state = self.state();
        state.stale = false;
        match &state.current {
            Some((now, manager)) if *now == address => return Ok(manager.clone()),
            Some((before, _)) => {
                tracing::warn!(from = %before, to = %address, "the Redis primary moved; following it");
                if let Some(events) = self.shared.sentinels.events.get() {
                    events.failovers.inc();
                }
            }
            None => tracing::info!(primary = %address, "connected to the Redis primary the Sentinels name"),
        }
        if let Some(events) = self.shared.sentinels.events.get() {
            events.reconnects.inc();
        }
        let manager = ConnectionManager::new_lazy_with_config(client, self.shared.config.clone())?;
        state.current = Some((address, manager.clone()));
        Ok(manager)
    }

    fn failed(&self, e: &RedisError) {
        if follows_failover(e) {
            self.state().stale = true;
        }
    }
}

/// Up to 100 ms, so that nodes do not ask the Sentinels in step.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    Duration::from_millis(u64::from(nanos % 100))
}

impl ConnectionLike for Following {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut manager = self.manager().await?;
            let result = manager.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.failed(e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut manager = self.manager().await?;
            let result = manager.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.failed(e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.state().current.as_ref().map_or(0, |(_, m)| m.get_db())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_hosts_a_service_and_credentials() {
        let u = parse("redis+sentinel://app:s3cret@a:26379,b:26380,c/mymaster/2").unwrap();
        assert_eq!(u.sentinels, [("a".into(), 26379), ("b".into(), 26380), ("c".into(), 26379)]);
        assert_eq!((u.service.as_str(), u.db, u.tls), ("mymaster", 2, false));
        assert_eq!((u.username.as_deref(), u.password.as_deref()), (Some("app"), Some("s3cret")));
        let t = parse("rediss+sentinel://[::1]:5000/svc").unwrap();
        assert_eq!((t.sentinels, t.tls, t.password), (vec![("::1".into(), 5000)], true, None));
        for bad in [
            "redis+sentinel://a:1",
            "redis+sentinel://a:x/s",
            "redis+sentinel://,a/s",
            "redis://a/s",
            "redis+sentinel://a/s/x",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(!e.contains("s3cret"), "{e}");
        }
        let e = parse("redis+sentinel://u:s3cret@a:1").unwrap_err().to_string();
        assert!(e.contains("no service") && !e.contains("s3cret"), "{e}");
    }
}
