//! OpenVINO as an engine: the runtime library is the `libopenvino_c.so` of the
//! `openvino` wheel in the project's `.venv`, loaded once per process through
//! the `openvino` crate's run-time linking. It reads the same `model.onnx`.
//!
//! A pool of N sessions is one compiled model with N CPU streams, and one
//! infer request per session thread (batch 1 has a static-shape compilation
//! of its own; see [`Compiled`]). OpenVINO runs each stream on its own
//! thread(s), so N blocking `infer` calls from N session threads run in
//! parallel, as N ONNX Runtime sessions do, while the weights are compiled
//! and held once instead of N times (less memory, one compilation).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ::openvino::{
    CompiledModel, Core, DeviceType, ElementType, InferRequest, Model, PartialShape, PropertyKey, RwPropertyKey, Shape,
    Tensor,
};

use super::{Classifier, Engine, EngineError, Precision, Scores, assemble, find_in_venv, scores_from_output};
use crate::job::ModelInput;
use crate::model::{Layout, ModelDir, ModelSpec};

static LIBRARY: OnceLock<Result<PathBuf, EngineError>> = OnceLock::new();

/// Loads `libopenvino_c` once per process from `lib` (or the default location).
/// The first call decides: later calls with another path get the first one.
pub fn library(lib: Option<&Path>) -> Result<PathBuf, EngineError> {
    LIBRARY
        .get_or_init(|| {
            let path = match lib {
                Some(p) => p.to_owned(),
                None => find_library().ok_or(EngineError::RuntimeNotFound(Engine::OpenVino))?,
            };
            openvino_sys::library::load_from(path.clone()).map_err(|message| EngineError::Runtime {
                engine: Engine::OpenVino,
                path: path.clone(),
                message,
            })?;
            Ok(path)
        })
        .clone()
}

/// Finds `libopenvino_c.so.*` from the `openvino` wheel in the project's `.venv`.
pub fn find_library() -> Option<PathBuf> {
    find_in_venv("openvino/libs", "libopenvino_c.so")
}

/// One session: infer requests on the pool's shared compiled models.
pub struct OvClassifier {
    /// Runs batches of one, on the batch-1 model.
    single: InferRequest,
    /// Runs larger batches, on the dynamic-batch model; made on first use.
    batched: Option<InferRequest>,
    /// The compiled models (and their streams), alive while requests run.
    compiled: Arc<Mutex<Compiled>>,
    spec: ModelSpec,
    classes: usize,
    /// The input tensor of the last batch size, reused while it repeats;
    /// each batch is assembled straight into it.
    input: Option<(usize, Tensor)>,
}

/// What the sessions of one pool share. A model whose input shape is static
/// runs about 17% faster in OpenVINO than the same model with a dynamic batch
/// dimension (measured here, fp32, one thread: 113 against 96 img/s), and the
/// default `--max-batch` is 1, so batch 1 gets a static-shape compilation of
/// its own. Batches larger than 1 are compiled, once, when the first arrives.
struct Compiled {
    core: Core,
    /// The batch-1 model (static when the model could be reshaped).
    single: CompiledModel,
    /// The model as read, with its dynamic batch, until it is compiled;
    /// `None` when `single` itself is the dynamic one.
    dynamic_source: Option<Model>,
    dynamic: Option<CompiledModel>,
}

impl Compiled {
    /// An infer request for batches larger than 1.
    fn batched_request(&mut self) -> Result<InferRequest, EngineError> {
        let Some(source) = &self.dynamic_source else { return self.single.create_infer_request().map_err(inference) };
        let compiled = match &mut self.dynamic {
            Some(compiled) => compiled,
            None => {
                tracing::info!("OpenVINO: compiling the model for batches larger than 1");
                self.dynamic.insert(self.core.compile_model(source, DeviceType::CPU).map_err(inference)?)
            }
        };
        compiled.create_infer_request().map_err(inference)
    }
}

/// Fixes the model's batch dimension at 1, keeping the rest of its input shape.
fn reshape_to_batch_one(model: &mut Model, spec: &ModelSpec) -> Result<(), String> {
    let (w, h) = (i64::from(spec.input.width), i64::from(spec.input.height));
    let dims = match spec.input.layout {
        Layout::Nchw => [1, 3, h, w],
        Layout::Nhwc => [1, h, w, 3],
    };
    let shape = PartialShape::new_static(4, &dims).map_err(|e| e.to_string())?;
    model.reshape_input_by_name(&spec.input.name, &shape).map_err(|e| e.to_string())
}

