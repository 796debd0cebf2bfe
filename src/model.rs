//! A model directory: `model.toml`, the ONNX file and the labels.
//!
//! `model.toml` declares everything the server must know to feed a classifier
//! and read its answer: input name, layout and size, how to resize, the
//! channel order, the normalisation and whether the output is logits or
//! probabilities. See `models/examples/` for documented presets. It may also
//! choose the engine and precision ([`EngineChoice`], [`PrecisionChoice`]);
//! the command line overrides both.
//!
//!
//! In a model repository's layout, `<name>/<version>/` with a numbered
//! version directory, the directories name the model and its version:
//! they override `name` and `version` of its model.toml.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors while loading a model directory. These happen at start-up only.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Tensor layout of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// Order of the colour channels the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChannelOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

/// How the source image is brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeKind {
    /// Crop a centred square of side `crop_fraction * min(w, h)`, then resize.
    CenterCrop,
    /// Resize the whole image to the input size, ignoring aspect ratio.
    Squash,
}

/// Resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos3,
}

/// Whether the output tensor holds logits (softmax is applied) or probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Logits,
    Probabilities,
}

/// Which engine runs the model: `auto` is OpenVINO when it compiles the
/// model, else ONNX Runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    OnnxRuntime,
    OpenVino,
    #[default]
    Auto,
}

/// The arithmetic precision inside the model: `auto` is bf16 on CPUs with
/// native bf16 (and an engine that supports it), fp32 elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    Fp32,
    Bf16,
    /// The model directory's int8 variant (`model.int8.onnx`).
    Int8,
    #[default]
    Auto,
}

impl EngineChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineChoice::OnnxRuntime => "onnxruntime",
            EngineChoice::OpenVino => "openvino",
            EngineChoice::Auto => "auto",
        }
    }
}

impl PrecisionChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            PrecisionChoice::Fp32 => "fp32",
            PrecisionChoice::Bf16 => "bf16",
            PrecisionChoice::Int8 => "int8",
            PrecisionChoice::Auto => "auto",
        }
    }
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "onnxruntime" => Ok(EngineChoice::OnnxRuntime),
            "openvino" => Ok(EngineChoice::OpenVino),
            "auto" => Ok(EngineChoice::Auto),
            _ => Err(format!("unknown engine {s:?}: use onnxruntime, openvino or auto")),
        }
    }
}

impl std::str::FromStr for PrecisionChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(PrecisionChoice::Fp32),
            "bf16" => Ok(PrecisionChoice::Bf16),
            "int8" => Ok(PrecisionChoice::Int8),
            "auto" => Ok(PrecisionChoice::Auto),
            _ => Err(format!("unknown precision {s:?}: use fp32, bf16, int8 or auto")),
        }
    }
}

/// Geometry of the preprocessing: everything needed to turn encoded bytes
/// into an `height x width` RGB8 image. Normalisation happens later, when a
/// batch tensor is assembled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizeSpec {
    pub width: u32,
    pub height: u32,
    pub kind: ResizeKind,
    /// Only used by [`ResizeKind::CenterCrop`]; in `(0, 1]`.
    pub crop_fraction: f32,
    pub interpolation: Interpolation,
}

impl ResizeSpec {
    /// The default model's rule at `size` x `size`: a centre square of 0.875
    /// of the short side, resized with Pillow's bicubic.
    pub fn center_crop(size: u32) -> ResizeSpec {
        ResizeSpec {
            width: size,
            height: size,
            kind: ResizeKind::CenterCrop,
            crop_fraction: default_crop_fraction(),
            interpolation: Interpolation::Bicubic,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub layout: Layout,
    pub width: u32,
    pub height: u32,
    #[serde(default = "default_channel_order")]
    pub channel_order: ChannelOrder,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub resize: ResizeKind,
    #[serde(default = "default_crop_fraction")]
    pub crop_fraction: f32,
    pub interpolation: Interpolation,
    /// Per channel, in `channel_order`, in 0..255 units.
    pub mean: [f32; 3],
    /// Per channel, in `channel_order`, in 0..255 units.
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub kind: OutputKind,
}

/// The parsed `model.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub labels: String,
    #[serde(default = "default_onnx")]
    pub onnx: String,
    #[serde(default)]
    pub source: Option<String>,
    /// `engine = "onnxruntime" | "openvino" | "auto"`; `--engine` overrides it.
    #[serde(default)]
    pub engine: Option<EngineChoice>,
    /// `precision = "fp32" | "bf16" | "auto"`; `--precision` overrides it.
    #[serde(default)]
    pub precision: Option<PrecisionChoice>,
    pub input: InputSpec,
    pub preprocess: PreprocessSpec,
    pub output: OutputSpec,
}

fn default_channel_order() -> ChannelOrder {
    ChannelOrder::Rgb
}
fn default_crop_fraction() -> f32 {
    0.875
}
fn default_onnx() -> String {
    "model.onnx".to_string()
}

impl ModelSpec {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelError> {
        let spec: ModelSpec =
            toml::from_str(text).map_err(|e| ModelError::Invalid { path: path.to_owned(), message: e.to_string() })?;
        spec.validate().map_err(|message| ModelError::Invalid { path: path.to_owned(), message })?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        let i = &self.input;
        if !(1..=4096).contains(&i.width) || !(1..=4096).contains(&i.height) {
            return Err(format!("input size {}x{} must be within 1..=4096", i.width, i.height));
        }
        let p = &self.preprocess;
        if !(p.crop_fraction > 0.0 && p.crop_fraction <= 1.0) {
            return Err(format!("crop_fraction {} must be in (0, 1]", p.crop_fraction));
        }
        if p.std.iter().any(|s| !s.is_finite() || *s == 0.0) || p.mean.iter().any(|m| !m.is_finite()) {
            return Err("mean must be finite and std finite and non-zero".into());
        }
        Ok(())
    }

