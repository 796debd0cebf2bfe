//! `inference.GRPCInferenceService`: each RPC is the `/v2` route of the same
//! name, on the same [`AppState`], answered in protobuf.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::{self, infer_parameter::ParameterChoice, model_infer_response};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::v2::infer::{
    self, Answering, Checked, Data, Input, MAX_INFER_BATCH, ModelFacts, OutputRequest, Rendered,
};
use crate::http::v2::{self as v2, ModelPath, input_shape, repository};
use crate::metrics::StageCounter;
use crate::model::Layout;
use crate::predictor::Predictor;

pub struct Oip {
    state: AppState,
}

impl Oip {
    pub fn new(state: AppState) -> Self {
        Oip { state }
    }

    /// `e` as a gRPC status, counted as the HTTP front counts its refusals.
    fn refuse(&self, e: ApiError) -> Status {
        self.state.metrics.reject(e.reason());
        e.to_grpc()
    }

    /// The served version of `name` (and of `version`, unless empty).
    fn served(&self, name: &str, version: &str) -> Result<Arc<Predictor>, Status> {
        let path = ModelPath::new(name, (!version.is_empty()).then_some(version));
        v2::served(&self.state, &path).map_err(|e| self.refuse(e))
    }

    async fn infer(&self, req: proto::ModelInferRequest) -> Result<proto::ModelInferResponse, ApiError> {
        let version = Some(req.model_version.as_str()).filter(|v| !v.is_empty());
        let p = v2::served(&self.state, &ModelPath::new(&req.model_name, version))?;
        let started = Instant::now();
        let (shape, classes, output) = (input_shape(&p), p.model.labels.len(), p.model.spec.output.name.clone());
        let checked = p
            .on_cpu_pool(move || check(&ModelFacts { shape, classes, output: &output }, req))
            .await
            .map_err(ApiError::from)
            .and_then(|checked| checked);
        let Checked { id, payload, outputs: plans } =
            checked.inspect_err(|_| p.stats().finish(false, started.elapsed()))?;
        let rows = infer::predict(&p, payload).await?;
        let began_output = Instant::now();
        let _reply = tracing::debug_span!("reply").entered();
        let facts = Answering::of(&p);
        let mut outputs = Vec::with_capacity(plans.len());
        let mut raw = Vec::with_capacity(plans.len());
        for plan in &plans {
            let rendered = Rendered::new(plan, facts.labels, &rows);
            outputs.push(model_infer_response::InferOutputTensor {
                name: facts.output.to_owned(),
                datatype: rendered.datatype().to_owned(),
                shape: rendered.shape().iter().map(|&d| d as i64).collect(),
                ..Default::default()
            });
            raw.push(Bytes::from(rendered.raw()));
        }
        infer::record_output(&p, began_output, rows.len());
        Ok(proto::ModelInferResponse {
            model_name: facts.model.to_owned(),
            model_version: facts.version.to_owned(),
            id: id.unwrap_or_default(),
            parameters: HashMap::new(),
            outputs,
            raw_output_contents: raw,
        })
    }
}

/// Checks a `ModelInferRequest` against `model`, as [`infer::parse_request`]
/// checks an HTTP body: one input, BYTES images or FP32 tensors, from
/// `raw_input_contents` or the typed `contents`; each output asked once.
/// Pure, and a fuzz target.
pub fn check(model: &ModelFacts, req: proto::ModelInferRequest) -> Result<Checked, ApiError> {
    let proto::ModelInferRequest { id, mut inputs, outputs, raw_input_contents, .. } = req;
    infer::check_id(Some(&id))?;
    let [input] = inputs.as_mut_slice() else {
        return Err(infer::one_input(inputs.len()));
    };
    let raw = match <[Bytes; 1]>::try_from(raw_input_contents) {
        Ok([raw]) => Some(raw),
        Err(v) if v.is_empty() => None,
        Err(v) => {
            return Err(infer::bad(format!("raw_input_contents has {} entries for 1 input", v.len())));
        }
    };
    let data = input.contents.take().map(|c| contents(&input.datatype, c)).transpose()?;
    if raw.is_some() && data.is_some() {
        return Err(infer::bad(format!("input {:?} has both contents and raw_input_contents", input.name)));
    }
    if raw.is_none() && data.is_none() {
        return Err(infer::bad(format!("input {:?} has neither contents nor raw_input_contents", input.name)));
    }
    let payload = infer::read_input(
        model.shape,
        Input {
            name: std::mem::take(&mut input.name),
            shape: std::mem::take(&mut input.shape),
            datatype: std::mem::take(&mut input.datatype),
            raw,
            data,
        },
    )?;
    let requested: Vec<OutputRequest> = outputs
        .into_iter()
        .map(|o| {
            let classification = match o.parameters.get("classification").and_then(|p| p.parameter_choice.as_ref()) {
                None => None,
                Some(ParameterChoice::Int64Param(k)) => Some(u64::try_from(*k).unwrap_or(0)),
                Some(ParameterChoice::Uint64Param(k)) => Some(*k),
                Some(_) => return Err(infer::bad("the classification parameter must be an integer")),
            };
            Ok(OutputRequest { name: o.name, binary: Some(true), classification })
        })
        .collect::<Result<_, _>>()?;
    let outputs = infer::plan_outputs(model, true, &requested)?;
    Ok(Checked { id: (!id.is_empty()).then_some(id), payload, outputs })
}

