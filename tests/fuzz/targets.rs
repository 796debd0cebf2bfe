//! The fuzz targets: every parser that reads bytes from a client or from
//! Redis, each with small valid seeds and a dictionary of its tokens.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use axum::extract::{FromRequest, Multipart};
use base64::Engine as _;
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, Rgba};
use lens::http::Limits;
use lens::http::form::{check_upload, read_form, read_urlencoded};
use lens::http::v2::infer::{Answering, ModelFacts, Payload, Scores, parse_request, respond};
use lens::job::{JobError, JobOutput, ModelInput};
use lens::model::{ChannelOrder, InputSpec, Interpolation, Layout, ModelSpec, ResizeKind, ResizeSpec};
use lens::preprocess::{Prepared, prepare, sniff_format};
use lens::redis::codec;
use redis::streams::StreamId;

use super::engine::Target;

pub const TARGETS: [Target; 6] = [
    Target { name: "form", seeds: form_seeds, dictionary: FORM_DICT, run: form, max_len: 64 * 1024 },
    Target { name: "image", seeds: image_seeds, dictionary: IMAGE_DICT, run: image, max_len: 64 * 1024 },
    Target { name: "v2", seeds: v2_seeds, dictionary: V2_DICT, run: v2, max_len: 16 * 1024 },
    Target { name: "grpc", seeds: grpc_seeds, dictionary: GRPC_DICT, run: grpc, max_len: 16 * 1024 },
    Target { name: "codec", seeds: codec_seeds, dictionary: CODEC_DICT, run: codec_target, max_len: 4 * 1024 },
    Target { name: "model_toml", seeds: toml_seeds, dictionary: TOML_DICT, run: model_toml, max_len: 8 * 1024 },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// An outcome label: the kind of an error, not its details. Quoted input,
/// source excerpts (TOML's `|` lines) and digits are dropped, so that
/// "12 bytes" and "13 bytes" count as one outcome and the corpus only grows
/// on a new way of failing.
fn label(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains('|')).collect();
    let text = lines.join(" / ");
    let cut = text.find(['"', '`', '\'', '{', '[', '(']).unwrap_or(text.len());
    text[..cut].chars().filter(|c| !c.is_ascii_digit()).take(80).collect()
}

// ------------------------------------------------------------------ multipart

const BOUNDARY: &str = "lensfuzzboundary";

/// Input: the Content-Type header value, a newline, then the body.
fn form(data: &[u8]) -> String {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (content_type, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let Ok(content_type) = axum::http::HeaderValue::from_bytes(content_type) else {
        return "unrepresentable header".into();
    };
    let base = crate::cost::start();
    let outcome = parse_form(content_type, body);
    within_cost("form parse", body.len(), crate::cost::peak_since(base));
    outcome
}

/// A multipart body as `read_form` reads it; a urlencoded one as
/// `read_urlencoded` does.
fn parse_form(content_type: axum::http::HeaderValue, body: &[u8]) -> String {
    if content_type.as_bytes().starts_with(b"application/x-www-form-urlencoded") {
        return match read_urlencoded(body, 16) {
            Ok(fields) => format!("ok urlencoded with {} fields", fields.len().min(3)),
            Err(e) => format!("form: {}", label(e.reason())),
        };
    }
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/predict")
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a request from valid parts");
    let limits = Limits {
        body_bytes: 64 * 1024,
        max_parts: 16,
        request_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        bodies: lens::http::body::BodyBudget::new(1 << 20),
        trust_proxy: false,
    };
    runtime().block_on(async move {
        let multipart = match Multipart::from_request(request, &()).await {
            Ok(m) => m,
            Err(e) => return format!("rejected: {}", label(e.body_text())),
        };
        let mut fields = Vec::new();
        match read_form(multipart, &limits, &mut fields).await {
            Err(e) => format!("form: {}", label(e.reason())),
            Ok(file) => match check_upload(file) {
                Ok(upload) => format!("upload .{} with {} fields", upload.ext, fields.len().min(3)),
                Err(e) => format!("upload: {} with {} fields", e.reason(), fields.len().min(3)),
            },
        }
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime"))
}

fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut out = format!("multipart/form-data; boundary={BOUNDARY}\n").into_bytes();
    for (name, filename, value) in parts {
        out.extend(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"").bytes());
        if let Some(f) = filename {
            out.extend(format!("; filename=\"{f}\"\r\nContent-Type: image/png").bytes());
        }
        out.extend(b"\r\n\r\n");
        out.extend(*value);
        out.extend(b"\r\n");
    }
    out.extend(format!("--{BOUNDARY}--\r\n").bytes());
    out
}

fn form_seeds() -> Vec<Vec<u8>> {
    let png = tiny(ImageFormat::Png);
    vec![
        multipart(&[("file", Some("a.png"), &png)]),
        multipart(&[("top_k", None, b"5"), ("file", Some("photo.JPG"), b"\xff\xd8\xff")]),
        multipart(&[("report", None, b"{}"), ("correct_label", None, b"cat"), ("file", Some(""), b"")]),
        multipart(&[("file", Some("x.txt"), b"hello"), ("file", Some("b.gif"), b"GIF89a")]),
        format!("multipart/form-data; boundary={BOUNDARY}\n--{BOUNDARY}--\r\n").into_bytes(),
        b"application/x-www-form-urlencoded\nfile=a.png".to_vec(),
    ]
}

const FORM_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"--lensfuzzboundary",
    b"--lensfuzzboundary--",
    b"Content-Disposition: form-data; ",
    b"name=\"file\"",
    b"filename=\"",
    b"filename*=UTF-8''%e2%82%ac.png",
    b"Content-Type: ",
    b"Content-Transfer-Encoding: base64",
    b"multipart/form-data; boundary=",
    b"\"",
    b";",
    b".png",
    b".jpeg",
];

