//! Reading uploads: the multipart form with its part cap, and the checks
//! the original service made on a file before decoding.

use axum::extract::Multipart;
use axum::extract::multipart::{Field, MultipartError};
use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};

use super::Limits;
use super::error::ApiError;
use crate::preprocess::UPLOAD_EXTENSIONS;

/// One uploaded file.
pub struct Upload {
    pub filename: String,
    /// Lowercase extension from the filename, checked against [`UPLOAD_EXTENSIONS`].
    pub ext: String,
    pub bytes: Bytes,
}

/// Reads the multipart form: the first `file` part is the upload, other parts
/// are read into `fields` (small text fields only) and counted against the cap.
/// Past the cap, parts are read and discarded.
pub async fn read_form(
    mut form: Multipart,
    limits: &Limits,
    fields: &mut Vec<(String, String)>,
) -> Result<Option<(String, Bytes)>, ApiError> {
    let max_parts = limits.max_parts;
    let multipart_error = |e| multipart_error(e, limits.body_bytes);
    let mut file = None;
    let mut parts = 0;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        parts += 1;
        if parts > max_parts {
            // Read the rest (the body limit bounds it) so the client gets
            // the 400 instead of a connection reset mid-upload.
            let _ = read_bytes(field).await;
            continue;
        }
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" && file.is_none() {
            let filename = field.file_name().unwrap_or_default().to_owned();
            let bytes = read_bytes(field).await.map_err(multipart_error)?;
            file = Some((filename, bytes));
        } else {
            let value = read_bytes(field).await.map_err(multipart_error)?;
            if value.len() <= 8192 {
                fields.push((name, String::from_utf8_lossy(&value).into_owned()));
            }
        }
    }
    if parts > max_parts {
        return Err(ApiError::TooManyParts(max_parts));
    }
    Ok(file)
}

/// A part's bytes in one allocation of exactly their size. (`Field::bytes`
/// grows its buffer by doubling, so a 2.5 MB photo would stay in a 4 MB
/// allocation for as long as the request waits to be decoded.)
async fn read_bytes(mut field: Field<'_>) -> Result<Bytes, MultipartError> {
    let mut chunks = Vec::new();
    while let Some(chunk) = field.chunk().await? {
        chunks.push(chunk);
    }
    if chunks.len() <= 1 {
        return Ok(chunks.pop().unwrap_or_default());
    }
    let mut whole = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        whole.extend_from_slice(&chunk);
    }
    Ok(whole.freeze())
}

fn multipart_error(e: MultipartError, body_limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(body_limit)
    } else {
        ApiError::BadMultipart(e.body_text())
    }
}

/// Checks an upload the way the original did: present, non-empty, allowed
/// extension. Decoding decides the rest.
pub fn check_upload(file: Option<(String, Bytes)>) -> Result<Upload, ApiError> {
    let (filename, bytes) = file.ok_or(ApiError::NoFile)?;
    if filename.is_empty() && bytes.is_empty() {
        return Err(ApiError::NoFile);
    }
    let ext = filename.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    if !UPLOAD_EXTENSIONS.contains(&ext.as_str()) {
        return Err(ApiError::BadExtension(ext));
    }
    if bytes.is_empty() {
        return Err(ApiError::EmptyFile);
    }
    Ok(Upload { filename, ext, bytes })
}
