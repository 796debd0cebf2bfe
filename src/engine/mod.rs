//! The model session behind a small synchronous trait, and what every engine
//! shares: the batch tensor assembly, the softmax, finding a runtime library
//! in the project's `.venv`.
//!
//! [`Classifier`] is the seam between serving and the model. It is synchronous
//! and `&mut self` because a session runs one batch at a time; the server
//! gives every session its own OS thread, never a tokio task. Two engines
//! implement it: [`OrtClassifier`] (ONNX Runtime, `onnxruntime`) and
//! [`OvClassifier`] (OpenVINO, `openvino`); tests of the batching logic use
//! a fake. `select` chooses the engine and precision and loads the sessions.
//!
//! The batch tensor is assembled here from [`ModelInput`]s: RGB8 images, whose
//! channel order, normalisation and layout come from `model.toml` (so one code
//! path serves any ONNX classifier), or tensors a client already prepared.

mod onnxruntime;
mod openvino;
mod select;

use std::fmt;
use std::path::{Path, PathBuf};

pub use self::openvino::{OvClassifier, find_library as find_openvino_library};
pub use crate::job::ModelInput;
use crate::model::{ChannelOrder, Layout, ModelSpec, OutputKind};
pub use onnxruntime::{OrtClassifier, find_runtime_library, runtime};
pub use select::{
    EngineOptions, choose_precision, cpu_has_native_bf16, expected_runtime, int8_refusal, load_sessions,
    this_cpu_has_native_bf16,
};

/// Inference failures. `Clone`, so one failure fans out to a whole batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load {} from {path}: {message}", engine.name())]
    Runtime { engine: Engine, path: PathBuf, message: String },
    #[error("{} library not found; run `make setup` or pass {}", .0.name(), .0.lib_flag())]
    RuntimeNotFound(Engine),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("model output has shape {shape:?}, expected [{batch}, {classes}]")]
    OutputShape { shape: Vec<i64>, batch: usize, classes: usize },
    #[error("input tensor has {got} values, the model takes {want} per image")]
    TensorSize { got: usize, want: usize },
    #[error("input image is {got_w}x{got_h}, the model takes {want_w}x{want_h}")]
    InputShape { got_w: u32, got_h: u32, want_w: u32, want_h: u32 },
}

/// An inference engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    OnnxRuntime,
    OpenVino,
}

impl Engine {
    /// The name in flags, labels, cache keys and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::OnnxRuntime => "onnxruntime",
            Engine::OpenVino => "openvino",
        }
    }

    /// The name people know it by.
    pub fn name(self) -> &'static str {
        match self {
            Engine::OnnxRuntime => "ONNX Runtime",
            Engine::OpenVino => "OpenVINO",
        }
    }

    /// The flag and variable that point at its library.
    fn lib_flag(self) -> &'static str {
        match self {
            Engine::OnnxRuntime => "--ort-lib / LENS_ORT_LIB",
            Engine::OpenVino => "--openvino-lib / LENS_OPENVINO_LIB",
        }
    }
}

/// The arithmetic precision inside the model (its inputs and outputs stay f32).
/// `Int8` is a property of a model variant: the quantized file beside the
/// fp32 one ([`crate::model::ModelDir::int8_variant`]), which either engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Fp32,
    Bf16,
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

/// The engine and precision a model runs with. Answers differ slightly
/// between them, so this is part of an answer's identity: the cache keys,
/// the status, the heartbeat and the metrics carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Runtime {
    pub engine: Engine,
    pub precision: Precision,
}

impl fmt::Display for Runtime {
    /// `openvino-bf16`, `onnxruntime-fp32`: the form used in cache keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.engine.as_str(), self.precision.as_str())
    }
}

/// Class probabilities for one image, in label order.
pub type Scores = Vec<f32>;

/// Anything that turns a batch of prepared images into class probabilities.
pub trait Classifier: Send {
    /// One entry per image, in order. Probabilities sum to ~1.
    fn classify(&mut self, inputs: &[&ModelInput]) -> Result<Vec<Scores>, EngineError>;
}

