//! What travels through Redis, and how it is encoded: job entries on the
//! job stream, replies on an API node's reply list, worker heartbeats.
//!
//! A job carries the *preprocessed* input, not the uploaded file: the API
//! node decodes (so a bad image is a 400 there and never reaches a worker),
//! and a worker only assembles tensors. An RGB8 image at the model's input
//! size is 150 KB for 224x224, about what a typical JPEG upload weighs, and
//! a worker spends its CPU on the model alone. KServe v2 FP32 tensors travel
//! as f32 little-endian bytes.
//!
//! Pure functions, unit-tested here; the Redis calls live in the callers.

use std::collections::HashMap;

use redis::streams::StreamId;

use crate::job::{JobError, JobOutput, JobResult, ModelInput, f32_from_le_bytes, f32_to_le_bytes};
use crate::model::InputSpec;
use crate::preprocess::Prepared;
use crate::telemetry::Carrier;

/// Version of the job entry layout, in field `v`.
pub const JOB_VERSION: &str = "1";

/// A job as a worker reads it from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEntry {
    pub job_id: u64,
    /// The list the reply goes to.
    pub reply_to: String,
    pub deadline_ms: u64,
    pub enqueued_ms: u64,
    pub input: ModelInput,
    /// The W3C context of the request's queue span, when it was traced.
    pub trace: Option<Carrier>,
}

/// An entry a worker cannot process. If it still names its job and reply
/// list, the client is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    pub job_id: Option<u64>,
    pub reply_to: Option<String>,
    pub reason: String,
}

/// The fields of a job entry, in `XADD` order.
pub fn job_fields(
    job_id: u64,
    reply_to: &str,
    deadline_ms: u64,
    enqueued_ms: u64,
    input: &ModelInput,
    trace: Option<&Carrier>,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut f = vec![
        ("v", JOB_VERSION.as_bytes().to_vec()),
        ("id", job_id.to_string().into_bytes()),
        ("reply", reply_to.as_bytes().to_vec()),
        ("deadline_ms", deadline_ms.to_string().into_bytes()),
        ("enqueued_ms", enqueued_ms.to_string().into_bytes()),
    ];
    // Optional fields: a worker that does not know them ignores them.
    if let Some(t) = trace {
        f.push(("traceparent", t.traceparent.as_bytes().to_vec()));
        if !t.tracestate.is_empty() {
            f.push(("tracestate", t.tracestate.as_bytes().to_vec()));
        }
    }
    match input {
        ModelInput::Image(img) => {
            f.push(("input", b"rgb8".to_vec()));
            f.push(("width", img.width.to_string().into_bytes()));
            f.push(("height", img.height.to_string().into_bytes()));
            f.push(("data", img.rgb.clone()));
        }
        ModelInput::Tensor(values) => {
            f.push(("input", b"f32".to_vec()));
            f.push(("data", f32_to_le_bytes(values)));
        }
    }
    f
}

