//! One session of one thread inferring real photos in three ways, to tell
//! whether inference itself slows down when photos are decoded between
//! inferences (cache pollution, data-dependent kernels) or only when a
//! decode runs on the other core at the same time:
//!
//! - `same`: the first photo's tensor, again and again (what
//!   `lens bench --model-only` does);
//! - `cycle`: every photo's tensor, prepared beforehand, in turn;
//! - `decode+infer`: each photo decoded and prepared right before its
//!   inference (only the inference is timed, as in `lens bench --pipeline`).
//!
//! Run it with:
//!
//!     cargo build --release --example infer_loop
//!     target/release/examples/infer_loop target/imagenet-photos [openvino|onnxruntime]
//!
//! Each mode runs over the first 300 photos, five times, interleaved, so
//! machine drift hits them alike. It prints the median ms per inference, and
//! the process's CPU and wall ms per photo (prepare included).

use std::path::Path;
use std::time::Instant;

use lens::engine::{EngineOptions, ModelInput, SessionConfig, load_sessions};
use lens::model::{EngineChoice, ModelDir, PrecisionChoice};
use lens::preprocess::prepare;

const PHOTOS: usize = 300;
const ROUNDS: usize = 5;
const MODES: [&str; 3] = ["same", "cycle", "decode+infer"];
const MAX_PIXELS: u64 = 40_000_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: infer_loop DIR [openvino|onnxruntime]");
        std::process::exit(2);
    };
    let engine = match args.next().as_deref() {
        None | Some("openvino") => EngineChoice::OpenVino,
        Some("onnxruntime") => EngineChoice::OnnxRuntime,
        Some(other) => panic!("unknown engine {other:?}"),
    };
    let model = ModelDir::load(Path::new("models/efficientnet-lite0")).expect("the default model (make setup)");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("a readable folder").map(|e| e.expect("a folder entry").path()).collect();
    files.sort();
    files.truncate(PHOTOS);
    let photos: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).expect("a readable photo")).collect();
    let resize = model.spec.resize_spec();
    let tensor = |bytes: &[u8]| ModelInput::Image(prepare(bytes, &resize, MAX_PIXELS).expect("a photo that prepares"));
    let prepared: Vec<ModelInput> = photos.iter().map(|b| tensor(b)).collect();
    let opts =
        EngineOptions { engine, precision: PrecisionChoice::Fp32, ort_lib: None, openvino_lib: None, cpu_bf16: false };
    let (mut sessions, runtime) =
        load_sessions(&model, &opts, SessionConfig { sessions: 1, intra_threads: 1 }).expect("the engine loads");
    let session = &mut sessions[0];
    for input in prepared.iter().take(20) {
        session.classify(&[input]).expect("warm-up inference");
    }

    // Per mode and round: (ms per inference, CPU ms per photo, wall ms per photo).
    let mut results = vec![Vec::new(); MODES.len()];
    for _ in 0..ROUNDS {
        for (mode, result) in results.iter_mut().enumerate() {
            let (mut inferring, cpu0, wall0) = (0.0, cpu_ms(), Instant::now());
            for (i, bytes) in photos.iter().enumerate() {
                let fresh;
                let input = match mode {
                    0 => &prepared[0],
                    1 => &prepared[i],
                    _ => {
                        fresh = tensor(bytes);
                        &fresh
                    }
                };
                let started = Instant::now();
                session.classify(&[input]).expect("inference");
                inferring += started.elapsed().as_secs_f64() * 1e3;
            }
            let n = photos.len() as f64;
            result.push([inferring / n, (cpu_ms() - cpu0) / n, wall0.elapsed().as_secs_f64() * 1e3 / n]);
        }
    }
    println!(
        "{} {}, 1 session x 1 thread, {} photos from {dir}, {ROUNDS} rounds",
        runtime.engine.name(),
        runtime.precision.as_str(),
        photos.len()
    );
    for (name, rounds) in MODES.iter().zip(&results) {
        let median = |k: usize| {
            let mut v: Vec<f64> = rounds.iter().map(|r| r[k]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{name:>13}: {:.3} ms per inference; {:.3} ms CPU and {:.3} ms wall per photo",
            median(0),
            median(1),
            median(2)
        );
    }
}

/// User + system CPU milliseconds of this process so far.
fn cpu_ms() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}