    pub fn resize_spec(&self) -> ResizeSpec {
        ResizeSpec {
            width: self.input.width,
            height: self.input.height,
            kind: self.preprocess.resize,
            crop_fraction: self.preprocess.crop_fraction,
            interpolation: self.preprocess.interpolation,
        }
    }
}

/// A loaded model directory: its spec, labels and the path of its ONNX file.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub spec: ModelSpec,
    pub labels: Vec<String>,
    pub onnx_path: PathBuf,
}

impl ModelDir {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let toml_path = dir.join("model.toml");
        let text = read(&toml_path)?;
        let mut spec = ModelSpec::parse(&text, &toml_path)?;
        if let Some((name, version)) = repository_names(dir) {
            (spec.name, spec.version) = (name, version);
        }
        let labels_path = dir.join(&spec.labels);
        let labels: Vec<String> =
            read(&labels_path)?.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        if labels.is_empty() {
            return Err(ModelError::Invalid { path: labels_path, message: "no labels".into() });
        }
        let onnx_path = dir.join(&spec.onnx);
        if !onnx_path.is_file() {
            return Err(ModelError::Io {
                path: onnx_path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "model file not found"),
            });
        }
        Ok(ModelDir { dir: dir.to_owned(), spec, labels, onnx_path })
    }

    /// The path of the int8 variant beside the model file: `model.onnx` has
    /// `model.int8.onnx` (`tools/quantize_int8.py` writes it).
    pub fn int8_path(&self) -> PathBuf {
        let stem = self.onnx_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        self.onnx_path.with_file_name(format!("{stem}.int8.onnx"))
    }

    /// This model with its int8 variant's file (an error if there is none).
    pub fn int8_variant(&self) -> Result<ModelDir, ModelError> {
        let path = self.int8_path();
        if !path.is_file() {
            return Err(ModelError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no int8 variant of this model: make one with tools/quantize_int8.py (`make model` does for the default model)",
                ),
            });
        }
        Ok(ModelDir { onnx_path: path, ..self.clone() })
    }
}

/// `(name, version)` if `dir` is `<name>/<version>/` with a numbered version.
pub fn repository_names(dir: &Path) -> Option<(String, String)> {
    let version = dir.file_name()?.to_str()?;
    let name = dir.parent()?.file_name()?.to_str()?;
    let numbered = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
    numbered.then(|| (name.to_owned(), version.to_owned()))
}

fn read(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LITE0: &str = r#"
name = "efficientnet-lite0"
version = "1"
labels = "labels.txt"
[input]
name = "input"
layout = "NCHW"
width = 224
height = 224
channel_order = "RGB"
[preprocess]
resize = "center-crop"
crop_fraction = 0.875
interpolation = "bicubic"
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]
[output]
name = "logits"
kind = "logits"
"#;

    #[test]
    fn parses_the_default_model_spec() {
        let spec = ModelSpec::parse(LITE0, Path::new("model.toml")).unwrap();
        assert_eq!(spec.input.layout, Layout::Nchw);
        assert_eq!(spec.preprocess.resize, ResizeKind::CenterCrop);
        assert_eq!(spec.preprocess.interpolation, Interpolation::Bicubic);
        assert_eq!(spec.output.kind, OutputKind::Logits);
        assert_eq!(spec.onnx, "model.onnx");
        assert_eq!((spec.engine, spec.precision), (None, None));
    }

    #[test]
    fn engine_and_precision_keys_parse_and_reject_unknown_values() {
        let with = format!("engine = \"openvino\"\nprecision = \"bf16\"\n{LITE0}");
        let spec = ModelSpec::parse(&with, Path::new("m")).unwrap();
        assert_eq!((spec.engine, spec.precision), (Some(EngineChoice::OpenVino), Some(PrecisionChoice::Bf16)));
        let bad = format!("engine = \"tensorrt\"\n{LITE0}");
        assert!(ModelSpec::parse(&bad, Path::new("m")).is_err());
        let bad = format!("precision = \"int4\"\n{LITE0}");
        assert!(ModelSpec::parse(&bad, Path::new("m")).is_err());
        assert_eq!("onnxruntime".parse(), Ok(EngineChoice::OnnxRuntime));
        assert_eq!("auto".parse(), Ok(PrecisionChoice::Auto));
        assert!("fp16".parse::<PrecisionChoice>().is_err());
    }

    #[test]
    fn rejects_zero_std_and_bad_crop() {
        let bad = LITE0.replace("std = [128.0, 128.0, 128.0]", "std = [1.0, 0.0, 1.0]");
        assert!(ModelSpec::parse(&bad, Path::new("m")).is_err());
        let bad = LITE0.replace("crop_fraction = 0.875", "crop_fraction = 1.5");
        assert!(ModelSpec::parse(&bad, Path::new("m")).is_err());
        let bad = LITE0.replace("layout = \"NCHW\"", "layout = \"CHW\"");
        assert!(ModelSpec::parse(&bad, Path::new("m")).is_err());
    }

    #[test]
    fn a_numbered_directory_names_the_version_and_its_parent_the_model() {
        assert_eq!(repository_names(Path::new("repo/lite/12")), Some(("lite".into(), "12".into())));
        assert_eq!(repository_names(Path::new("models/efficientnet-lite0")), None);
        assert_eq!(repository_names(Path::new("repo/lite/v2")), None);
    }

    #[test]
    fn example_presets_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/examples");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                ModelSpec::parse(&text, &path).unwrap();
                n += 1;
            }
        }
        assert!(n >= 2, "expected the torchvision and keras-caffe presets");
    }
}