// ---------------------------------------------------------------------- image

fn image(data: &[u8]) -> String {
    let format = sniff_format(data);
    // The last byte picks the geometry, so that both resize paths are fuzzed.
    let squash = data.last().is_some_and(|b| b & 1 == 1);
    let spec = ResizeSpec {
        width: 32,
        height: if squash { 24 } else { 32 },
        kind: if squash { ResizeKind::Squash } else { ResizeKind::CenterCrop },
        crop_fraction: 0.875,
        interpolation: if squash { Interpolation::Lanczos3 } else { Interpolation::Bicubic },
    };
    // A small pixel cap keeps each case fast; the check itself is what is fuzzed.
    match prepare(data, &spec, 4_000_000) {
        Ok(p) => {
            assert_eq!(p.rgb.len(), p.width as usize * p.height as usize * 3, "prepared buffer of the wrong size");
            format!("{format:?} ok {}x{}", p.width, p.height)
        }
        Err(e) => format!("{format:?} {}", label(e)),
    }
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).expect("encoding a seed");
    bytes.into_inner()
}

fn tiny(format: ImageFormat) -> Vec<u8> {
    let img =
        ImageBuffer::from_fn(9, 7, |x, y| Rgba([(x * 28) as u8, (y * 36) as u8, 128, if x > 4 { 255 } else { 90 }]));
    match format {
        ImageFormat::Bmp | ImageFormat::Gif => {
            encode(DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(img).to_rgb8()), format)
        }
        _ => encode(DynamicImage::ImageRgba8(img), format),
    }
}

fn image_seeds() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generated");
    let mut seeds: Vec<Vec<u8>> =
        [ImageFormat::Png, ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::WebP].into_iter().map(tiny).collect();
    let gray = ImageBuffer::from_fn(5, 5, |x, _| Rgb([x as u8 * 50, 0, 0]));
    seeds.push(encode(DynamicImage::ImageRgb8(gray).grayscale(), ImageFormat::Png));
    for name in ["cmyk_plain.jpg", "cmyk_adobe.jpg"] {
        if let Ok(bytes) = std::fs::read(root.join(name)) {
            seeds.push(bytes);
        }
    }
    seeds
}

const IMAGE_DICT: &[&[u8]] = &[
    b"\xff\xd8\xff\xe0",
    b"\xff\xc0\x00\x11\x08",
    b"\xff\xc2",
    b"\xff\xda",
    b"\xff\xd9",
    b"\xff\xe1\x00\x22Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08",
    b"\x89PNG\r\n\x1a\n",
    b"IHDR",
    b"IDAT",
    b"eXIf",
    b"IEND",
    b"GIF89a",
    b"NETSCAPE2.0",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"VP8X",
    b"BM",
    b"\x28\x00\x00\x00",
];

// ----------------------------------------------------------------- KServe v2

