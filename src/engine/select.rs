//! Choosing the engine and the precision, and loading a model's sessions
//! with them.
//!
//! `auto` engine: OpenVINO when it loads, compiles and runs the model, else
//! ONNX Runtime, with a warning that says why. `auto` precision: the model
//! directory's int8 variant when it is verified ([`int8_refusal`]: its report
//! shows top-1 agreement with fp32 at or above its gate on this engine) and
//! the CPU computes int8 fast (AVX2; VNNI makes it faster still), with a
//! logged reason when it is not, and a fall back when it does not load;
//! otherwise bf16 when the engine is OpenVINO and the CPU has native bf16
//! (AVX512_BF16 or AMX), fp32 elsewhere. The CPU decision is a pure function
//! of `/proc/cpuinfo` text and the choice a pure function of that answer, so
//! tests force both.

use std::path::PathBuf;

use super::{Classifier, Engine, EngineError, OrtClassifier, Precision, Runtime, SessionConfig, openvino};
use crate::job::ModelInput;
use crate::model::{EngineChoice, ModelDir, PrecisionChoice};
use crate::preprocess::Prepared;

/// How to pick and find the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub engine: EngineChoice,
    pub precision: PrecisionChoice,
    /// `libonnxruntime.so.1.*`; by default the one in `.venv`.
    pub ort_lib: Option<PathBuf>,
    /// `libopenvino_c.so.*`; by default the one in `.venv`.
    pub openvino_lib: Option<PathBuf>,
    /// Whether this CPU computes bf16 natively ([`this_cpu_has_native_bf16`];
    /// tests set it either way).
    pub cpu_bf16: bool,
}

/// Whether `/proc/cpuinfo` text shows native bf16 (the `avx512_bf16` or
/// `amx_bf16` flag) on every CPU it lists. Without it OpenVINO would emulate
/// bf16, slower than fp32.
pub fn cpu_has_native_bf16(cpuinfo: &str) -> bool {
    let mut flags = cpuinfo.lines().filter(|l| l.starts_with("flags")).peekable();
    flags.peek().is_some() && flags.all(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
}

/// [`cpu_has_native_bf16`] of this machine; false where it cannot tell.
pub fn this_cpu_has_native_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|t| cpu_has_native_bf16(&t))
}

/// The precision to ask `engine` for. ONNX Runtime runs fp32 only (its CPU
/// kernels have no bf16 path for these models), so an explicit bf16 there is
/// an error; `auto` is bf16 only on OpenVINO with native bf16.
pub fn choose_precision(choice: PrecisionChoice, engine: Engine, cpu_bf16: bool) -> Result<Precision, EngineError> {
    match (choice, engine) {
        (PrecisionChoice::Fp32, _) => Ok(Precision::Fp32),
        (PrecisionChoice::Int8, _) => Ok(Precision::Int8),
        (PrecisionChoice::Bf16, Engine::OnnxRuntime) => Err(EngineError::Unsupported(
            "ONNX Runtime runs this model in fp32 only; use --engine openvino (or auto) for bf16".into(),
        )),
        (PrecisionChoice::Bf16, Engine::OpenVino) => Ok(Precision::Bf16),
        (PrecisionChoice::Auto, Engine::OpenVino) if cpu_bf16 => Ok(Precision::Bf16),
        (PrecisionChoice::Auto, _) => Ok(Precision::Fp32),
    }
}

/// What a process that loads no model (an API node on Redis) expects its
/// workers to run, from the same options: `auto` is OpenVINO when its
/// library is there. Workers report what they really run in their heartbeat.
pub fn expected_runtime(model: &ModelDir, opts: &EngineOptions) -> Result<Runtime, EngineError> {
    let engine = match opts.engine {
        EngineChoice::OnnxRuntime => Engine::OnnxRuntime,
        EngineChoice::OpenVino => Engine::OpenVino,
        EngineChoice::Auto if opts.openvino_lib.is_some() || openvino::find_library().is_some() => Engine::OpenVino,
        EngineChoice::Auto => Engine::OnnxRuntime,
    };
    if opts.precision == PrecisionChoice::Auto && auto_int8(model, engine).is_ok() {
        return Ok(Runtime { engine, precision: Precision::Int8 });
    }
    Ok(Runtime { engine, precision: choose_precision(opts.precision, engine, opts.cpu_bf16)? })
}

