//! The repository extension: `POST /v2/repository/index`, and
//! `POST /v2/repository/models/{m}/load` and `.../unload`, handed to the
//! [`crate::http::ModelRepository`] that `serve` runs. Load returns once the
//! new version serves (or failed, leaving the old one serving); unload once
//! the model takes no new requests (its in-flight ones finish on it).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::Value;

use crate::http::error::OipError;
use crate::http::{AppState, ModelRepository, RepositoryEntry, RepositoryError};

fn repository(state: &AppState) -> Result<&dyn ModelRepository, OipError> {
    state.repository.as_deref().ok_or(OipError(RepositoryError::NoRepository.into()))
}

/// The body `{"ready": true}` lists only the versions that are ready.
pub async fn index(State(state): State<AppState>, body: Bytes) -> Result<Json<Vec<RepositoryEntry>>, OipError> {
    let only_ready = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("ready").and_then(Value::as_bool))
        .unwrap_or(false);
    let mut entries = repository(&state)?.index();
    if only_ready {
        entries.retain(|e| e.state == "READY");
    }
    Ok(Json(entries))
}

pub async fn load(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, OipError> {
    repository(&state)?.load(&name).await?;
    Ok(Json(Value::Object(Default::default())))
}

pub async fn unload(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, OipError> {
    repository(&state)?.unload(&name).await?;
    Ok(Json(Value::Object(Default::default())))
}
