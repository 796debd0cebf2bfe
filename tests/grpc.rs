//! The Open Inference Protocol over gRPC, as its clients use it: the
//! standard Python client library (`tritonclient[grpc]`, from
//! requirements-dev.txt) against a real `lens serve` process (the scenarios are
//! in tests/grpc_client.py), and a raw tonic client for what no well-behaved
//! client sends: negative or overflowing shapes, raw contents that disagree
//! with the shape, unknown datatypes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::processes::{LensProcess, RedisServer, signal};
use common::{Server, fixture, root};
use lens::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use lens::grpc::proto::{self, InferParameter, InferTensorContents, ModelInferRequest, infer_parameter};
use tonic::Code;

/// One test at a time: each runs the model on a two-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MODEL: &str = "efficientnet-lite0";
const DOG: usize = 248;

fn logs(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `lens serve` on free ports with the real model and `extra` flags.
fn serve(logs: &Path, extra: &[&str]) -> LensProcess {
    serve_model(logs, &root().join("models").join(MODEL), extra)
}

fn serve_model(logs: &Path, model: &Path, extra: &[&str]) -> LensProcess {
    let data = logs.join("data");
    let mut args = vec!["serve", "--addr", "127.0.0.1:0", "--sessions", "1", "--model", model.to_str().unwrap()];
    args.extend(["--data-dir", data.to_str().unwrap()]);
    args.extend(extra);
    let lens = LensProcess::spawn(logs, "serve", &args);
    assert!(lens.grpc.is_some(), "no gRPC address printed");
    lens
}

/// Runs one scenario of tests/grpc_client.py; panics with its output if it fails.
fn scenario(lens: &LensProcess, name: &str, extra: &[&str]) {
    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/grpc_client.py"))
        .args([name, lens.grpc.as_deref().unwrap(), &lens.url(), MODEL])
        .arg(root().join("tests/fixtures"))
        .args(extra)
        .output()
        .expect("the project venv has tritonclient (requirements-dev.txt, installed by make test)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains(&format!("ok {name}")), "{name} failed:\n{text}");
    eprintln!("{text}");
}

async fn wait_ready(lens: &LensProcess, logs: &Path) {
    common::wait_ready(&lens.url(), Duration::from_secs(60), logs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_client_library_speaks_to_lens() {
    let _one = SERIAL.lock().await;
    let logs = logs("protocol");
    let lens = serve(&logs, &[]);
    wait_ready(&lens, &logs).await;
    let model_dir = root().join("models").join(MODEL);
    tokio::task::block_in_place(|| scenario(&lens, "protocol", &[model_dir.to_str().unwrap()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_guard_grpc_as_they_guard_http_and_repository_calls_need_an_admin() {
    let _one = SERIAL.lock().await;
    let logs = logs("keys");
    std::fs::write(logs.join("keys"), "reader:user-key-123456\nops:admin-key-123456:admin\n").unwrap();
    // A repository holding the model as version 1.
    let repo = logs.join("repo");
    let v1 = repo.join(MODEL).join("1");
    std::fs::create_dir_all(&v1).unwrap();
    for f in ["model.onnx", "labels.txt", "model.toml"] {
        std::fs::copy(root().join("models").join(MODEL).join(f), v1.join(f)).unwrap();
    }
    let keys = logs.join("keys");
    let lens =
        serve_model(&logs, &v1, &["--api-keys-file", keys.to_str().unwrap(), "--models-dir", repo.to_str().unwrap()]);
    // Readiness is open to probes.
    wait_ready(&lens, &logs).await;
    tokio::task::block_in_place(|| scenario(&lens, "keys", &["user-key-123456", "admin-key-123456"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_refused_and_calls_past_their_deadline_are_not_inferred() {
    let _one = SERIAL.lock().await;
    let logs = logs("limits");
    let lens = serve(&logs, &["--body-limit", "1000000"]);
    wait_ready(&lens, &logs).await;
    tokio::task::block_in_place(|| scenario(&lens, "limits", &[]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_client_gets_resource_exhausted() {
    let _one = SERIAL.lock().await;
    let logs = logs("rate");
    let lens = serve(&logs, &["--rate-limit", "1", "--rate-burst", "2"]);
    wait_ready(&lens, &logs).await;
    tokio::task::block_in_place(|| scenario(&lens, "rate", &[]));
}

fn input(datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor { name: "x".into(), datatype: datatype.into(), shape: shape.to_vec(), ..Default::default() }
}

fn request(inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> ModelInferRequest {
    ModelInferRequest { model_name: MODEL.into(), inputs, raw_input_contents: raw, ..Default::default() }
}

fn floats(n: usize) -> Bytes {
    Bytes::from(vec![0u8; n * 4])
}

/// A BYTES tensor's raw form: each element a 4-byte length and its bytes.
fn bytes_tensor(elements: &[&[u8]]) -> Bytes {
    let mut out = Vec::new();
    for e in elements {
        out.extend((e.len() as u32).to_le_bytes());
        out.extend(*e);
    }
    Bytes::from(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_invalid_argument_and_never_a_panic() {
    let _one = SERIAL.lock().await;
    let server = Server::start(&["--sessions", "1"]).await;
    let mut c = common::grpc_client(&server.grpc_url).await;
    let pixels = 3 * 224 * 224;
    let classification = |v: infer_parameter::ParameterChoice| InferRequestedOutputTensor {
        name: "logits".into(),
        parameters: [("classification".to_owned(), InferParameter { parameter_choice: Some(v) })].into(),
    };
    let with_outputs = |mut r: ModelInferRequest, o: Vec<InferRequestedOutputTensor>| {
        r.outputs = o;
        r
    };
    let dog = Bytes::from(fixture("dog.jpeg"));
    let cases: Vec<(&str, ModelInferRequest, &str)> = vec![
        ("no input", request(vec![], vec![]), "exactly one input"),
        ("two inputs", request(vec![input("FP32", &[1]), input("FP32", &[1])], vec![]), "exactly one input"),
        ("negative shape", request(vec![input("FP32", &[-1, 3, 224, 224])], vec![floats(pixels)]), "shape"),
        (
            "overflowing shape",
            request(vec![input("FP32", &[i64::MAX, i64::MAX, 224, 224])], vec![floats(pixels)]),
            "shape",
        ),
        ("raw shorter than shape", request(vec![input("FP32", &[2, 3, 224, 224])], vec![floats(pixels)]), "values"),
        ("raw not whole floats", request(vec![input("FP32", &[1, 3, 224, 224])], vec![Bytes::from(vec![0u8; 7])]), ""),
        ("unknown datatype", request(vec![input("FP64", &[1, 3, 224, 224])], vec![floats(pixels)]), "FP64"),
        ("no data", request(vec![input("FP32", &[1, 3, 224, 224])], vec![]), "neither"),
        ("two raw entries", request(vec![input("FP32", &[1, 3, 224, 224])], vec![floats(1), floats(1)]), "entries"),
        (
            "raw and contents",
            request(
                vec![InferInputTensor {
                    contents: Some(InferTensorContents { fp32_contents: vec![0.0; pixels], ..Default::default() }),
                    ..input("FP32", &[1, 3, 224, 224])
                }],
                vec![floats(pixels)],
            ),
            "both",
        ),
        (
            "contents shorter than shape",
            request(
                vec![InferTensorContents { fp32_contents: vec![0.0; 5], ..Default::default() }]
                    .into_iter()
                    .map(|c| InferInputTensor { contents: Some(c), ..input("FP32", &[1, 3, 224, 224]) })
                    .collect(),
                vec![],
            ),
            "values",
        ),
        (
            "NaN in a tensor",
            request(
                vec![InferInputTensor {
                    contents: Some(InferTensorContents { fp32_contents: vec![f32::NAN; pixels], ..Default::default() }),
                    ..input("FP32", &[1, 3, 224, 224])
                }],
                vec![],
            ),
            "finite",
        ),
        ("BYTES length past the end", request(vec![input("BYTES", &[1])], vec![Bytes::from(vec![255u8; 8])]), ""),
        ("BYTES count disagrees", request(vec![input("BYTES", &[2])], vec![bytes_tensor(&[&dog])]), "elements"),
        ("BYTES batch too large", request(vec![input("BYTES", &[65])], vec![bytes_tensor(&[&dog])]), "shape"),
        ("corrupt image", request(vec![input("BYTES", &[1])], vec![bytes_tensor(&[b"GIF89a junk"])]), ""),
        (
            "classification of 0",
            with_outputs(
                request(vec![input("BYTES", &[1])], vec![bytes_tensor(&[&dog])]),
                vec![classification(infer_parameter::ParameterChoice::Int64Param(0))],
            ),
            "positive",
        ),
        (
            "classification as a string",
            with_outputs(
                request(vec![input("BYTES", &[1])], vec![bytes_tensor(&[&dog])]),
                vec![classification(infer_parameter::ParameterChoice::StringParam("3".into()))],
            ),
            "integer",
        ),
        (
            "unknown output",
            with_outputs(
                request(vec![input("BYTES", &[1])], vec![bytes_tensor(&[&dog])]),
                vec![InferRequestedOutputTensor { name: "nope".into(), ..Default::default() }],
            ),
            "unknown output",
        ),
        (
            "an id past 256 bytes",
            ModelInferRequest {
                id: "i".repeat(300),
                ..request(vec![input("BYTES", &[1])], vec![bytes_tensor(&[&dog])])
            },
            "id",
        ),
    ];
    for (what, req, words) in cases {
        let status = c.model_infer(req).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(words), "{what}: {:?} lacks {words:?}", status.message());
    }
    // Unknown models and versions are NOT_FOUND.
    let unknown = ModelInferRequest { model_name: "nope".into(), ..request(vec![], vec![]) };
    assert_eq!(c.model_infer(unknown).await.unwrap_err().code(), Code::NotFound);
    let version = ModelInferRequest { model_version: "9".into(), ..request(vec![], vec![]) };
    assert_eq!(c.model_infer(version).await.unwrap_err().code(), Code::NotFound);
    // RPCs Lens does not serve say so.
    let shm = c.system_shared_memory_status(proto::SystemSharedMemoryStatusRequest::default()).await.unwrap_err();
    assert_eq!(shm.code(), Code::Unimplemented);

    // After all that, a good request on the same connection: the typed
    // contents (bytes_contents) and a classification.
    let good = ModelInferRequest {
        outputs: vec![classification(infer_parameter::ParameterChoice::Int64Param(2))],
        ..request(
            vec![InferInputTensor {
                contents: Some(InferTensorContents { bytes_contents: vec![dog], ..Default::default() }),
                ..input("BYTES", &[1, 1])
            }],
            vec![],
        )
    };
    let answer = c.model_infer(good).await.unwrap().into_inner();
    assert_eq!(answer.outputs[0].shape, [1, 2]);
    let raw = &answer.raw_output_contents[0];
    let first = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
    let top = std::str::from_utf8(&raw[4..4 + first]).unwrap();
    assert!(top.ends_with(&format!(":{DOG}:Eskimo_dog")), "{top}");
    let rejected = server.metric("lens_rejected_requests_total").await;
    assert!(rejected >= 20.0, "refusals are counted: {rejected}");
    let text = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"protocol="grpc",route="/inference.GRPCInferenceService/ModelInfer",status="400""#),
        "gRPC calls are counted with their protocol:\n{text}"
    );
    server.stop().await;
}

/// A ModelInfer of one distinct FP32 tensor (distinct, so nothing is cached).
fn tensor_request(seed: usize) -> ModelInferRequest {
    let values: Vec<u8> =
        (0..3 * 224 * 224).flat_map(|i| (((i * 31 + seed * 7) % 255) as f32 / 128.0 - 1.0).to_le_bytes()).collect();
    request(vec![input("FP32", &[1, 3, 224, 224])], vec![Bytes::from(values)])
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_answers_every_accepted_grpc_call() {
    let _one = SERIAL.lock().await;
    let logs = logs("shutdown");
    let lens = serve(&logs, &[]);
    wait_ready(&lens, &logs).await;
    let c = common::grpc_client(lens.grpc.as_deref().unwrap()).await;
    // 24 calls in flight (seconds of work on one session), then SIGTERM.
    let calls: Vec<_> = (0..24)
        .map(|k| {
            let mut c = c.clone();
            tokio::spawn(async move { c.model_infer(tensor_request(k)).await.map(|r| r.into_inner().outputs.len()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&lens.child, "TERM");
    let mut answered = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(1) => answered += 1,
            other => panic!("an accepted call was dropped at shutdown: {other:?}"),
        }
    }
    assert_eq!(answered, 24);
    // New calls are refused (the listener is closed), and the process exits cleanly.
    let mut lens = lens;
    let status = tokio::task::block_in_place(|| lens.child.wait()).unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_node_on_redis_serves_grpc_through_the_job_queue() {
    let _one = SERIAL.lock().await;
    let logs = logs("redis");
    let redis = RedisServer::plain(false);
    let url = redis.url();
    let model = root().join("models").join(MODEL);
    let model = model.to_str().unwrap();
    let api = LensProcess::spawn(
        &logs,
        "api",
        &[
            "serve",
            "--redis",
            &url,
            "--addr",
            "127.0.0.1:0",
            "--model",
            model,
            "--data-dir",
            logs.join("d").to_str().unwrap(),
        ],
    );
    let _worker =
        LensProcess::spawn(&logs, "worker", &["worker", "--redis", &url, "--model", model, "--sessions", "1"]);
    wait_ready(&api, &logs).await;
    let mut c = common::grpc_client(api.grpc.as_deref().unwrap()).await;
    let dog = Bytes::from(fixture("dog.jpeg"));
    let answer = c.model_infer(request(vec![input("BYTES", &[2])], vec![bytes_tensor(&[&dog, &dog])])).await.unwrap();
    let raw = &answer.get_ref().raw_output_contents[0];
    let scores: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(scores.len(), 2000);
    let top = scores[..1000].iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert_eq!(top, DOG);
    let tensors = c.model_infer(tensor_request(1)).await.unwrap().into_inner();
    assert_eq!(tensors.outputs[0].shape, [1, 1000]);
    // The worker did the work: the API node has no model session.
    let metrics = reqwest::get(format!("{}/metrics", api.url())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("protocol=\"grpc\""), "{metrics}");
}