/// How many model instances to run, and how many intra-op threads each uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub sessions: usize,
    pub intra_threads: usize,
}

impl SessionConfig {
    /// On this project's measurements (2 cores), one single-threaded session
    /// per core beat one session using all cores: batch-1 inference does not
    /// parallelise well inside a session, but sessions run independently.
    pub fn for_cores(cores: usize) -> Self {
        SessionConfig { sessions: cores, intra_threads: 1 }
    }
}

/// Finds a runtime library shipped in a wheel of the project's `.venv`: the
/// newest file under `site-packages/{package_dir}` whose name starts with
/// `prefix`. It looks in the working directory and above the executable
/// (`target/release/lens` sits two levels under the project root).
pub(crate) fn find_in_venv(package_dir: &str, prefix: &str) -> Option<PathBuf> {
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots.iter().find_map(|root| find_in_site_packages(&root.join(".venv"), package_dir, prefix))
}

fn find_in_site_packages(venv: &Path, package_dir: &str, prefix: &str) -> Option<PathBuf> {
    for py in std::fs::read_dir(venv.join("lib")).ok()?.flatten() {
        let dir = py.path().join("site-packages").join(package_dir);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return Some(p);
        }
    }
    None
}

/// How many f32 values the input tensor of a batch of `n` holds.
pub fn batch_len(spec: &ModelSpec, n: usize) -> usize {
    n * (spec.input.width * spec.input.height) as usize * 3
}

/// Writes the batch tensor for `images` into `out`, which holds exactly
/// [`batch_len`] values (an engine's own input tensor, so nothing is zeroed
/// or copied twice): channel order, `(x - mean) / std` and layout as the
/// model spec says. Every value of `out` is written.
pub fn assemble(inputs: &[&ModelInput], spec: &ModelSpec, out: &mut [f32]) -> Result<(), EngineError> {
    let (w, h) = (spec.input.width, spec.input.height);
    let plane = (w * h) as usize;
    if out.len() != batch_len(spec, inputs.len()) {
        return Err(EngineError::TensorSize { got: out.len(), want: batch_len(spec, inputs.len()) });
    }
    // Per output channel c: which RGB byte feeds it, and its scale and offset.
    let src: [usize; 3] = match spec.input.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let p = &spec.preprocess;
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / p.std[c]);
    let offset: [f32; 3] = std::array::from_fn(|c| -p.mean[c] / p.std[c]);
    for (input, dst) in inputs.iter().zip(out.chunks_exact_mut(plane * 3)) {
        let img = match input {
            ModelInput::Image(img) => img,
            ModelInput::Tensor(values) if values.len() == dst.len() => {
                dst.copy_from_slice(values);
                continue;
            }
            ModelInput::Tensor(values) => {
                return Err(EngineError::TensorSize { got: values.len(), want: dst.len() });
            }
        };
        if img.width != w || img.height != h || img.rgb.len() != plane * 3 {
            return Err(EngineError::InputShape { got_w: img.width, got_h: img.height, want_w: w, want_h: h });
        }
        match spec.input.layout {
            Layout::Nchw => {
                let (c0, rest) = dst.split_at_mut(plane);
                let (c1, c2) = rest.split_at_mut(plane);
                for (i, px) in img.rgb.chunks_exact(3).enumerate() {
                    c0[i] = px[src[0]] as f32 * scale[0] + offset[0];
                    c1[i] = px[src[1]] as f32 * scale[1] + offset[1];
                    c2[i] = px[src[2]] as f32 * scale[2] + offset[2];
                }
            }
            Layout::Nhwc => {
                for (px, o) in img.rgb.chunks_exact(3).zip(dst.chunks_exact_mut(3)) {
                    for c in 0..3 {
                        o[c] = px[src[c]] as f32 * scale[c] + offset[c];
                    }
                }
            }
        }
    }
    Ok(())
}