/// A parse may hold at most this many bytes per input byte, plus
/// [`PARSE_BASE_BYTES`]: the body once as a copy, numbers as `f32`s (4 bytes
/// for at least 2 of JSON), and vectors that grow by doubling.
const PARSE_BYTES_PER_INPUT_BYTE: usize = 8;
const PARSE_BASE_BYTES: usize = 64 * 1024;

fn within_cost(what: &str, input: usize, peak: usize) {
    let bound = PARSE_BYTES_PER_INPUT_BYTE * input + PARSE_BASE_BYTES;
    assert!(peak <= bound, "{what}: {peak} bytes allocated for {input} input bytes (bound {bound})");
}

fn v2(data: &[u8]) -> String {
    let model = ModelFacts { shape: [-1, 3, 2, 2], classes: 5, output: "logits" };
    let base = crate::cost::start();
    let parsed = parse_request(&model, None, bytes::Bytes::copy_from_slice(data));
    within_cost("v2 parse", data.len(), crate::cost::peak_since(base));
    match parsed {
        Ok(plan) => {
            let n = match &plan.payload {
                Payload::Images(i) => i.len(),
                Payload::Tensors(_, n) => *n,
            };
            let labels: Vec<String> = ["cat", "dog", "=cmd|' /C calc'!A0", "\"quoted\"", "x"].map(String::from).into();
            let facts = Answering { model: "m", version: "1", output: "logits", labels: &labels };
            let rows: Vec<Scores> = (0..n).map(|i| Scores::from(vec![0.1 * i as f32, 0.2, 0.3, 0.15, 0.25])).collect();
            let response = respond(&facts, plan.id.clone(), &rows, &plan.outputs);
            let body = runtime().block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap();
            assert!(body.len() <= lens::cost::response_bound(n), "an answer of {} bytes for {n} inputs", body.len());
            let inputs = match &plan.payload {
                Payload::Images(i) => format!("{} images", i.len().min(3)),
                Payload::Tensors(values, n) => {
                    assert_eq!(values.len(), n * 12, "tensors of the wrong size");
                    format!("{} tensors", n.min(&3))
                }
            };
            let classes: Vec<_> = plan.outputs.iter().map(|o| o.class_count).collect();
            format!("ok {inputs}, classification {classes:?}")
        }
        // The unsupported datatype's name is the client's text.
        Err(e) if e.to_string().starts_with("datatype ") => "datatype unsupported".into(),
        Err(e) => label(e),
    }
}

