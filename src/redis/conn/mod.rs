//! Connections to Redis: where Redis is ([`Redis`]: one server, or the
//! primary that Sentinels name), built once from the configuration (URL, TLS
//! files, password) and checked before anything slow starts, and connections
//! ([`Conn`]) that reconnect by themselves and, on Sentinels, follow the
//! primary through a failover ([`sentinel`]).
//!
//! `rediss://` URLs use TLS through rustls (ring provider). Without
//! `--redis-ca-file` the system's trust store verifies the server; with it,
//! only that CA does. `--redis-client-cert` and `--redis-client-key` add a
//! client certificate (mutual TLS). An ACL user and password come from the
//! URL (`rediss://user:password@host:port`), or the password from
//! `LENS_REDIS_PASSWORD`. A URL is only ever shown through [`redact`].

pub mod sentinel;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The environment variable a Redis password may come from instead of the URL.
pub const PASSWORD_ENV: &str = "LENS_REDIS_PASSWORD";

/// TLS files for a `rediss://` connection.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM certificates of the CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key: Option<PathBuf>,
}

/// A Redis configuration that cannot work. Messages never hold a password.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the Redis URL {url} is not valid: {reason} (expected redis[s]://[USER[:PASSWORD]@]HOST[:PORT][/DB] or \
         redis[s]+sentinel://[USER[:PASSWORD]@]HOST:PORT,HOST:PORT,.../SERVICE[/DB])"
    )]
    Url { url: String, reason: String },
    #[error("--redis-ca-file, --redis-client-cert and --redis-client-key need a rediss:// URL, and {0} is not one")]
    TlsWithoutRediss(String),
    #[error("the Redis URL {0} asks for unverified TLS (#insecure), which Lens does not do; give --redis-ca-file")]
    Insecure(String),
    #[error("--redis-client-cert and --redis-client-key must be given together")]
    HalfClientIdentity,
    #[error("cannot read the {what} {path}: {source}")]
    Unreadable { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the {what} {path} is not valid: {reason}")]
    Invalid { what: &'static str, path: PathBuf, reason: String },
}

/// Where Redis is: one server (`redis://`, `rediss://`), or the primary a set
/// of Sentinels names (`redis+sentinel://`, `rediss+sentinel://`).
#[derive(Clone, Debug)]
pub enum Redis {
    Server(Box<redis::Client>),
    Sentinels(Arc<sentinel::Sentinels>),
}

impl Redis {
    /// Counts failovers and reconnections (Sentinels only) in `events`.
    pub fn observe(&self, events: sentinel::Events) {
        if let Redis::Sentinels(s) = self {
            s.observe(events);
        }
    }

    /// At start-up, with Sentinels: that one answers and names a primary, or
    /// a clear error (all down, an unknown service). A single server is not
    /// checked: it may still be starting, and the node waits for it.
    pub async fn check(&self) -> Result<(), redis::RedisError> {
        match self {
            Redis::Server(_) => Ok(()),
            Redis::Sentinels(s) => s.primary().await.map(|(_, address)| {
                tracing::info!(sentinels = %s.shown, primary = %address, "the Sentinels name the Redis primary");
            }),
        }
    }
}

/// Builds where Redis is from `url`, `tls` and `env_password` (the value of
/// [`PASSWORD_ENV`], used when the URL carries none), checking everything that
/// can be checked without connecting: the URL, that TLS files go with TLS,
/// that they are readable PEM, and that the key fits the certificate.
/// Connecting is left for later: Redis may still be starting.
pub fn client(url: &str, tls: &TlsFiles, env_password: Option<&str>) -> Result<Redis, ConfigError> {
    if sentinel::is_sentinel_url(url) {
        return Ok(Redis::Sentinels(Arc::new(sentinel::Sentinels::new(url, tls, env_password)?)));
    }
    server(url, tls, env_password).map(|c| Redis::Server(Box::new(c)))
}

fn server(url: &str, tls: &TlsFiles, env_password: Option<&str>) -> Result<redis::Client, ConfigError> {
    let shown = redact(url);
    let info =
        url.into_connection_info().map_err(|e| ConfigError::Url { url: shown.clone(), reason: e.to_string() })?;
    let mut settings = info.redis_settings().clone();
    if settings.password().is_none()
        && let Some(password) = env_password.filter(|p| !p.is_empty())
    {
        settings = settings.set_password(password);
    }
    let info = info.set_redis_settings(settings);
    let uses_files = tls.ca_file.is_some() || tls.client_cert.is_some() || tls.client_key.is_some();
    match info.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => return Err(ConfigError::Insecure(shown)),
        ConnectionAddr::TcpTls { .. } => {}
        _ if uses_files => return Err(ConfigError::TlsWithoutRediss(shown)),
        _ => return redis::Client::open(info).map_err(|e| ConfigError::Url { url: shown, reason: e.to_string() }),
    }
    // ring is the one crypto provider compiled in; installing it is a no-op
    // when it already is the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certificates = tls_certificates(tls)?;
    redis::Client::build_with_tls(info, certificates)
        .map_err(|e| ConfigError::Url { url: shown, reason: e.to_string() })
}