/// Reads and validates a job entry against the worker's model input.
pub fn decode_job(entry: &StreamId, spec: &InputSpec) -> Result<JobEntry, Malformed> {
    let text = |k: &str| entry.get::<String>(k);
    let num = |k: &str| text(k).and_then(|v| v.parse::<u64>().ok());
    let job_id = num("id");
    let reply_to = text("reply").filter(|r| r.starts_with("lens:replies:"));
    let bad = |reason: String| Malformed { job_id, reply_to: reply_to.clone(), reason };
    if text("v").as_deref() != Some(JOB_VERSION) {
        return Err(bad(format!("unknown job layout version {:?}", text("v"))));
    }
    let (Some(id), Some(to)) = (job_id, reply_to.clone()) else {
        return Err(bad("missing or invalid `id` or `reply`".into()));
    };
    let (Some(deadline_ms), Some(enqueued_ms)) = (num("deadline_ms"), num("enqueued_ms")) else {
        return Err(bad("missing or invalid `deadline_ms` or `enqueued_ms`".into()));
    };
    let data: Vec<u8> = entry.get("data").ok_or_else(|| bad("missing `data`".into()))?;
    let plane = spec.width as usize * spec.height as usize;
    let input = match text("input").as_deref() {
        Some("rgb8") => {
            let (w, h) = (num("width"), num("height"));
            if w != Some(spec.width as u64) || h != Some(spec.height as u64) || data.len() != plane * 3 {
                return Err(bad(format!(
                    "rgb8 input is {w:?}x{h:?} with {} bytes; this worker's model takes {}x{} ({} bytes)",
                    data.len(),
                    spec.width,
                    spec.height,
                    plane * 3
                )));
            }
            ModelInput::Image(Prepared { width: spec.width, height: spec.height, rgb: data })
        }
        Some("f32") => {
            if data.len() != plane * 3 * 4 {
                return Err(bad(format!("f32 input has {} bytes; the model takes {}", data.len(), plane * 12)));
            }
            ModelInput::Tensor(f32_from_le_bytes(&data).unwrap_or_default())
        }
        other => return Err(bad(format!("unknown input kind {other:?}"))),
    };
    // A malformed context is ignored where it is used (the job starts a new
    // trace); its length is capped here so that it cannot bloat a span.
    let trace = text("traceparent").filter(|t| t.len() <= 64).map(|traceparent| Carrier {
        traceparent,
        tracestate: text("tracestate").filter(|t| t.len() <= crate::telemetry::MAX_TRACESTATE).unwrap_or_default(),
    });
    Ok(JobEntry { job_id: id, reply_to: to, deadline_ms, enqueued_ms, input, trace })
}

// Reply layout: tag (1 byte), job id (u64 LE), payload. `OK` carries the
// scores only (older workers); `OK_TIMED` the batch's model time in
// nanoseconds (u64 LE), then the scores.
const OK: u8 = 0;
const OK_TIMED: u8 = 5;
const DEADLINE: u8 = 1;
const INFERENCE: u8 = 2;
const DEAD_LETTERED: u8 = 3;
const SHUTTING_DOWN: u8 = 4;

/// A reply as pushed to an API node's list.
pub fn encode_reply(job_id: u64, result: &JobResult) -> Vec<u8> {
    let (tag, payload): (u8, Vec<u8>) = match result {
        Ok(out) => {
            let ns = u64::try_from(out.inference.as_nanos()).unwrap_or(u64::MAX);
            (OK_TIMED, ns.to_le_bytes().into_iter().chain(f32_to_le_bytes(&out.scores)).collect())
        }
        Err(JobError::DeadlineExceeded) => (DEADLINE, Vec::new()),
        Err(JobError::Inference(m)) => (INFERENCE, m.as_bytes().to_vec()),
        Err(JobError::DeadLettered(n)) => (DEAD_LETTERED, n.to_le_bytes().to_vec()),
        Err(JobError::ShuttingDown) => (SHUTTING_DOWN, Vec::new()),
    };
    let mut out = Vec::with_capacity(9 + payload.len());
    out.push(tag);
    out.extend(job_id.to_le_bytes());
    out.extend(payload);
    out
}

/// Parses a reply; `Err` names what was wrong with it.
pub fn decode_reply(bytes: &[u8]) -> Result<(u64, JobResult), String> {
    if bytes.len() < 9 {
        return Err(format!("reply of {} bytes is too short", bytes.len()));
    }
    let job_id = u64::from_le_bytes(bytes[1..9].try_into().map_err(|_| "bad job id".to_string())?);
    let payload = &bytes[9..];
    let result = match bytes[0] {
        OK if !payload.is_empty() && payload.len().is_multiple_of(4) => Ok(JobOutput {
            scores: f32_from_le_bytes(payload).unwrap_or_default().into(),
            inference: std::time::Duration::ZERO,
        }),
        OK_TIMED if payload.len() > 8 && payload.len().is_multiple_of(4) => {
            let (ns, scores) = payload.split_at(8);
            let ns = u64::from_le_bytes(ns.try_into().map_err(|_| "bad model time".to_string())?);
            Ok(JobOutput {
                scores: f32_from_le_bytes(scores).unwrap_or_default().into(),
                inference: std::time::Duration::from_nanos(ns),
            })
        }
        DEADLINE => Err(JobError::DeadlineExceeded),
        INFERENCE => Err(JobError::Inference(String::from_utf8_lossy(payload).into_owned())),
        DEAD_LETTERED if payload.len() == 4 => {
            Err(JobError::DeadLettered(u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]])))
        }
        SHUTTING_DOWN => Err(JobError::ShuttingDown),
        tag => return Err(format!("unknown reply tag {tag} with {} payload bytes", payload.len())),
    };
    Ok((job_id, result))
}

