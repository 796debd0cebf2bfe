//! The repository extension: `POST /v2/repository/index`, and
//! `POST /v2/repository/models/{m}/load` and `.../unload`, handed to the
//! [`crate::http::ModelRepository`] that `serve` runs. Load returns once the
//! new version serves (or failed, leaving the old one serving); unload once
//! the model takes no new requests (its in-flight ones finish on it).
//!
//! The index always lists what is served, as Triton's does: without
//! `--models-dir` it is the `--model` being served. Only load and unload need
//! a repository. [`index`], [`load`] and [`unload`] serve both protocols.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::Value;

use crate::http::error::{ApiError, OipError};
use crate::http::{AppState, ModelRepository, RepositoryEntry, RepositoryError};

fn repository<'a>(state: &'a AppState, name: &str) -> Result<&'a dyn ModelRepository, ApiError> {
    state.repository.as_deref().ok_or_else(|| RepositoryError::NoRepository(name.to_owned()).into())
}

/// Every model version on disk or served, with its state; `only_ready`
/// keeps the ready ones.
pub fn index(state: &AppState, only_ready: bool) -> Vec<RepositoryEntry> {
    let mut entries = match &state.repository {
        Some(repository) => repository.index(),
        None => state
            .models
            .all()
            .iter()
            .map(|p| RepositoryEntry {
                name: p.name().to_owned(),
                version: p.version().to_owned(),
                state: if p.is_ready() { "READY" } else { "LOADING" },
                reason: String::new(),
            })
            .collect(),
    };
    if only_ready {
        entries.retain(|e| e.state == "READY");
    }
    entries
}

pub async fn load(state: &AppState, name: &str) -> Result<(), ApiError> {
    Ok(repository(state, name)?.load(name).await?)
}

pub async fn unload(state: &AppState, name: &str) -> Result<(), ApiError> {
    Ok(repository(state, name)?.unload(name).await?)
}

/// The body `{"ready": true}` lists only the versions that are ready.
pub async fn index_route(State(state): State<AppState>, body: Bytes) -> Json<Vec<RepositoryEntry>> {
    let only_ready = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("ready").and_then(Value::as_bool))
        .unwrap_or(false);
    Json(index(&state, only_ready))
}

pub async fn load_route(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, OipError> {
    load(&state, &name).await?;
    Ok(Json(Value::Object(Default::default())))
}

pub async fn unload_route(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, OipError> {
    unload(&state, &name).await?;
    Ok(Json(Value::Object(Default::default())))
}
