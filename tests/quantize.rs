//! `lens quantize` on real photos with the real model: it writes an int8
//! variant that loads and serves, and it refuses, with a clear message, a
//! non-zero exit and nothing written, an empty folder, a folder of
//! non-images, photos it cannot read, and a variant under --min-agreement.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::processes::LensProcess;
use common::{fixture, variant};

/// A copy of the default model's fp32 files (no int8 variant) in `dir`.
fn model_copy(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let source = common::root().join("models/efficientnet-lite0");
    for f in ["model.onnx", "model.toml", "labels.txt"] {
        std::fs::copy(source.join(f), model.join(f)).unwrap();
    }
    model
}

/// Twelve photos: the fixtures and byte-distinct copies of them.
fn photos(dir: &Path) -> PathBuf {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let names = ["dog.jpeg", "grace_hopper.jpg", "coffee.png", "chelsea.png", "generated/large_3000x2000.jpg"];
    for i in 0..12 {
        let name = names[i % names.len()];
        let ext = name.rsplit('.').next().unwrap();
        std::fs::write(photos.join(format!("photo{i:02}.{ext}")), variant(&fixture(name), i)).unwrap();
    }
    photos
}

fn quantize(model: &Path, photos: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lens"));
    cmd.arg("quantize").arg(model).arg("--calibration").arg(photos).args(["--bench", "none"]).args(extra);
    cmd.output().unwrap()
}

/// The model directory's files: nothing half-written may be left.
fn files(model: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(model).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_folder_makes_a_variant_that_loads_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, photos) = (model_copy(tmp.path()), photos(tmp.path()));
    // Four held-out photos cannot show 97%; the gate itself is tested below.
    let out = quantize(&model, &photos, &["--min-agreement", "0.5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("9 calibration photos; 3 held-out photos"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("agrees with fp32"), "{stdout}");
    assert_eq!(files(&model), ["labels.txt", "model.int8.json", "model.int8.onnx", "model.onnx", "model.toml"]);

    let data = tmp.path().join("data");
    let args = ["serve", "--addr", "127.0.0.1:0", "--model", model.to_str().unwrap(), "--precision", "int8"];
    let lens = LensProcess::spawn(tmp.path(), "lens", &[&args[..], &["--data-dir", data.to_str().unwrap()]].concat());
    let url = lens.url();
    let status: serde_json::Value = reqwest::get(format!("{url}/api/status")).await.unwrap().json().await.unwrap();
    assert!(status.to_string().contains("\"int8\""), "{status}");
    let (code, body) = common::predict(&reqwest::Client::new(), &url, "dog.jpeg", fixture("dog.jpeg")).await;
    assert_eq!(code, 200);
    assert_eq!(body["prediction"], "Eskimo_dog");
}

#[test]
fn refusals_say_why_exit_non_zero_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, photos) = (model_copy(tmp.path()), photos(tmp.path()));
    let before = files(&model);
    let refused = |dir: &Path, extra: &[&str], why: &str| {
        let out = quantize(&model, dir, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{why}: {stderr}");
        assert!(stderr.contains(why), "expected {why:?} in: {stderr}");
        assert_eq!(files(&model), before, "nothing written for {why:?}");
    };

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    refused(&empty, &[], "no photos in");

    let text = tmp.path().join("text");
    std::fs::create_dir_all(&text).unwrap();
    for i in 0..10 {
        std::fs::write(text.join(format!("notes{i}.jpg")), format!("not a photo {i}")).unwrap();
    }
    refused(&text, &[], "no photos in");

    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for i in 0..10 {
        let mut bytes = fixture("dog.jpeg")[..600].to_vec();
        bytes.extend(format!("cut short {i}").bytes());
        std::fs::write(broken.join(format!("cut{i}.jpg")), bytes).unwrap();
    }
    refused(&broken, &[], "could not be read");

    refused(&photos, &["--min-agreement", "1.01"], "below --min-agreement");
}