/// The typed contents of an input of `datatype`: `bytes_contents` for
/// BYTES, `fp32_contents` for FP32 (at most [`MAX_INFER_BATCH`] images).
fn contents(datatype: &str, c: proto::InferTensorContents) -> Result<Data, ApiError> {
    match datatype {
        "BYTES" if c.bytes_contents.len() > MAX_INFER_BATCH => {
            Err(infer::bad(format!("contents hold more than {MAX_INFER_BATCH} images")))
        }
        "BYTES" => Ok(Data::Blobs(c.bytes_contents)),
        "FP32" => Ok(Data::Numbers(c.fp32_contents)),
        // read_input names the datatypes it takes.
        _ => Ok(Data::Empty),
    }
}

fn duration(c: &StageCounter) -> Option<proto::StatisticDuration> {
    let (count, ns) = c.get();
    Some(proto::StatisticDuration { count, ns })
}

fn statistics(p: &Predictor) -> proto::ModelStatistics {
    let s = p.stats();
    let (success, _) = s.success.get();
    proto::ModelStatistics {
        name: p.name().to_owned(),
        version: p.version().to_owned(),
        last_inference: s.last_inference_ms.load(std::sync::atomic::Ordering::Relaxed),
        inference_count: success,
        execution_count: success,
        inference_stats: Some(proto::InferStatistics {
            success: duration(&s.success),
            fail: duration(&s.fail),
            queue: duration(&s.queue),
            compute_input: duration(&s.compute_input),
            compute_infer: duration(&s.compute_infer),
            compute_output: duration(&s.compute_output),
            cache_hit: duration(&s.cache_hit),
            cache_miss: duration(&s.cache_miss),
        }),
        ..Default::default()
    }
}

