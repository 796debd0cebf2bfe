//! API keys: who may call Lens, and which paths need an admin key.
//!
//! Keys come from `--api-key` / `LENS_API_KEY` (admin keys, fixed for the
//! process) and from `--api-keys-file` (`name:key[:admin]` lines, reloaded on
//! SIGHUP). Only their SHA-256 digests are kept, compared in constant time
//! with `subtle`. Logs and metrics name a key, never show it.
//!
//! Once keys are on, every path but [`is_open_path`] needs one, as
//! `Authorization: Bearer KEY` or HTTP Basic with KEY as the password (so a
//! browser can use the upload page); [`is_admin_path`] paths need an admin key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::body::refuse;
use super::error::ApiError;

/// Paths that need an admin key, as prefixes. Changes that add admin
/// endpoints add their paths here, and only here.
const ADMIN_PREFIXES: &[&str] = &[
    // KServe model repository: load and unload.
    "/v2/repository",
    // Feedback review and export over HTTP.
    "/review",
    "/feedback/export",
    "/api/feedback/export",
    "/admin",
    // The same over gRPC.
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
];

/// The health RPCs of the gRPC front, open as `/v2/health/*` is.
const OPEN_GRPC: [&str; 2] =
    ["/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"];

/// True if `path` needs an admin key: it is an entry of `ADMIN_PREFIXES`
/// or lies below one.
pub fn is_admin_path(path: &str) -> bool {
    ADMIN_PREFIXES.iter().any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

/// True if `path` is open even with keys on: the health probes (Kubernetes
/// must reach them without a secret), and `/metrics` unless `metrics_auth`.
pub fn is_open_path(path: &str, metrics_auth: bool) -> bool {
    path.starts_with("/health/")
        || path.starts_with("/v2/health/")
        || OPEN_GRPC.contains(&path)
        || (path == "/metrics" && !metrics_auth)
}

/// The caller a key identifies; in the request's (and response's) extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name, for logs and metrics.
    pub name: Arc<str>,
    pub admin: bool,
}

/// One accepted key: its digest, never the key itself.
struct KeyEntry {
    caller: Caller,
    digest: [u8; 32],
}

/// Errors reading a keys file. Messages name the file and line, never a key.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("reading the API keys file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: {reason} (expected `name:key` or `name:key:admin`)")]
    Line { path: PathBuf, line: usize, reason: &'static str },
}

/// The accepted keys, swapped whole on reload.
pub struct ApiKeys {
    fixed: Vec<KeyEntry>,
    file: Option<PathBuf>,
    current: RwLock<Arc<Vec<KeyEntry>>>,
    metrics_auth: bool,
}

impl ApiKeys {
    /// `fixed` keys are admin keys named `api-key-1`, `api-key-2`, ...;
    /// `file` is read now and on every [`Self::reload`].
    pub fn new(fixed: &[String], file: Option<&Path>, metrics_auth: bool) -> Result<Self, KeysError> {
        let fixed = fixed.iter().enumerate().map(|(i, key)| entry(&format!("api-key-{}", i + 1), key, true)).collect();
        let keys = ApiKeys { fixed, file: file.map(Path::to_path_buf), current: RwLock::default(), metrics_auth };
        keys.reload()?;
        Ok(keys)
    }

    /// No keys: everything is open.
    pub fn off() -> Self {
        ApiKeys { fixed: Vec::new(), file: None, current: RwLock::default(), metrics_auth: false }
    }

    /// True once any key is configured, or a keys file is given (even an
    /// empty one: then nobody gets in, which is what its owner asked for).
    pub fn enabled(&self) -> bool {
        !self.fixed.is_empty() || self.file.is_some()
    }

    /// Re-reads the keys file; on an error the keys in use stay. Returns the
    /// names now accepted.
    pub fn reload(&self) -> Result<Vec<Arc<str>>, KeysError> {
        let mut all: Vec<KeyEntry> =
            self.fixed.iter().map(|e| KeyEntry { caller: e.caller.clone(), digest: e.digest }).collect();
        if let Some(path) = &self.file {
            all.extend(read_keys_file(path)?);
        }
        let names = all.iter().map(|e| Arc::clone(&e.caller.name)).collect();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(all);
        Ok(names)
    }