/// The top-1 agreement gate of a report that names none.
const DEFAULT_INT8_GATE: f64 = 0.97;

/// Why a model's int8 variant is not verified for `engine`, or `None` when
/// it is: the variant exists, and its report (`model.int8.json`, written by
/// `lens quantize` and `tools/quantize_int8.py`) shows top-1 agreement with
/// fp32 on held-out photos at or above the report's gate, measured on this
/// engine (else on ONNX Runtime), when it was made or when its calibration
/// ranges were.
pub fn int8_refusal(model: &ModelDir, engine: Engine) -> Option<String> {
    let path = model.int8_path();
    if !path.is_file() {
        return Some(format!("the model directory has no int8 variant ({})", path.display()));
    }
    let report_path = path.with_extension("json");
    let Ok(text) = std::fs::read_to_string(&report_path) else {
        return Some(format!("the int8 variant has no report ({})", report_path.display()));
    };
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let held_out = &report["heldout"];
    let agreement = held_out.get("agreement").or_else(|| held_out.pointer("/measured_when_calibrated/agreement"));
    let Some(agreement) = agreement else {
        return Some("the int8 variant's report holds no agreement with fp32".into());
    };
    let figure = agreement[engine.as_str()]["top1_agreement"]
        .as_f64()
        .or_else(|| agreement["onnxruntime"]["top1_agreement"].as_f64());
    let gate = held_out["min_agreement"].as_f64().unwrap_or(DEFAULT_INT8_GATE);
    match figure {
        Some(f) if f >= gate => None,
        Some(f) => Some(format!("its top-1 agreement with fp32 is {f:.4}, under the gate of {gate}")),
        None => Some("the int8 variant's report holds no agreement with fp32".into()),
    }
}

/// Whether `auto` runs the int8 variant: verified, and a CPU that computes
/// int8 faster than fp32 (AVX2 and up).
fn auto_int8(model: &ModelDir, engine: Engine) -> Result<(), String> {
    if !cpu_computes_int8_fast() {
        return Err("this CPU has no AVX2, where int8 is not faster than fp32".into());
    }
    int8_refusal(model, engine).map_or(Ok(()), Err)
}

fn cpu_computes_int8_fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Loads `sessions` classifiers of `model` with the engine and precision
/// `opts` choose, and says which runtime they use (the precision is the one
/// the engine compiled for, not only the one asked).
pub fn load_sessions(
    model: &ModelDir,
    opts: &EngineOptions,
    sessions: SessionConfig,
) -> Result<(Vec<Box<dyn Classifier>>, Runtime), EngineError> {
    match opts.engine {
        EngineChoice::OnnxRuntime => load_with(Engine::OnnxRuntime, model, opts, sessions),
        EngineChoice::OpenVino => load_with(Engine::OpenVino, model, opts, sessions),
        EngineChoice::Auto => {
            let tried = load_with(Engine::OpenVino, model, opts, sessions).and_then(|(mut classifiers, runtime)| {
                // Some operators fail only when run: one inference proves it.
                if let Some(first) = classifiers.first_mut() {
                    first.classify(&[&gray(model)])?;
                }
                Ok((classifiers, runtime))
            });
            tried.or_else(|e| {
                tracing::warn!(model = %model.spec.name, error = %e, "OpenVINO cannot run this model; falling back to ONNX Runtime");
                load_with(Engine::OnnxRuntime, model, opts, sessions)
            })
        }
    }
}

