//! The model session: ONNX Runtime behind a small synchronous trait.
//!
//! [`Classifier`] is the seam between serving and the model. It is synchronous
//! and `&mut self` because an ONNX Runtime session runs one batch at a time;
//! the server gives every session its own OS thread, never a tokio task.
//! [`OrtClassifier`] is the real one; tests of the batching logic use a fake.
//!
//! The batch tensor is assembled here from [`ModelInput`]s: RGB8 images, whose
//! channel order, normalisation and layout come from `model.toml` (so one code
//! path serves any ONNX classifier), or tensors a client already prepared.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::value::Tensor;

use crate::model::{ChannelOrder, Layout, ModelDir, ModelSpec, OutputKind};
use crate::preprocess::Prepared;

/// Inference failures. `Clone`, so one failure fans out to a whole batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Runtime { path: PathBuf, message: String },
    #[error("ONNX Runtime library not found; run `make setup` or pass --ort-lib / LENS_ORT_LIB")]
    RuntimeNotFound,
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

/// Class probabilities for one image, in label order.
pub type Scores = Vec<f32>;

/// One image's worth of model input.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    /// An image at the model's input size, normalised when the batch is assembled.
    Image(Prepared),
    /// Already normalised values in the model's layout (`3 * height * width`).
    Tensor(Vec<f32>),
}

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
        SessionConfig { sessions: cores.max(1), intra_threads: 1 }
    }
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, EngineError>> = OnceLock::new();

/// Loads ONNX Runtime once per process from `lib` (or the default location).
pub fn runtime(lib: Option<&Path>) -> Result<ort::environment::Environment, EngineError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = match lib {
                Some(p) => p.to_owned(),
                None => find_runtime_library().ok_or(EngineError::RuntimeNotFound)?,
            };
            let err = |message: String| EngineError::Runtime { path: path.clone(), message };
            ort::init_from(&path)
                .map_err(|e| err(e.to_string()))?
                .with_name("lens")
                .with_telemetry(false)
                .build()
                .map_err(|e| err(e.to_string()))
        })
        .clone()
}

/// Finds `libonnxruntime.so.1.*` from the `onnxruntime` wheel in the project's
/// `.venv`, looking in the working directory and above the executable
/// (`target/release/lens` sits two levels under the project root).
pub fn find_runtime_library() -> Option<PathBuf> {
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots.iter().find_map(|root| find_in_venv(&root.join(".venv")))
}

fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    for py in std::fs::read_dir(lib).ok()?.flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        let Ok(entries) = std::fs::read_dir(&capi) else { continue };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.1")))
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return Some(p);
        }
    }
    None
}

/// A classifier backed by one ONNX Runtime session.
pub struct OrtClassifier {
    session: Session,
    spec: ModelSpec,
    classes: usize,
    /// Reused between batches to avoid an allocation per call.
    scratch: Vec<f32>,
}

impl OrtClassifier {
    pub fn load(model: &ModelDir, intra_threads: usize, lib: Option<&Path>) -> Result<Self, EngineError> {
        let env = runtime(lib)?;
        let path = model.onnx_path.clone();
        let err = |e: ort::Error| EngineError::Load { path: path.clone(), message: e.to_string() };
        let session = Session::builder(&env)
            .map_err(err)?
            .with_intra_threads(intra_threads.max(1))
            .map_err(|e| err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| err(e.into()))?
            .with_intra_op_spinning(false)
            .map_err(|e| err(e.into()))?
            .commit_from_file(&model.onnx_path)
            .map_err(err)?;
        if !session.inputs().iter().any(|o| o.name() == model.spec.input.name) {
            return Err(EngineError::Load {
                path: model.onnx_path.clone(),
                message: format!("model has no input named {:?} (model.toml [input] name)", model.spec.input.name),
            });
        }
        if !session.outputs().iter().any(|o| o.name() == model.spec.output.name) {
            return Err(EngineError::Load {
                path: model.onnx_path.clone(),
                message: format!("model has no output named {:?} (model.toml [output] name)", model.spec.output.name),
            });
        }
        Ok(OrtClassifier { session, spec: model.spec.clone(), classes: model.labels.len(), scratch: Vec::new() })
    }
}

impl Classifier for OrtClassifier {
    fn classify(&mut self, images: &[&ModelInput]) -> Result<Vec<Scores>, EngineError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        assemble(images, &self.spec, &mut self.scratch)?;
        let (w, h) = (self.spec.input.width as i64, self.spec.input.height as i64);
        let n = images.len() as i64;
        let shape = match self.spec.input.layout {
            Layout::Nchw => [n, 3, h, w],
            Layout::Nhwc => [n, h, w, 3],
        };
        let data = std::mem::take(&mut self.scratch);
        let tensor = Tensor::from_array((shape, data)).map_err(|e| EngineError::Inference(e.to_string()))?;
        let input_name = self.spec.input.name.as_str();
        let outputs =
            self.session.run(ort::inputs![input_name => tensor]).map_err(|e| EngineError::Inference(e.to_string()))?;
        let output =
            outputs.get(&self.spec.output.name).ok_or_else(|| EngineError::Inference("missing output".into()))?;
        let (shape, values) = output.try_extract_tensor::<f32>().map_err(|e| EngineError::Inference(e.to_string()))?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        if dims.len() != 2 || dims[0] != n || dims[1] as usize != self.classes {
            return Err(EngineError::OutputShape { shape: dims, batch: images.len(), classes: self.classes });
        }
        let kind = self.spec.output.kind;
        Ok(values
            .chunks_exact(self.classes)
            .map(|row| match kind {
                OutputKind::Logits => softmax(row),
                OutputKind::Probabilities => row.to_vec(),
            })
            .collect())
    }
}

/// Fills `out` with the batch tensor for `images`: channel order, `(x - mean) / std`
/// and layout as the model spec says.
pub fn assemble(inputs: &[&ModelInput], spec: &ModelSpec, out: &mut Vec<f32>) -> Result<(), EngineError> {
    let (w, h) = (spec.input.width, spec.input.height);
    let plane = (w * h) as usize;
    out.clear();
    out.resize(inputs.len() * plane * 3, 0.0);
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

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The `k` best classes as `(index, probability)`, best first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    idx.truncate(k);
    idx.sort_by(|a, b| b.1.total_cmp(&a.1));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] < 1e-6);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn top_k_orders_best_first() {
        let t = top_k(&[0.1, 0.5, 0.05, 0.35], 3);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 0]);
        assert_eq!(top_k(&[0.2], 5).len(), 1);
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
        let mut out = Vec::new();
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
        assert!(assemble(&[&img], &spec("RGB", "NCHW"), &mut Vec::new()).is_err());
        let short = ModelInput::Tensor(vec![0.0; 5]);
        assert!(assemble(&[&short], &spec("RGB", "NCHW"), &mut Vec::new()).is_err());
        let exact = ModelInput::Tensor(vec![0.5; 6]);
        let mut out = Vec::new();
        assemble(&[&exact], &spec("RGB", "NCHW"), &mut out).unwrap();
        assert_eq!(out, vec![0.5; 6]);
    }
}