fn v2_seeds() -> Vec<Vec<u8>> {
    let png = base64::engine::general_purpose::STANDARD.encode(tiny(ImageFormat::Png));
    vec![
        format!(r#"{{"id":"a","inputs":[{{"name":"image","shape":[1],"datatype":"BYTES","data":["{png}"]}}],"outputs":[{{"name":"logits","parameters":{{"classification":3}}}}]}}"#).into_bytes(),
        br#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[0,0.5,1,-1,2,3,4,5,6,7,8,9.5]}]}"#.to_vec(),
        br#"{"inputs":[{"name":"input","shape":[2,3,2,2],"datatype":"FP32","data":[0,1,2,3,4,5,6,7,8,9,10,11,0,1,2,3,4,5,6,7,8,9,10,11]}],"outputs":[]}"#.to_vec(),
        br#"{"inputs":[]}"#.to_vec(),
    ]
}

const V2_DICT: &[&[u8]] = &[
    b"\"inputs\"",
    b"\"outputs\"",
    b"\"datatype\"",
    b"\"BYTES\"",
    b"\"FP32\"",
    b"\"shape\"",
    b"\"data\"",
    b"\"parameters\"",
    b"\"classification\"",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"1e999",
    b"-9223372036854775808",
    b"18446744073709551615",
    b"\"\\u0000\"",
    b"\"=\"",
];

// ------------------------------------------------------------ gRPC ModelInfer

/// A `ModelInferRequest` as protobuf bytes, decoded as tonic decodes it and
/// checked as the gRPC front checks it; an accepted one is answered, and the
/// answer must stay within [`lens::cost::response_bound`].
fn grpc(data: &[u8]) -> String {
    use lens::grpc::proto::ModelInferRequest;
    use lens::http::v2::infer::{OutputPlan, Rendered};
    use prost::Message;
    let model = ModelFacts { shape: [-1, 3, 2, 2], classes: 5, output: "logits" };
    let base = crate::cost::start();
    let decoded = ModelInferRequest::decode(bytes::Bytes::copy_from_slice(data));
    let checked = decoded.map_err(|e| format!("protobuf: {e}")).map(|req| lens::grpc::service::check(&model, req));
    within_cost("gRPC decode and check", data.len(), crate::cost::peak_since(base));
    match checked {
        Err(e) => label(e),
        Ok(Ok(plan)) => {
            let n = match &plan.payload {
                Payload::Images(i) => i.len(),
                Payload::Tensors(values, n) => {
                    assert_eq!(values.len(), n * 12, "tensors of the wrong size");
                    *n
                }
            };
            let labels: Vec<String> = ["cat", "dog", "bird", "fish", "x"].map(String::from).into();
            let rows: Vec<Scores> = (0..n).map(|i| Scores::from(vec![0.1 * i as f32, 0.2, 0.3, 0.15, 0.25])).collect();
            let size: usize =
                plan.outputs.iter().map(|p: &OutputPlan| Rendered::new(p, &labels, &rows).raw().len()).sum();
            assert!(size <= lens::cost::response_bound(n), "an answer of {size} bytes for {n} inputs");
            let classes: Vec<_> = plan.outputs.iter().map(|o| o.class_count).collect();
            format!("ok {} inputs, classification {classes:?}", n.min(3))
        }
        Ok(Err(e)) if e.to_string().starts_with("datatype ") => "datatype unsupported".into(),
        Ok(Err(e)) => label(e),
    }
}

fn grpc_seeds() -> Vec<Vec<u8>> {
    use lens::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use lens::grpc::proto::{InferParameter, InferTensorContents, ModelInferRequest, infer_parameter};
    use prost::Message;
    let input = |datatype: &str, shape: Vec<i64>, contents: Option<InferTensorContents>| InferInputTensor {
        name: "x".into(),
        datatype: datatype.into(),
        shape,
        contents,
        ..Default::default()
    };
    let mut png = Vec::new();
    let image = tiny(ImageFormat::Png);
    png.extend((image.len() as u32).to_le_bytes());
    png.extend(&image);
    let classify = InferRequestedOutputTensor {
        name: "logits".into(),
        parameters: [(
            "classification".to_owned(),
            InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(3)) },
        )]
        .into(),
    };
    let floats: Vec<u8> = (0..12).flat_map(|i| (i as f32 / 4.0).to_le_bytes()).collect();
    [
        ModelInferRequest {
            id: "a".into(),
            inputs: vec![input("BYTES", vec![1], None)],
            outputs: vec![classify],
            raw_input_contents: vec![png.into()],
            ..Default::default()
        },
        ModelInferRequest {
            inputs: vec![input("FP32", vec![1, 3, 2, 2], None)],
            raw_input_contents: vec![floats.into()],
            ..Default::default()
        },
        ModelInferRequest {
            inputs: vec![input(
                "FP32",
                vec![1, 3, 2, 2],
                Some(InferTensorContents { fp32_contents: vec![0.5; 12], ..Default::default() }),
            )],
            ..Default::default()
        },
        ModelInferRequest {
            inputs: vec![input(
                "BYTES",
                vec![1, 1],
                Some(InferTensorContents { bytes_contents: vec![image.into()], ..Default::default() }),
            )],
            ..Default::default()
        },
    ]
    .iter()
    .map(Message::encode_to_vec)
    .collect()
}

const GRPC_DICT: &[&[u8]] = &[
    b"BYTES",
    b"FP32",
    b"INT64",
    b"logits",
    b"classification",
    b"\xff\xff\xff\xff\x0f",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x00\x00\x00\x00",
];

// ------------------------------------------------------------ the Redis codec

fn codec_spec() -> InputSpec {
    InputSpec { name: "x".into(), layout: Layout::Nchw, width: 2, height: 1, channel_order: ChannelOrder::Rgb }
}