/// Triton's model configuration, as `GET /v2/models/{m}/config` answers it.
fn config(p: &Predictor) -> proto::ModelConfig {
    use proto::{model_input::Format, model_instance_group::Kind};
    let spec = &p.model.spec;
    let i = &spec.input;
    let (format, dims) = match i.layout {
        Layout::Nchw => (Format::Nchw, vec![3, i.height as i64, i.width as i64]),
        Layout::Nhwc => (Format::Nhwc, vec![i.height as i64, i.width as i64, 3]),
    };
    proto::ModelConfig {
        name: spec.name.clone(),
        platform: "onnxruntime_onnx".into(),
        backend: "onnxruntime".into(),
        max_batch_size: MAX_INFER_BATCH as i32,
        input: vec![
            proto::ModelInput {
                name: i.name.clone(),
                data_type: proto::DataType::TypeFp32 as i32,
                format: format as i32,
                dims,
                ..Default::default()
            },
            proto::ModelInput {
                name: "image".into(),
                data_type: proto::DataType::TypeString as i32,
                dims: vec![1],
                reshape: Some(proto::ModelTensorReshape { shape: vec![] }),
                ..Default::default()
            },
        ],
        output: vec![proto::ModelOutput {
            name: spec.output.name.clone(),
            data_type: proto::DataType::TypeFp32 as i32,
            dims: vec![p.model.labels.len() as i64],
            label_filename: spec.labels.clone(),
            ..Default::default()
        }],
        instance_group: vec![proto::ModelInstanceGroup {
            name: spec.name.clone(),
            kind: Kind::Cpu as i32,
            count: p.capacity().sessions as i32,
            ..Default::default()
        }],
        parameters: HashMap::from([(
            "version".to_owned(),
            proto::ModelParameter { string_value: spec.version.clone() },
        )]),
        ..Default::default()
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for Oip {
    async fn server_live(&self, _: Request<proto::ServerLiveRequest>) -> Answer<proto::ServerLiveResponse> {
        Ok(Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<proto::ServerReadyRequest>) -> Answer<proto::ServerReadyResponse> {
        Ok(Response::new(proto::ServerReadyResponse { ready: self.state.models.all_ready() }))
    }

    async fn model_ready(&self, req: Request<proto::ModelReadyRequest>) -> Answer<proto::ModelReadyResponse> {
        let req = req.into_inner();
        let p = self.served(&req.name, &req.version)?;
        Ok(Response::new(proto::ModelReadyResponse { ready: p.is_ready() }))
    }

    async fn server_metadata(&self, _: Request<proto::ServerMetadataRequest>) -> Answer<proto::ServerMetadataResponse> {
        Ok(Response::new(proto::ServerMetadataResponse {
            name: "lens".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: v2::EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(&self, req: Request<proto::ModelMetadataRequest>) -> Answer<proto::ModelMetadataResponse> {
        let req = req.into_inner();
        let p = self.served(&req.name, &req.version)?;
        let spec = &p.model.spec;
        let to_proto = |tensors: Vec<v2::TensorMetadata>| -> Vec<_> {
            let tensor = |t: v2::TensorMetadata| proto::model_metadata_response::TensorMetadata {
                name: t.name,
                datatype: t.datatype.to_owned(),
                shape: t.shape,
            };
            tensors.into_iter().map(tensor).collect()
        };
        let (inputs, outputs) = v2::tensors(&p);
        Ok(Response::new(proto::ModelMetadataResponse {
            name: spec.name.clone(),
            versions: vec![spec.version.clone()],
            platform: v2::platform(&p).into(),
            inputs: to_proto(inputs),
            outputs: to_proto(outputs),
        }))
    }

    async fn model_infer(&self, req: Request<proto::ModelInferRequest>) -> Answer<proto::ModelInferResponse> {
        self.infer(req.into_inner()).await.map(Response::new).map_err(|e| self.refuse(e))
    }

    async fn model_config(&self, req: Request<proto::ModelConfigRequest>) -> Answer<proto::ModelConfigResponse> {
        let req = req.into_inner();
        let p = self.served(&req.name, &req.version)?;
        Ok(Response::new(proto::ModelConfigResponse { config: Some(config(&p)) }))
    }

    async fn model_statistics(
        &self,
        req: Request<proto::ModelStatisticsRequest>,
    ) -> Answer<proto::ModelStatisticsResponse> {
        let req = req.into_inner();
        let models =
            if req.name.is_empty() { self.state.models.all() } else { vec![self.served(&req.name, &req.version)?] };
        Ok(Response::new(proto::ModelStatisticsResponse {
            model_stats: models.iter().map(|p| statistics(p)).collect(),
        }))
    }

    async fn repository_index(
        &self,
        req: Request<proto::RepositoryIndexRequest>,
    ) -> Answer<proto::RepositoryIndexResponse> {
        use proto::repository_index_response::ModelIndex;
        let models = repository::index(&self.state, req.into_inner().ready)
            .into_iter()
            .map(|e| ModelIndex { name: e.name, version: e.version, state: e.state.to_owned(), reason: e.reason })
            .collect();
        Ok(Response::new(proto::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<proto::RepositoryModelLoadRequest>,
    ) -> Answer<proto::RepositoryModelLoadResponse> {
        let name = req.into_inner().model_name;
        repository::load(&self.state, &name).await.map_err(|e| self.refuse(e))?;
        Ok(Response::new(proto::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<proto::RepositoryModelUnloadRequest>,
    ) -> Answer<proto::RepositoryModelUnloadResponse> {
        let name = req.into_inner().model_name;
        repository::unload(&self.state, &name).await.map_err(|e| self.refuse(e))?;
        Ok(Response::new(proto::RepositoryModelUnloadResponse {}))
    }
}