/// One row of scores per image from a model's `[batch, classes]` f32
/// output, as probabilities: the shape both engines must check, then
/// softmax for logits.
pub fn scores_from_output(
    dims: Vec<i64>,
    values: &[f32],
    batch: usize,
    classes: usize,
    kind: OutputKind,
) -> Result<Vec<Scores>, EngineError> {
    if dims.len() != 2 || dims[0] != batch as i64 || dims[1] as usize != classes || values.len() != batch * classes {
        return Err(EngineError::OutputShape { shape: dims, batch, classes });
    }
    Ok(values
        .chunks_exact(classes)
        .map(|row| match kind {
            OutputKind::Logits => softmax(row),
            OutputKind::Probabilities => row.to_vec(),
        })
        .collect())
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::preprocess::Prepared;

    #[test]
    fn output_rows_are_checked_then_made_probabilities() {
        let rows = scores_from_output(vec![2, 2], &[0.0, 0.0, 0.3, 0.7], 2, 2, OutputKind::Logits).unwrap();
        assert_eq!(rows[0], vec![0.5, 0.5], "logits go through softmax");
        let rows = scores_from_output(vec![2, 2], &[0.0, 1.0, 0.3, 0.7], 2, 2, OutputKind::Probabilities).unwrap();
        assert_eq!(rows[1], vec![0.3, 0.7], "probabilities pass as they are");
        let wrong = scores_from_output(vec![1, 2], &[0.0, 1.0], 2, 2, OutputKind::Logits);
        assert!(matches!(wrong, Err(EngineError::OutputShape { batch: 2, classes: 2, .. })), "one row for two images");
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] < 1e-6);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    fn spec(order: &str, layout: &str) -> ModelSpec {
        let text = format!(
            "name='t'\nversion='1'\nlabels='l'\n[input]\nname='x'\nlayout='{layout}'\nwidth=2\nheight=1\nchannel_order='{order}'\n\
             [preprocess]\nresize='squash'\ninterpolation='bilinear'\nmean=[10.0,20.0,30.0]\nstd=[2.0,4.0,5.0]\n[output]\nname='y'\nkind='logits'\n"
        );
        ModelSpec::parse(&text, Path::new("t")).unwrap()
    }

    #[test]
    fn assemble_honours_layout_order_and_normalisation() {
        let img = ModelInput::Image(Prepared { width: 2, height: 1, rgb: vec![12, 24, 35, 14, 28, 40] });
        let mut out = vec![f32::NAN; 6];
        assemble(&[&img], &spec("RGB", "NCHW"), &mut out).unwrap();
        assert_eq!(out, vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        assemble(&[&img], &spec("RGB", "NHWC"), &mut out).unwrap();
        assert_eq!(out, vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
        // BGR: first channel is blue, normalised with the first mean/std.
        assemble(&[&img], &spec("BGR", "NHWC"), &mut out).unwrap();
        let want = [12.5, 1.0, -3.6, 15.0, 2.0, -3.2];
        assert!(out.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{out:?}");
    }

    #[test]
    fn assemble_rejects_wrong_geometry() {
        let img = ModelInput::Image(Prepared { width: 3, height: 1, rgb: vec![0; 9] });
        let mut out = vec![f32::NAN; 6];
        assert!(assemble(&[&img], &spec("RGB", "NCHW"), &mut out).is_err());
        let short = ModelInput::Tensor(vec![0.0; 5]);
        assert!(assemble(&[&short], &spec("RGB", "NCHW"), &mut out).is_err());
        let exact = ModelInput::Tensor(vec![0.5; 6]);
        assemble(&[&exact], &spec("RGB", "NCHW"), &mut out).unwrap();
        assert_eq!(out, vec![0.5; 6]);
        // The output must hold exactly one batch.
        assert!(assemble(&[&exact], &spec("RGB", "NCHW"), &mut [0.0; 7]).is_err());
        assert!(assemble(&[&exact, &exact], &spec("RGB", "NCHW"), &mut out).is_err());
    }
}