/// Input: a job entry as `field=value` lines (values may hold any byte but a
/// newline), which is also tried as a reply and as a heartbeat.
fn codec_target(data: &[u8]) -> String {
    let map = data
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let eq = line.iter().position(|&b| b == b'=')?;
            let value = redis::Value::BulkString(line[eq + 1..].to_vec());
            Some((String::from_utf8_lossy(&line[..eq]).into_owned(), value))
        })
        .collect();
    let entry = StreamId { id: "1-0".into(), map, ..Default::default() };
    let job = match codec::decode_job(&entry, &codec_spec()) {
        Ok(job) => {
            // A hostile context is read as a worker reads it, and ignored if malformed.
            let _ = job.trace.as_ref().map(lens::telemetry::Carrier::context);
            format!("job {}", matches!(job.input, ModelInput::Image(_)))
        }
        Err(m) => format!("malformed {} {} {}", m.job_id.is_some(), m.reply_to.is_some(), label(m.reason)),
    };
    let reply = match codec::decode_reply(data) {
        Ok((_, Ok(out))) => format!("scores {}", out.scores.len().min(3)),
        Ok((_, Err(e))) => label(format!("{e:?}")),
        Err(e) => label(e),
    };
    let beats = HashMap::from([("w".to_owned(), String::from_utf8_lossy(data).into_owned())]);
    let (live, stale) = codec::liveness(&beats, "1", u64::MAX / 2, 5000, 60_000);
    format!("{job} | {reply} | {} {}", live.workers, stale.len())
}

fn codec_seeds() -> Vec<Vec<u8>> {
    let lines = |fields: Vec<(&'static str, Vec<u8>)>| {
        let mut out = Vec::new();
        for (k, v) in fields {
            out.extend(k.bytes());
            out.push(b'=');
            out.extend(v);
            out.push(b'\n');
        }
        out
    };
    let img = ModelInput::Image(Prepared { width: 2, height: 1, rgb: vec![1, 2, 3, 4, 5, 6] });
    let tensor = ModelInput::Tensor(vec![0.5; 6]);
    let traced = lens::telemetry::Carrier {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: "a=1".into(),
    };
    let beat = r#"{"last_seen_ms":1,"started_ms":1,"model":"m","version":"1","sessions":2,"processed":0,"dead_lettered":0,"host":"h","pid":1}"#;
    vec![
        lines(codec::job_fields(7, "lens:replies:api-x", 100, 90, &img, None)),
        lines(codec::job_fields(8, "lens:replies:api-x", 100, 90, &tensor, Some(&traced))),
        codec::encode_reply(
            7,
            &Ok(JobOutput { scores: vec![0.25; 5].into(), inference: std::time::Duration::from_millis(3) }),
        ),
        codec::encode_reply(9, &Err(JobError::DeadLettered(3))),
        codec::encode_reply(9, &Err(JobError::Inference("boom".into()))),
        beat.as_bytes().to_vec(),
    ]
}

const CODEC_DICT: &[&[u8]] = &[
    b"\nv=1",
    b"\nid=",
    b"\nreply=lens:replies:",
    b"\ndeadline_ms=",
    b"\nenqueued_ms=",
    b"\ninput=rgb8",
    b"\ninput=f32",
    b"\nwidth=2",
    b"\nheight=1",
    b"\ndata=",
    b"\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\x03",
    b"\"sessions\":",
    b"\"last_seen_ms\":",
];

// ----------------------------------------------------------------- model.toml

fn model_toml(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    match ModelSpec::parse(&text, Path::new("model.toml")) {
        Ok(spec) => {
            let r = spec.resize_spec();
            format!("ok {:?} {:?}", r.kind, r.interpolation)
        }
        Err(e) => label(e),
    }
}

fn toml_seeds() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<Vec<u8>> = ["models/examples/torchvision.toml", "models/examples/keras-resnet50-caffe.toml"]
        .iter()
        .filter_map(|p| std::fs::read(root.join(p)).ok())
        .collect();
    seeds.push(
        br#"name = "m"
version = "1"
labels = "labels.txt"
[input]
name = "input"
layout = "NCHW"
width = 224
height = 224
[preprocess]
resize = "center-crop"
crop_fraction = 0.875
interpolation = "bicubic"
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]
[output]
name = "logits"
kind = "logits"
"#
        .to_vec(),
    );
    seeds
}

const TOML_DICT: &[&[u8]] = &[
    b"[input]\n",
    b"[preprocess]\n",
    b"[output]\n",
    b"width = ",
    b"height = ",
    b"crop_fraction = ",
    b"std = [0.0, 0.0, 0.0]\n",
    b"mean = [",
    b"layout = \"NHWC\"\n",
    b"resize = \"squash\"\n",
    b"interpolation = \"lanczos3\"\n",
    b"channel_order = \"BGR\"\n",
    b"nan",
    b"inf",
    b"-inf",
    b"4294967296",
];
