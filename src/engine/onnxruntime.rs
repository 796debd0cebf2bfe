//! ONNX Runtime as an engine: the runtime library is the `libonnxruntime.so`
//! of the `onnxruntime` wheel in the project's `.venv`, loaded once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::value::Tensor;

use super::{Classifier, Engine, EngineError, Scores, assemble, batch_len, find_in_venv, scores_from_output};
use crate::job::ModelInput;
use crate::model::{Layout, ModelDir, ModelSpec};

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, EngineError>> = OnceLock::new();

/// Loads ONNX Runtime once per process from `lib` (or the default location).
pub fn runtime(lib: Option<&Path>) -> Result<ort::environment::Environment, EngineError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = match lib {
                Some(p) => p.to_owned(),
                None => find_runtime_library().ok_or(EngineError::RuntimeNotFound(Engine::OnnxRuntime))?,
            };
            let err =
                |message: String| EngineError::Runtime { engine: Engine::OnnxRuntime, path: path.clone(), message };
            ort::init_from(&path)
                .map_err(|e| err(e.to_string()))?
                .with_name("lens")
                .with_telemetry(false)
                .build()
                .map_err(|e| err(e.to_string()))
        })
        .clone()
}

/// Finds `libonnxruntime.so.1.*` from the `onnxruntime` wheel in the project's `.venv`.
pub fn find_runtime_library() -> Option<PathBuf> {
    find_in_venv("onnxruntime/capi", "libonnxruntime.so.1")
}

/// A classifier backed by one ONNX Runtime session.
pub struct OrtClassifier {
    session: Session,
    spec: ModelSpec,
    classes: usize,
}

impl OrtClassifier {
    pub fn load(model: &ModelDir, intra_threads: usize, lib: Option<&Path>) -> Result<Self, EngineError> {
        let env = runtime(lib)?;
        let path = model.onnx_path.clone();
        let err = |e: ort::Error| EngineError::Load { path: path.clone(), message: e.to_string() };
        let session = Session::builder(&env)
            .map_err(err)?
            .with_intra_threads(intra_threads)
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
        Ok(OrtClassifier { session, spec: model.spec.clone(), classes: model.labels.len() })
    }
}

impl Classifier for OrtClassifier {
    fn classify(&mut self, images: &[&ModelInput]) -> Result<Vec<Scores>, EngineError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        // The tensor takes the buffer, so each batch has its own.
        let mut data = vec![0.0; batch_len(&self.spec, images.len())];
        assemble(images, &self.spec, &mut data)?;
        let (w, h) = (self.spec.input.width as i64, self.spec.input.height as i64);
        let n = images.len() as i64;
        let shape = match self.spec.input.layout {
            Layout::Nchw => [n, 3, h, w],
            Layout::Nhwc => [n, h, w, 3],
        };
        let tensor = Tensor::from_array((shape, data)).map_err(|e| EngineError::Inference(e.to_string()))?;
        let input_name = self.spec.input.name.as_str();
        let outputs =
            self.session.run(ort::inputs![input_name => tensor]).map_err(|e| EngineError::Inference(e.to_string()))?;
        let output =
            outputs.get(&self.spec.output.name).ok_or_else(|| EngineError::Inference("missing output".into()))?;
        let (shape, values) = output.try_extract_tensor::<f32>().map_err(|e| EngineError::Inference(e.to_string()))?;
        scores_from_output(shape.iter().copied().collect(), values, images.len(), self.classes, self.spec.output.kind)
    }
}