/// Compiles `model` for `sessions` parallel streams of `intra_threads`
/// threads each, asking for `precision`. Returns one classifier per stream
/// and the precision OpenVINO actually compiled for (read back from the
/// compiled model, so the report is never only the wish).
pub fn load_sessions(
    model: &ModelDir,
    precision: Precision,
    sessions: usize,
    intra_threads: usize,
    lib: Option<&Path>,
) -> Result<(Vec<OvClassifier>, Precision), EngineError> {
    library(lib)?;
    let path = &model.onnx_path;
    let err = |e: &dyn Display| EngineError::Load { path: path.clone(), message: e.to_string() };
    let onnx = path.to_str().ok_or_else(|| err(&"the model path is not UTF-8"))?;
    let mut core = Core::new().map_err(|e| err(&e))?;
    // An int8 variant's quantized operators run in int8 whatever the hint;
    // f32 keeps the rest in f32 rather than bf16.
    let hint = match precision {
        Precision::Fp32 | Precision::Int8 => "f32",
        Precision::Bf16 => "bf16",
    };
    let streams = sessions.max(1);
    let threads = (streams * intra_threads.max(1)).to_string();
    let streams_text = streams.to_string();
    let properties = [
        (RwPropertyKey::HintInferencePrecision, hint),
        (RwPropertyKey::NumStreams, streams_text.as_str()),
        (RwPropertyKey::InferenceNumThreads, threads.as_str()),
        // The machine is shared with the decode pool and other processes:
        // pinning stream threads to cores would fight them.
        (RwPropertyKey::HintEnableCpuPinning, "NO"),
    ];
    core.set_properties(&DeviceType::CPU, properties).map_err(|e| err(&e))?;
    let mut single_model = core.read_model_from_file(onnx, "").map_err(|e| err(&e))?;
    let dynamic_source = match reshape_to_batch_one(&mut single_model, &model.spec) {
        Ok(()) => Some(core.read_model_from_file(onnx, "").map_err(|e| err(&e))?),
        Err(why) => {
            tracing::debug!(model = %model.spec.name, %why, "OpenVINO: the input keeps its dynamic shape");
            None
        }
    };
    let mut single = core.compile_model(&single_model, DeviceType::CPU).map_err(|e| err(&e))?;
    if single.get_input_by_name(&model.spec.input.name).is_err() {
        let name = &model.spec.input.name;
        return Err(err(&format!("model has no input named {name:?} (model.toml [input] name)")));
    }
    if single.get_output_by_name(&model.spec.output.name).is_err() {
        let name = &model.spec.output.name;
        return Err(err(&format!("model has no output named {name:?} (model.toml [output] name)")));
    }
    let actual =
        single.get_property(&PropertyKey::Rw(RwPropertyKey::HintInferencePrecision)).map_err(|e| err(&e))?.into_owned();
    let actual = match actual.as_str() {
        "bf16" => Precision::Bf16,
        "f32" if precision == Precision::Int8 => Precision::Int8,
        "f32" => Precision::Fp32,
        other => return Err(err(&format!("OpenVINO compiled for precision {other:?}, expected f32 or bf16"))),
    };
    let mut requests = Vec::with_capacity(streams);
    for _ in 0..streams {
        requests.push(single.create_infer_request().map_err(|e| err(&e))?);
    }
    let compiled = Arc::new(Mutex::new(Compiled { core, single, dynamic_source, dynamic: None }));
    let classifiers = requests
        .into_iter()
        .map(|request| OvClassifier {
            single: request,
            batched: None,
            compiled: Arc::clone(&compiled),
            spec: model.spec.clone(),
            classes: model.labels.len(),
            input: None,
        })
        .collect();
    Ok((classifiers, actual))
}

fn inference(e: impl Display) -> EngineError {
    EngineError::Inference(e.to_string())
}

impl OvClassifier {
    /// Makes the infer request for batches larger than 1, once.
    fn make_batched(&mut self) -> Result<(), EngineError> {
        if self.batched.is_none() {
            let mut compiled = self.compiled.lock().map_err(|_| inference("a session panicked while compiling"))?;
            self.batched = Some(compiled.batched_request()?);
        }
        Ok(())
    }

    /// The input tensor for a batch of `n`, allocated when the size changes.
    fn input_tensor<'a>(
        input: &'a mut Option<(usize, Tensor)>,
        spec: &ModelSpec,
        n: usize,
    ) -> Result<&'a mut Tensor, EngineError> {
        if input.as_ref().is_none_or(|(size, _)| *size != n) {
            let (w, h) = (spec.input.width as i64, spec.input.height as i64);
            let dims = match spec.input.layout {
                Layout::Nchw => [n as i64, 3, h, w],
                Layout::Nhwc => [n as i64, h, w, 3],
            };
            let shape = Shape::new(&dims).map_err(inference)?;
            *input = Some((n, Tensor::new(ElementType::F32, &shape).map_err(inference)?));
        }
        input.as_mut().map(|(_, t)| t).ok_or_else(|| inference("no input tensor"))
    }
}

impl Classifier for OvClassifier {
    fn classify(&mut self, images: &[&ModelInput]) -> Result<Vec<Scores>, EngineError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let tensor = Self::input_tensor(&mut self.input, &self.spec, images.len())?;
        assemble(images, &self.spec, tensor.get_data_mut::<f32>().map_err(inference)?)?;
        if images.len() > 1 {
            self.make_batched()?;
        }
        let request = match &mut self.batched {
            Some(batched) if images.len() > 1 => batched,
            _ => &mut self.single,
        };
        let Some((_, tensor)) = self.input.as_ref() else { return Err(inference("no input tensor")) };
        request.set_tensor(&self.spec.input.name, tensor).map_err(inference)?;
        request.infer().map_err(inference)?;
        let output = request.get_tensor(&self.spec.output.name).map_err(inference)?;
        let dims = output.get_shape().map_err(inference)?.get_dimensions().to_vec();
        if output.get_element_type().map_err(inference)? != ElementType::F32 {
            return Err(inference("the model output is not f32"));
        }
        let values = output.get_data::<f32>().map_err(inference)?;
        scores_from_output(dims, values, images.len(), self.classes, self.spec.output.kind)
    }
}