    /// The caller whose key this is. Every entry is compared, in constant
    /// time, so the answer's timing does not say which key came close.
    pub fn check(&self, presented: &[u8]) -> Option<Caller> {
        let digest = Sha256::digest(presented);
        let keys = Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()));
        let mut found = None;
        for e in keys.iter() {
            if bool::from(e.digest[..].ct_eq(&digest[..])) && found.is_none() {
                found = Some(e.caller.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.current.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn metrics_auth(&self) -> bool {
        self.metrics_auth
    }
}

fn entry(name: &str, key: &str, admin: bool) -> KeyEntry {
    KeyEntry { caller: Caller { name: name.into(), admin }, digest: Sha256::digest(key.as_bytes()).into() }
}

fn read_keys_file(path: &Path) -> Result<Vec<KeyEntry>, KeysError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read { path: path.to_path_buf(), source })?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason| KeysError::Line { path: path.to_path_buf(), line: i + 1, reason };
        let mut fields = line.split(':').map(str::trim);
        let (name, key, flag) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""), fields.next());
        if fields.next().is_some() {
            return Err(bad("too many `:`-separated fields"));
        }
        if name.is_empty() || key.is_empty() {
            return Err(bad("empty name or key"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
            return Err(bad("a name is letters, digits and -_.@ only"));
        }
        let admin = match flag {
            None => false,
            Some("admin") => true,
            Some(_) => return Err(bad("the third field may only be `admin`")),
        };
        keys.push(entry(name, key, admin));
    }
    Ok(keys)
}

/// The key a request presents: `Bearer KEY`, or Basic `user:KEY` (any user).
fn presented_key(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

/// The middleware: lets open paths through, then requires a key (401) and,
/// on admin paths, an admin key (403). The [`Caller`] goes into the request
/// for the limits, and into the response for the request log.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let keys = &state.keys;
    let path = req.uri().path();
    if !keys.enabled() || is_open_path(path, keys.metrics_auth()) {
        return next.run(req).await;
    }
    let checked = tracing::debug_span!("auth").in_scope(|| presented_key(req.headers()).and_then(|k| keys.check(&k)));
    let Some(caller) = checked else {
        return refuse(ApiError::Unauthorized);
    };
    if is_admin_path(path) && !caller.admin {
        let mut response = refuse(ApiError::Forbidden);
        response.extensions_mut().insert(caller);
        return response;
    }
    state.metrics.key_request(&caller.name);
    req.extensions_mut().insert(caller.clone());
    let mut response = next.run(req).await;
    response.extensions_mut().insert(caller);
    response
}

/// Reloads the keys file on every SIGHUP until `stop` is cancelled.
pub async fn reload_on_hangup(
    keys: Arc<ApiKeys>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the API keys file will not be reloaded");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hangup.recv() => match keys.reload() {
                    Ok(names) => {
                        metrics.api_keys.set(names.len() as i64);
                        tracing::info!(keys = ?names, "API keys reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "API keys not reloaded; the previous keys stay"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (keys, metrics, stop);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(header::AUTHORIZATION, format!("Basic {token}").parse().unwrap());
        h
    }

    #[test]
    fn admin_paths_match_whole_segments() {
        assert!(is_admin_path("/v2/repository/models/m/load"));
        assert!(is_admin_path("/v2/repository"));
        assert!(is_admin_path("/review"));
        assert!(is_admin_path("/review/42"));
        assert!(!is_admin_path("/reviewer"));
        assert!(!is_admin_path("/feedback"));
        assert!(!is_admin_path("/predict"));
        assert!(!is_admin_path("/v2/models/m/infer"));
    }

    #[test]
    fn only_probes_and_metrics_are_open() {
        assert!(is_open_path("/health/live", false));
        assert!(is_open_path("/v2/health/ready", true));
        assert!(is_open_path("/metrics", false));
        assert!(!is_open_path("/metrics", true));
        assert!(!is_open_path("/", false));
        assert!(!is_open_path("/healthz", false));
    }

    #[test]
    fn bearer_and_basic_present_the_key() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(presented_key(&h).unwrap(), b"s3cret");
        assert_eq!(presented_key(&basic("anyone", "s3cret")).unwrap(), b"s3cret");
        assert_eq!(presented_key(&basic("", "a:b")).unwrap(), b"a:b");
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        h.insert(header::AUTHORIZATION, "Digest x".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    #[test]
    fn keys_file_lines_are_parsed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# team keys\nalice:k-alice:admin\n\n bob : k-bob \n").unwrap();
        let keys = ApiKeys::new(&["k-flag".into()], Some(&path), false).unwrap();
        assert_eq!(keys.len(), 3);
        let alice = keys.check(b"k-alice").unwrap();
        assert!(alice.admin && &*alice.name == "alice");
        let bob = keys.check(b"k-bob").unwrap();
        assert!(!bob.admin && &*bob.name == "bob");
        assert!(keys.check(b"k-flag").unwrap().admin);
        assert!(keys.check(b"k-bo").is_none());

        for bad in ["alice", "alice:k:root", ":k", "a b:k", "a:k:admin:x"] {
            std::fs::write(&path, bad).unwrap();
            let e = keys.reload().unwrap_err().to_string();
            assert!(e.contains("line 1"), "{bad}: {e}");
            assert!(!e.contains("k-"), "the message must not show a key: {e}");
        }
        assert!(keys.check(b"k-bob").is_some(), "a bad reload keeps the previous keys");
        std::fs::write(&path, "carol:k-carol\n").unwrap();
        keys.reload().unwrap();
        assert!(keys.check(b"k-bob").is_none() && keys.check(b"k-carol").is_some());
    }
}