/// The `run_id` field of an `INFO server` reply: unique to each start of a
/// Redis server, so a new one means a restart.
pub fn run_id(info: &str) -> Option<&str> {
    info.lines().find_map(|l| l.strip_prefix("run_id:")).map(str::trim).filter(|id| !id.is_empty())
}

/// What a worker publishes in `lens:workers:{model}` under its id.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerBeat {
    pub last_seen_ms: u64,
    pub started_ms: u64,
    pub model: String,
    pub version: String,
    pub sessions: usize,
    /// Jobs this worker ran through the model.
    pub processed: u64,
    /// Jobs this worker moved to the dead-letter stream.
    pub dead_lettered: u64,
    pub host: String,
    pub pid: u32,
    /// The engine its sessions run (`onnxruntime`, `openvino`); empty from
    /// workers that predate it.
    #[serde(default)]
    pub engine: String,
    /// Their precision (`fp32`, `bf16`).
    #[serde(default)]
    pub precision: String,
}

/// Live workers of a model version, from the registry hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Liveness {
    pub workers: usize,
    pub sessions: usize,
}

/// Counts the workers seen within `ttl_ms` that serve `version`; also
/// returns the ids of entries old enough to forget.
pub fn liveness(
    beats: &HashMap<String, String>,
    version: &str,
    now_ms: u64,
    ttl_ms: u64,
    forget_ms: u64,
) -> (Liveness, Vec<String>) {
    let mut live = Liveness::default();
    let mut stale = Vec::new();
    for (id, json) in beats {
        let Ok(b) = serde_json::from_str::<WorkerBeat>(json) else {
            stale.push(id.clone());
            continue;
        };
        let age = now_ms.saturating_sub(b.last_seen_ms);
        if age <= ttl_ms && b.version == version {
            live.workers += 1;
            live.sessions += b.sessions.max(1);
        } else if age > forget_ms {
            stale.push(id.clone());
        }
    }
    (live, stale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChannelOrder, Layout};

    fn spec() -> InputSpec {
        InputSpec { name: "x".into(), layout: Layout::Nchw, width: 2, height: 1, channel_order: ChannelOrder::Rgb }
    }

    fn entry(fields: Vec<(&str, Vec<u8>)>) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields.into_iter().map(|(k, v)| (k.to_owned(), redis::Value::BulkString(v))).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f3c2a\r\ntcp_port:6379\r\n";
        assert_eq!(run_id(info), Some("4f3c2a"));
        assert_eq!(run_id("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id(""), None);
    }

    #[test]
    fn jobs_round_trip() {
        let img = ModelInput::Image(Prepared { width: 2, height: 1, rgb: vec![1, 2, 3, 4, 5, 6] });
        let e = decode_job(&entry(job_fields(7, "lens:replies:n", 100, 90, &img, None)), &spec()).unwrap();
        assert_eq!(
            e,
            JobEntry {
                job_id: 7,
                reply_to: "lens:replies:n".into(),
                deadline_ms: 100,
                enqueued_ms: 90,
                input: img,
                trace: None
            }
        );
        let t = ModelInput::Tensor(vec![0.5, -1.0, 2.0, 0.0, 1e-3, 7.0]);
        let e = decode_job(&entry(job_fields(8, "lens:replies:n", 1, 1, &t, None)), &spec()).unwrap();
        assert_eq!(e.input, t);
    }

    #[test]
    fn a_jobs_trace_context_travels_with_it_and_an_oversized_one_is_dropped() {
        let t = ModelInput::Tensor(vec![0.0; 6]);
        let carrier = Carrier {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: "lens=1".into(),
        };
        let e = decode_job(&entry(job_fields(8, "lens:replies:n", 1, 1, &t, Some(&carrier))), &spec()).unwrap();
        assert_eq!(e.trace, Some(carrier.clone()));
        let mut fields = job_fields(8, "lens:replies:n", 1, 1, &t, Some(&carrier));
        for (k, v) in &mut fields {
            if *k == "traceparent" {
                *v = vec![b'0'; 65];
            }
        }
        assert_eq!(decode_job(&entry(fields), &spec()).unwrap().trace, None);
    }

    #[test]
    fn wrong_geometry_is_malformed_but_still_answerable() {
        let img = ModelInput::Image(Prepared { width: 3, height: 1, rgb: vec![0; 9] });
        let m = decode_job(&entry(job_fields(9, "lens:replies:n", 1, 1, &img, None)), &spec()).unwrap_err();
        assert_eq!((m.job_id, m.reply_to.as_deref()), (Some(9), Some("lens:replies:n")));
        assert!(m.reason.contains("3"), "{}", m.reason);
        let m = decode_job(&entry(vec![("id", b"x".to_vec())]), &spec()).unwrap_err();
        assert_eq!((m.job_id, m.reply_to), (None, None));
    }

    #[test]
    fn a_reply_list_must_be_a_lens_reply_list() {
        let img = ModelInput::Image(Prepared { width: 2, height: 1, rgb: vec![0; 6] });
        let m = decode_job(&entry(job_fields(1, "lens:jobs:m", 1, 1, &img, None)), &spec()).unwrap_err();
        assert_eq!(m.reply_to, None, "a worker must not push into arbitrary keys");
    }

    #[test]
    fn replies_round_trip() {
        let cases: Vec<JobResult> = vec![
            Ok(JobOutput { scores: vec![0.25f32, 0.75].into(), inference: std::time::Duration::from_micros(1234) }),
            Err(JobError::DeadlineExceeded),
            Err(JobError::Inference("boom".into())),
            Err(JobError::DeadLettered(4)),
            Err(JobError::ShuttingDown),
        ];
        for r in cases {
            assert_eq!(decode_reply(&encode_reply(u64::MAX - 1, &r)).unwrap(), (u64::MAX - 1, r));
        }
        assert!(decode_reply(b"short").is_err());
        let old = [&[OK][..], &7u64.to_le_bytes(), &1.0f32.to_le_bytes()].concat();
        assert!(matches!(decode_reply(&old), Ok((7, Ok(o))) if o.inference.is_zero() && o.scores[..] == [1.0]));
        let timed_without_scores = [&[OK_TIMED][..], &7u64.to_le_bytes(), &9u64.to_le_bytes()].concat();
        assert!(decode_reply(&timed_without_scores).is_err());
        assert!(decode_reply(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn liveness_counts_fresh_workers_of_this_version() {
        let beat = |seen: u64, version: &str| {
            serde_json::to_string(&WorkerBeat {
                last_seen_ms: seen,
                started_ms: 0,
                model: "m".into(),
                version: version.into(),
                sessions: 2,
                processed: 0,
                dead_lettered: 0,
                host: "h".into(),
                pid: 1,
                engine: "openvino".into(),
                precision: "bf16".into(),
            })
            .unwrap()
        };
        let beats: HashMap<String, String> = [
            ("fresh".to_owned(), beat(10_000, "1")),
            ("other-version".to_owned(), beat(10_000, "2")),
            ("late".to_owned(), beat(3_000, "1")),
            ("gone".to_owned(), beat(1, "1")),
            ("garbage".to_owned(), "{".to_owned()),
        ]
        .into();
        let (live, mut stale) = liveness(&beats, "1", 10_000, 5_000, 9_000);
        stale.sort();
        assert_eq!(live, Liveness { workers: 1, sessions: 2 });
        assert_eq!(stale, vec!["garbage".to_owned(), "gone".to_owned()]);
    }
}