fn load_with(
    engine: Engine,
    model: &ModelDir,
    opts: &EngineOptions,
    sessions: SessionConfig,
) -> Result<(Vec<Box<dyn Classifier>>, Runtime), EngineError> {
    if opts.precision == PrecisionChoice::Auto {
        match auto_int8(model, engine) {
            Ok(()) => match load_precision(engine, model, opts, sessions, Precision::Int8) {
                Ok(loaded) => return Ok(loaded),
                Err(e) => tracing::warn!(
                    model = %model.spec.name, error = %e,
                    "auto precision: the int8 variant does not load; running the fp32 model"
                ),
            },
            Err(why) => tracing::info!(model = %model.spec.name, %why, "auto precision: not int8"),
        }
    }
    let precision = choose_precision(opts.precision, engine, opts.cpu_bf16)?;
    load_precision(engine, model, opts, sessions, precision)
}

fn load_precision(
    engine: Engine,
    model: &ModelDir,
    opts: &EngineOptions,
    sessions: SessionConfig,
    precision: Precision,
) -> Result<(Vec<Box<dyn Classifier>>, Runtime), EngineError> {
    // A precision is a property of a model variant: int8 runs the int8 file.
    let int8;
    let model = match precision {
        Precision::Int8 => {
            int8 = model.int8_variant().map_err(|e| EngineError::Unsupported(e.to_string()))?;
            &int8
        }
        _ => model,
    };
    let n = sessions.sessions.max(1);
    match engine {
        Engine::OnnxRuntime => {
            let mut classifiers: Vec<Box<dyn Classifier>> = Vec::with_capacity(n);
            for _ in 0..n {
                classifiers.push(Box::new(OrtClassifier::load(
                    model,
                    sessions.intra_threads,
                    opts.ort_lib.as_deref(),
                )?));
            }
            Ok((classifiers, Runtime { engine, precision }))
        }
        Engine::OpenVino => {
            let lib = opts.openvino_lib.as_deref();
            let (classifiers, precision) = openvino::load_sessions(model, precision, n, sessions.intra_threads, lib)?;
            let classifiers = classifiers.into_iter().map(|c| Box::new(c) as Box<dyn Classifier>).collect();
            Ok((classifiers, Runtime { engine, precision }))
        }
    }
}

/// A mid-gray image of the model's input size.
pub(crate) fn gray(model: &ModelDir) -> ModelInput {
    let (width, height) = (model.spec.input.width, model.spec.input.height);
    ModelInput::Image(Prepared { width, height, rgb: vec![128; (width * height * 3) as usize] })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH: &str = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n\n\
                        processor\t: 1\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n";
    const AMX: &str = "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n";
    const WITHOUT: &str = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n";

    #[test]
    fn native_bf16_comes_from_the_cpu_flags() {
        assert!(cpu_has_native_bf16(WITH));
        assert!(cpu_has_native_bf16(AMX));
        assert!(!cpu_has_native_bf16(WITHOUT));
        assert!(!cpu_has_native_bf16(""), "no flags line (not x86, or no /proc): fp32");
        let mixed = format!("{WITH}\n{WITHOUT}");
        assert!(!cpu_has_native_bf16(&mixed), "every CPU must have it");
    }

    #[test]
    fn auto_precision_is_bf16_only_on_openvino_with_native_bf16() {
        use PrecisionChoice::*;
        let choose = |c, e, cpu| choose_precision(c, e, cpu).ok();
        assert_eq!(choose(Auto, Engine::OpenVino, true), Some(Precision::Bf16));
        assert_eq!(choose(Auto, Engine::OpenVino, false), Some(Precision::Fp32));
        assert_eq!(choose(Auto, Engine::OnnxRuntime, true), Some(Precision::Fp32));
        assert_eq!(choose(Fp32, Engine::OpenVino, true), Some(Precision::Fp32));
        assert_eq!(choose(Bf16, Engine::OpenVino, false), Some(Precision::Bf16), "explicit bf16 is honoured");
        assert_eq!(choose(Bf16, Engine::OnnxRuntime, true), None, "ONNX Runtime has no bf16");
    }

    #[test]
    fn runtime_names_are_stable() {
        let r = Runtime { engine: Engine::OpenVino, precision: Precision::Bf16 };
        assert_eq!(r.to_string(), "openvino-bf16");
        let r = Runtime { engine: Engine::OnnxRuntime, precision: Precision::Fp32 };
        assert_eq!(r.to_string(), "onnxruntime-fp32");
    }
}
