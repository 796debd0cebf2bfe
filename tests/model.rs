//! The real model on real photos: expected labels, agreement with the
//! onnxruntime-Python reference, batch consistency and the `lens predict` CLI.

mod common;

use std::process::Command;

use lens::engine::{Classifier, OrtClassifier};
use lens::job::ModelInput;
use lens::model::ModelDir;
use lens::preprocess::prepare;
use lens::ranking::ranked;

fn model() -> ModelDir {
    ModelDir::load(&common::root().join("models/efficientnet-lite0"))
        .expect("default model missing: run `make setup` first")
}

fn prepared(model: &ModelDir, name: &str) -> ModelInput {
    let bytes = std::fs::read(common::fixture_path(name)).unwrap();
    ModelInput::Image(prepare(&bytes, &model.spec.resize_spec(), 40_000_000).unwrap())
}

const PHOTOS: [&str; 4] = ["dog.jpeg", "coffee.png", "chelsea.png", "grace_hopper.jpg"];
const CATS: [&str; 5] = ["tabby", "tiger_cat", "Persian_cat", "Siamese_cat", "Egyptian_cat"];

#[test]
fn real_photos_get_their_expected_labels() {
    let model = model();
    let mut c = OrtClassifier::load(&model, 1, None).unwrap();
    let mut top1 = |name: &str| {
        let img = prepared(&model, name);
        let scores = c.classify(&[&img]).unwrap().remove(0);
        ranked(&scores, &model.labels, 1).remove(0)
    };
    assert_eq!(top1("dog.jpeg").label, "Eskimo_dog");
    assert_eq!(top1("coffee.png").label, "espresso");
    let cat = top1("chelsea.png");
    assert!(CATS.contains(&cat.label.as_str()), "chelsea predicted {cat:?}");
}

#[test]
fn labels_are_keras_decode_predictions_names() {
    let model = model();
    assert_eq!(model.labels.len(), 1000);
    assert_eq!(model.labels[248], "Eskimo_dog");
    assert_eq!(model.labels[2], "great_white_shark");
    assert_eq!(model.labels[967], "espresso");
}

#[test]
fn a_batch_gives_the_same_scores_as_single_images() {
    let model = model();
    let mut c = OrtClassifier::load(&model, 1, None).unwrap();
    let imgs: Vec<ModelInput> = PHOTOS.iter().map(|n| prepared(&model, n)).collect();
    let refs: Vec<&ModelInput> = imgs.iter().collect();
    let batch = c.classify(&refs).unwrap();
    for (img, row) in imgs.iter().zip(&batch) {
        let single = c.classify(&[img]).unwrap().remove(0);
        let diff = single.iter().zip(row).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-4, "batch and single differ by {diff}");
    }
}

#[test]
fn rust_pipeline_agrees_with_the_python_reference() {
    let model = model();
    let python = common::root().join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(common::root().join("tools/reference_predict.py"))
        .arg(&model.dir)
        .args(PHOTOS.iter().map(|n| common::fixture_path(n)))
        .output()
        .expect("run the reference script");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = OrtClassifier::load(&model, 1, None).unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), PHOTOS.len());
    for (name, reference) in PHOTOS.iter().zip(&lines) {
        let scores = c.classify(&[&prepared(&model, name)]).unwrap().remove(0);
        let ours = ranked(&scores, &model.labels, 1).remove(0);
        let theirs = &reference["top5"][0];
        assert_eq!(ours.index as u64, theirs["index"].as_u64().unwrap(), "{name}: top-1 differs");
        let (p, q) = (scores[ours.index] as f64, theirs["score"].as_f64().unwrap());
        assert!((p - q).abs() < 0.02, "{name}: top-1 probability {p} vs reference {q}");
    }
}

#[test]
fn predict_cli_prints_json_and_fails_on_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.jpg");
    std::fs::write(&bad, b"this is not a picture").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lens"))
        .args(["predict", "--json", "--model"])
        .arg(common::root().join("models/efficientnet-lite0"))
        .arg(common::fixture_path("dog.jpeg"))
        .arg(&bad)
        .arg(common::fixture_path("coffee.png"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad file must give a non-zero exit code");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["prediction"], "Eskimo_dog");
    assert!(lines[1]["error"].as_str().unwrap().contains("not a supported image"));
    assert_eq!(lines[2]["prediction"], "espresso");
    assert!(String::from_utf8_lossy(&out.stderr).contains("notes.jpg"));
}
