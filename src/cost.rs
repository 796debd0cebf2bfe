//! What one request may cost, written down in one place.
//!
//! Every cost a client can cause is bounded by a function of what it sent
//! and of limits with defaults (the flags named below). A limit is checked
//! while reading, before the value it bounds is built.
//!
//! | cost | bound | where |
//! |---|---|---|
//! | connections open | `--max-connections` (4096); more wait in the accept queue | `http::server` |
//! | a connection that sends no whole request head | `--header-timeout-secs` (10 s), idle keep-alive included | `http::server` |
//! | request head | 16 KiB read buffer, else 431 | `http::server` |
//! | a gRPC connection (HTTP/2) | 128 calls at once; 4 MiB of unread frames (1 MiB a call); 16 KiB of headers; pinged and closed when silent for `--header-timeout-secs` | `http::server` |
//! | a gRPC message | `--body-limit`, and the same body budget and timeout as an HTTP body; past its `grpc-timeout` a call ends and its unstarted work is dropped | `http::body`, `grpc` |
//! | body bytes | `--body-limit` (10 MiB); a larger `Content-Length` is refused unread | `http::body` |
//! | body memory | twice the bytes that arrived, from `--body-memory-mb` (64 MiB) shared by all bodies | `http::body` |
//! | a stalled body | `--body-timeout-secs` (10 s) without a byte, then 408 | `http::body` |
//! | a refused request (401, 403, 413, 429) | no body byte read; `Connection: close` | `http::body::refuse` |
//! | multipart / urlencoded parts | `--max-parts` (16), counted while parsing | `http::form`, `http::feedback` |
//! | v2 JSON | one value per leaf, no JSON tree: numbers as `f32`, at most 64 strings, unknown parameters skipped | `http::v2::infer` |
//! | v2 inputs per request (HTTP or gRPC) | 64 images or tensors ([`crate::http::v2::infer::MAX_INFER_BATCH`]) | `http::v2::infer` |
//! | v2 answer | one output entry per output name; `classification` at most the model's classes; `id` at most 256 bytes | `http::v2::infer` |
//! | decoded pixels | `--max-pixels` (40 M), and at most [`MAX_PIXELS_PER_BYTE`] per byte of the file past [`PIXEL_FLOOR`] | [`allowed_pixels`] |
//! | decode memory | what the header says, conversion copies included, from `--decode-memory-mb` (128 MiB); one image needing more is refused (413) | `predictor` |
//! | progressive JPEG scans | 8 M block passes, at least 16 and at most 500 scans | `preprocess::jpeg` |
//! | decode CPU | `--decode-threads` at once; a multi-image request is checked whole before any decode | `predictor`, `http::v2::infer` |
//! | work after the request ends | cancelled: a computation whose every waiter is gone stops before its next stage; a job already on a Redis stream is still inferred once, its answer dropped | `predictor` |
//! | time | `--request-timeout-secs` (60 s) per request, `--deadline-secs` (30 s) per prediction | `http`, `predictor` |
//! | feedback | text fields capped; images checked like predictions; per-client rate; `--feedback-max-reports` | `http::feedback` |
//!
//! So, for a v2 request of `n` inputs, the answer is at most
//! [`response_bound`]`(n)` bytes, whatever it asks for.

/// Any image may declare up to this many pixels, whatever its file size
/// (1 MiP: a 1024x1024 image decodes into 4 MiB at most).
pub const PIXEL_FLOOR: u64 = 1 << 20;

/// Past [`PIXEL_FLOOR`], an image may declare at most this many pixels per
/// byte of its file. Photos carry 2 to 20 pixels per byte as JPEG and under
/// 2 as PNG; flat graphics reach a few hundred. A 35-byte GIF that declares
/// a 6320x6320 screen (40 M pixels, 160 MB to decode) is refused from its
/// header.
pub const MAX_PIXELS_PER_BYTE: u64 = 256;

/// Pixels an image file of `file_bytes` may declare under `max_pixels`.
pub fn allowed_pixels(file_bytes: usize, max_pixels: u64) -> u64 {
    let by_size = (file_bytes as u64).saturating_mul(MAX_PIXELS_PER_BYTE).max(PIXEL_FLOOR);
    by_size.min(max_pixels)
}

/// The fixed part of any answer (names, shapes, the model's name and version).
pub const RESPONSE_BASE_BYTES: usize = 1024;
/// What one input adds to an answer at most: a row of class probabilities
/// as JSON text, or `classification` strings for every class.
pub const RESPONSE_BYTES_PER_INPUT: usize = 64 * 1024;

/// The largest answer a v2 request of `inputs` inputs can get.
pub fn response_bound(inputs: usize) -> usize {
    RESPONSE_BASE_BYTES + RESPONSE_BYTES_PER_INPUT * inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_come_with_bytes_past_the_floor() {
        assert_eq!(allowed_pixels(0, 40_000_000), PIXEL_FLOOR);
        assert_eq!(allowed_pixels(35, 40_000_000), PIXEL_FLOOR);
        assert_eq!(allowed_pixels(100_000, 40_000_000), 25_600_000);
        assert_eq!(allowed_pixels(usize::MAX, 40_000_000), 40_000_000);
        assert_eq!(allowed_pixels(0, 100), 100, "--max-pixels still caps the floor");
    }
}
