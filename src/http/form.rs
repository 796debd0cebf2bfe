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
/// The part past the cap ends the parse: the body is already read whole
/// (`super::body`), so nothing is left for the client to send.
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
            return Err(ApiError::TooManyParts(max_parts));
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

/// Reads an `application/x-www-form-urlencoded` body lazily, pair by pair,
/// refusing it at the first pair past `max_parts`: a body of a million empty
/// pairs costs one pass over its bytes, not a million strings.
pub fn read_urlencoded(body: &[u8], max_parts: usize) -> Result<Vec<(String, String)>, ApiError> {
    let mut fields = Vec::new();
    for (name, value) in form_urlencoded::parse(body) {
        if fields.len() == max_parts {
            return Err(ApiError::TooManyParts(max_parts));
        }
        fields.push((name.into_owned(), value.into_owned()));
    }
    Ok(fields)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_forms_stop_at_the_part_cap() {
        let fields = read_urlencoded(b"a=1&b=two+words&c=%C3%A9", 16).unwrap();
        assert_eq!(fields[1], ("b".to_owned(), "two words".to_owned()));
        assert_eq!(fields[2].1, "\u{e9}");
        let flood = "a&".repeat(1_000_000);
        assert!(matches!(read_urlencoded(flood.as_bytes(), 16), Err(ApiError::TooManyParts(16))));
        assert_eq!(read_urlencoded(b"", 16).unwrap(), vec![]);
    }
}
