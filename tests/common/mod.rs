//! Shared harness for the server tests: a real `lens serve` in-process on
//! port 0 with the real model, and helpers to build uploads.
#![allow(dead_code)]

pub mod processes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use lens::config::ServeArgs;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: ServeArgs,
}

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture_path(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// The rows of a CSV text, header included, read with the `csv` crate
/// (independent of the writer under test, which it only shares a format with).
pub fn csv_rows(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.expect("well-formed CSV").iter().map(str::to_owned).collect())
        .collect()
}

/// A server running in this process. Dropping it does not stop it; call `stop`.
pub struct Server {
    pub url: String,
    /// The gRPC endpoint, `http://127.0.0.1:PORT`.
    pub grpc_url: String,
    pub data_dir: PathBuf,
    pub token: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `lens serve` with the default model and these extra flags.
    pub async fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Server::start_in(tmp.path().to_path_buf(), extra).await;
        s._tmp = Some(tmp);
        s
    }

    pub async fn start_in(data_dir: PathBuf, extra: &[&str]) -> Server {
        let model = root().join("models/efficientnet-lite0");
        let mut argv: Vec<String> = vec![
            "lens".into(),
            "--model".into(),
            model.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = Wrapper::try_parse_from(argv).unwrap().args;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
        let token = CancellationToken::new();
        let listeners = lens::serve::Listeners { http: listener, grpc: Some(grpc) };
        let task = tokio::spawn(lens::serve::run_with(listeners, args, token.clone()));
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{url}/health/ready")).send().await
                && r.status() == 200
            {
                return Server { url, grpc_url, data_dir, token, task, _tmp: None };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become ready");
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// A metric's value summed over its label sets; 0 if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url)).await.unwrap().text().await.unwrap();
        metric_in(&text, name)
    }
}

pub fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn form(filename: &str, bytes: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned()))
}

pub async fn predict(client: &reqwest::Client, url: &str, filename: &str, bytes: Vec<u8>) -> (u16, serde_json::Value) {
    let r = client.post(format!("{url}/predict")).multipart(form(filename, bytes)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Byte-distinct copies of a real photo with the same pixels: a JPEG gets a
/// comment segment after SOI, a PNG an ancillary `tEXt` chunk after IHDR.
pub fn variant(bytes: &[u8], n: usize) -> Vec<u8> {
    let text = format!("lens variant {n}");
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let len = (text.len() + 2) as u16;
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xFE];
        out.extend(len.to_be_bytes());
        out.extend(text.as_bytes());
        out.extend(&bytes[2..]);
        out
    } else {
        // PNG: signature (8) + IHDR chunk (4 len + 4 type + 13 data + 4 crc).
        let at = 8 + 25;
        let mut chunk = b"tEXt".to_vec();
        chunk.extend(b"Comment\0");
        chunk.extend(text.as_bytes());
        let mut out = bytes[..at].to_vec();
        out.extend(((chunk.len() - 4) as u32).to_be_bytes());
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
        out.extend(&bytes[at..]);
        out
    }
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG with a valid header declaring `w` x `h` pixels and no image data:
/// a decompression bomb by its header.
pub fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc32(&ihdr).to_be_bytes());
    out.extend(b"\0\0\0\0IDAT\x35\xaf\x06\x1e");
    out
}

/// Waits until `GET {url}/health/ready` answers 200; panics after `limit`,
/// pointing at `logs`.
pub async fn wait_ready(url: &str, limit: Duration, logs: &Path) {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + limit;
    while !http.get(format!("{url}/health/ready")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(std::time::Instant::now() < deadline, "{url} did not become ready; see {}", logs.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A raw gRPC client of the Open Inference Protocol at `url` (`host:port`
/// or `http://host:port`).
pub async fn grpc_client(
    url: &str,
) -> lens::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel> {
    let url = if url.starts_with("http") { url.to_owned() } else { format!("http://{url}") };
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
    lens::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A ModelInfer of the default model: one BYTES input of these images.
pub fn grpc_images(images: &[Vec<u8>]) -> lens::grpc::proto::ModelInferRequest {
    use lens::grpc::proto::model_infer_request::InferInputTensor;
    let mut raw = Vec::new();
    for image in images {
        raw.extend((image.len() as u32).to_le_bytes());
        raw.extend(image);
    }
    lens::grpc::proto::ModelInferRequest {
        model_name: "efficientnet-lite0".into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![images.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes::Bytes::from(raw)],
        ..Default::default()
    }
}