/// Reads and checks the TLS files the way rustls will use them.
pub(crate) fn tls_certificates(tls: &TlsFiles) -> Result<redis::TlsCertificates, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let root_cert = match &tls.ca_file {
        Some(path) => {
            let pem = read(path, "Redis CA file")?;
            for cert in certificates(&pem, path, "Redis CA file")? {
                roots.add(cert).map_err(|e| invalid(path, "Redis CA file", e))?;
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (None, None) => None,
        (Some(cert_path), Some(key_path)) => {
            let client_cert = read(cert_path, "Redis client certificate")?;
            let client_key = read(key_path, "Redis client key")?;
            let chain = certificates(&client_cert, cert_path, "Redis client certificate")?;
            let key =
                PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| invalid(key_path, "Redis client key", e))?;
            // Building a client configuration checks that the key belongs to
            // the certificate.
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(key_path, "Redis client key", e))?;
            Some(redis::ClientTlsConfig { client_cert, client_key })
        }
        _ => return Err(ConfigError::HalfClientIdentity),
    };
    Ok(redis::TlsCertificates { client_tls, root_cert })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Unreadable { what, path: path.to_owned(), source })
}

fn certificates(pem: &[u8], path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(path, what, e))?;
    if certs.is_empty() {
        return Err(invalid(path, what, "it holds no PEM certificate"));
    }
    Ok(certs)
}

fn invalid(path: &Path, what: &'static str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid { what, path: path.to_owned(), reason: reason.to_string() }
}

/// `url` with its password replaced by `***`, for logs and errors. The user
/// name stays: it says which ACL user was used and is not a secret.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{user}@{host}{path}")
}

/// A connection that reconnects by itself; on Sentinels, to whichever server
/// is the primary now ([`sentinel::Following`]). It connects lazily, so a
/// node starts while Redis is down; commands fail fast while it is down (one
/// reconnect attempt per command, then an error), and the callers decide
/// what to retry. `response_timeout` must exceed the longest blocking
/// command sent on it.
pub fn connect(redis: &Redis, response_timeout: Duration) -> redis::RedisResult<Conn> {
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout));
    match redis {
        Redis::Server(client) => {
            Ok(Conn::Server(ConnectionManager::new_lazy_with_config(client.as_ref().clone(), config)?))
        }
        Redis::Sentinels(s) => Ok(Conn::Following(sentinel::Following::new(Arc::clone(s), config))),
    }
}

/// A multiplexed connection that reconnects by itself ([`connect`]). Cheap
/// to clone: clones share the connection.
#[derive(Clone)]
pub enum Conn {
    Server(ConnectionManager),
    Following(sentinel::Following),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Following(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Following(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Following(c) => c.get_db(),
        }
    }
}
