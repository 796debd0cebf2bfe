//! `lens eval` on labelled trees of the real test photos with the real model,
//! and the feedback exports it reads: an ImageFolder export of the local
//! store evaluated end to end, and exports from a real `redis-server`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::processes::RedisServer;
use lens::feedback::{Decision, FeedbackRecord, FeedbackStore, sha256_hex};
use serde_json::{Value, json};

fn model_dir() -> PathBuf {
    common::root().join("models/efficientnet-lite0")
}

/// Runs `lens ARGS` (stdout piped, so never a progress bar); returns stdout, panics on failure.
fn lens(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lens")).args(args).current_dir(common::root()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lens {args:?} failed: {stderr}");
    // No bar characters, no carriage-return redraws when piped.
    assert!(!stderr.contains('\r') && !stderr.contains('█'), "a progress bar was drawn: {stderr:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn eval_json(args: &[&str]) -> Value {
    let stdout = lens(&[&["eval", "--json"], args].concat());
    assert_eq!(stdout.lines().count(), 1, "--json prints one object: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

/// Copies `fixture` to `dir/class/name`.
fn place(dir: &Path, class: &str, fixture_name: &str, name: &str) {
    std::fs::create_dir_all(dir.join(class)).unwrap();
    std::fs::copy(common::fixture_path(fixture_name), dir.join(class).join(name)).unwrap();
}

/// The labelled tree: what the model predicts for each photo (see `lens
/// predict` on tests/fixtures) plus deliberate mislabels, an unreadable
/// JPEG, a text file, folders named through the labels map, and files that
/// are not part of any class.
fn labelled_tree(dir: &Path) {
    place(dir, "Eskimo_dog", "dog.jpeg", "dog.jpeg"); // top-1 hit
    place(dir, "Eskimo_dog", "generated/gray.jpg", "gray.jpg"); // top-1 hit
    std::fs::write(dir.join("Eskimo_dog/corrupt.jpg"), b"\xFF\xD8\xFF\xE0 this is not image data").unwrap();
    std::fs::write(dir.join("Eskimo_dog/notes.txt"), b"photographer: unknown").unwrap();
    // Predicted Eskimo_dog, Siberian_husky second: top-5 hits, top-1 misses.
    place(dir, "Siberian_husky", "generated/dog.pillow64.png", "dog64.png");
    place(dir, "Siberian_husky", "generated/cmyk_plain.jpg", "cmyk.jpg");
    place(dir, "espresso", "coffee.png", "coffee.png"); // top-1 hit
    place(dir, "kitty", "chelsea.png", "chelsea.png"); // kitty = tiger_cat: top-1 hit
    place(dir, "kitty", "coffee.png", "not-a-cat.png"); // mislabelled: espresso, a top-5 miss
    place(dir, "gown", "grace_hopper.jpg", "hopper.jpg"); // gown = academic_gown: top-1 hit
    std::fs::write(dir.join("README.txt"), b"not in a class folder").unwrap();
    std::fs::write(dir.join("Eskimo_dog/.DS_Store"), b"hidden").unwrap();
    std::fs::write(dir.join("labels.csv"), "# folder,label\nkitty,tiger_cat\ngown, academic_gown\n").unwrap();
}

#[test]
fn eval_counts_hits_misses_confusions_and_unreadable_files_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    labelled_tree(&tree);
    let map = tree.join("labels.csv");
    let v = eval_json(&[tree.to_str().unwrap(), "--labels-map", map.to_str().unwrap()]);

    assert_eq!(v["images"], 8, "{v}");
    assert_eq!(v["top1"], 5.0 / 8.0);
    assert_eq!(v["top5"], 7.0 / 8.0);
    assert_eq!(v["k"], 5);
    let per_class: BTreeMap<String, (u64, u64)> = v["per_class"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(label, c)| (label.clone(), (c["correct"].as_u64().unwrap(), c["images"].as_u64().unwrap())))
        .collect();
    let expected: BTreeMap<String, (u64, u64)> = [
        ("Eskimo_dog", (2, 2)),
        ("Siberian_husky", (0, 2)),
        ("academic_gown", (1, 1)),
        ("espresso", (1, 1)),
        ("tiger_cat", (1, 2)),
    ]
    .into_iter()
    .map(|(l, c)| (l.to_owned(), c))
    .collect();
    assert_eq!(per_class, expected);
    assert_eq!(
        v["confusions"],
        json!([
            {"truth": "Siberian_husky", "predicted": "Eskimo_dog", "count": 2},
            {"truth": "tiger_cat", "predicted": "espresso", "count": 1},
        ])
    );
    let unreadable: Vec<&str> =
        v["unreadable"].as_array().unwrap().iter().map(|u| u["file"].as_str().unwrap()).collect();
    assert_eq!(unreadable.len(), 2, "{v}");
    assert!(unreadable[0].ends_with("Eskimo_dog/corrupt.jpg") && unreadable[1].ends_with("Eskimo_dog/notes.txt"));
    assert!(v["unreadable"][1]["error"].as_str().unwrap().contains("not a supported image"));

    // --top-k 1 makes the second accuracy top-1.
    let v = eval_json(&[tree.to_str().unwrap(), "--labels-map", map.to_str().unwrap(), "--top-k", "1"]);
    assert_eq!((v["k"].as_u64(), v["topk"].as_f64()), (Some(1), Some(5.0 / 8.0)));

    // The text report says the same.
    let text = lens(&["eval", tree.to_str().unwrap(), "--labels-map", map.to_str().unwrap()]);
    assert!(text.contains("8 images, 2 unreadable"), "{text}");
    assert!(text.contains("top-1 62.5%") && text.contains("top-5 87.5%"), "{text}");
    assert!(text.contains("   2  Siberian_husky -> Eskimo_dog"), "{text}");
}

#[test]
fn eval_without_the_labels_map_names_the_unknown_folders() {
    let dir = tempfile::tempdir().unwrap();
    labelled_tree(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_lens")).arg("eval").arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `gown` happens to be an ImageNet label too; `kitty` is not.
    assert!(stderr.contains("not labels of the model: kitty;") && stderr.contains("--labels-map"), "{stderr}");
}

/// A model directory using the default ONNX file and labels with another preprocessing.
fn variant_model(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let original = std::fs::read_to_string(model_dir().join("model.toml")).unwrap();
    let onnx = model_dir().join("model.onnx");
    let labels = model_dir().join("labels.txt");
    let text = edit(original).replace(
        "labels = \"labels.txt\"",
        &format!("labels = {:?}\nonnx = {:?}", labels.display().to_string(), onnx.display().to_string()),
    );
    let variant = dir.join("variant");
    std::fs::create_dir_all(&variant).unwrap();
    std::fs::write(variant.join("model.toml"), text).unwrap();
    variant
}

/// Top-1 label of each file, by `lens predict --json`.
fn predictions(model: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    predictions_in(model, "fp32", files)
}

/// Top-1 label of each file, by `lens predict --json --precision P`.
fn predictions_in(model: &Path, precision: &str, files: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    let mut args = vec!["predict".to_owned(), "--json".into(), "--model".into(), model.display().to_string()];
    args.extend(["--precision".to_owned(), precision.to_owned()]);
    args.extend(files.iter().map(|f| f.display().to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_lens")).args(&args).current_dir(common::root()).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["prediction"].is_string())
        .map(|v| (PathBuf::from(v["file"].as_str().unwrap()), v["prediction"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn compare_lists_the_photos_two_preprocessing_variants_disagree_on() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    labelled_tree(&tree);
    let map = tree.join("labels.csv");
    // The classic silent failure: wrong normalisation, no error anywhere.
    let variant = variant_model(dir.path(), |t| {
        t.replace("mean = [127.0, 127.0, 127.0]", "mean = [0.0, 0.0, 0.0]")
            .replace("std = [128.0, 128.0, 128.0]", "std = [255.0, 255.0, 255.0]")
            .replace("resize = \"center-crop\"", "resize = \"squash\"")
    });
    let v = eval_json(&[
        tree.to_str().unwrap(),
        "--labels-map",
        map.to_str().unwrap(),
        "--compare",
        variant.to_str().unwrap(),
    ]);
    let c = &v["compare"];
    assert_eq!(v["top1"], 5.0 / 8.0, "the --model run is unchanged by --compare");
    assert_eq!((c["images"].as_u64(), c["unreadable"].as_array().unwrap().len()), (Some(8), 2));
    let diff = c["top1"].as_f64().unwrap() - v["top1"].as_f64().unwrap();
    assert!((c["top1_difference"].as_f64().unwrap() - diff).abs() < 1e-12, "{v}");

    // The disagreements are exactly the photos whose top-1 differs, by `lens predict`.
    let files: Vec<PathBuf> = walk(&tree).into_iter().filter(|p| !p.ends_with("labels.csv")).collect();
    let (a, b) = (predictions(&model_dir(), &files), predictions(&variant, &files));
    let expected: BTreeSet<(PathBuf, String, String)> = a
        .iter()
        .filter(|(file, label)| b.get(*file) != Some(label) && file.parent() != Some(&tree))
        .map(|(file, label)| (file.clone(), label.clone(), b[file].clone()))
        .collect();
    let got: BTreeSet<(PathBuf, String, String)> = c["disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let label = |k: &str| d[k].as_str().unwrap().to_owned();
            (PathBuf::from(label("file")), label("model"), label("compare"))
        })
        .collect();
    assert!(!got.is_empty(), "wrong mean/std and squash changed no answer: {v}");
    assert_eq!(got, expected);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(path);
        }
    }
    out
}

/// Reports on real photos: accepted, relabelled, rejected, and pending.
fn reviewed_store(data_dir: &Path) {
    let store = FeedbackStore::open(&data_dir.join("feedback")).unwrap();
    let report = |name: &str, predicted: &str, correct: &str| {
        let bytes = std::fs::read(common::fixture_path(name)).unwrap();
        let ext = name.rsplit('.').next().unwrap();
        FeedbackRecord {
            model: "efficientnet-lite0".into(),
            image_sha256: Some(sha256_hex(&bytes)),
            image_file: Some(store.images().put(&bytes, ext).unwrap()),
            predicted_label: Some(predicted.into()),
            correct_label: Some(correct.into()),
            ..Default::default()
        }
    };
    let ids: Vec<i64> = [
        report("dog.jpeg", "Siberian_husky", "Eskimo_dog"),
        report("coffee.png", "cup", "coffee_mug"),
        report("chelsea.png", "tiger_cat", "Egyptian_cat"),
        report("grace_hopper.jpg", "mortarboard", "academic_gown"),
    ]
    .iter()
    .map(|r| store.record(r).unwrap())
    .collect();
    store.decide(ids[0], &Decision::Accept).unwrap();
    store.decide(ids[1], &Decision::Relabel("espresso".into())).unwrap();
    store.decide(ids[2], &Decision::Reject).unwrap();
}

#[test]
fn an_imagefolder_export_is_ready_for_eval() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    reviewed_store(&data);
    let out = dir.path().join("export");
    let printed = lens(&[
        "feedback",
        "export",
        out.to_str().unwrap(),
        "--format",
        "imagefolder",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(printed.contains("exported 3 reports") && printed.contains("skipped 1"), "{printed}");
    let v = eval_json(&[out.to_str().unwrap()]);
    assert_eq!((v["images"].as_u64(), v["top1"].as_f64()), (Some(3), Some(1.0)), "{v}");
    let classes: Vec<&String> = v["per_class"].as_object().unwrap().keys().collect();
    assert_eq!(classes, ["Eskimo_dog", "academic_gown", "espresso"]);
    assert!(v["unreadable"].as_array().unwrap().is_empty());

    // Only what a reviewer approved.
    let approved = dir.path().join("approved");
    lens(&[
        "feedback",
        "export",
        approved.to_str().unwrap(),
        "--format",
        "imagefolder",
        "--status",
        "accepted,relabelled",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let v = eval_json(&[approved.to_str().unwrap()]);
    assert_eq!(v["images"], 2, "{v}");
    let dog = std::fs::read(common::fixture_path("dog.jpeg")).unwrap();
    assert!(approved.join("Eskimo_dog").join(format!("{}.jpeg", sha256_hex(&dog))).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_from_redis_in_every_format() {
    let redis = RedisServer::plain(false);
    let client = lens::redis::conn::Redis::Server(Box::new(redis::Client::open(redis.url()).unwrap()));
    let mirror = lens::redis::feedback::FeedbackMirror::new(&client).unwrap();
    let dog = std::fs::read(common::fixture_path("dog.jpeg")).unwrap();
    let dog_name = format!("{}.jpeg", sha256_hex(&dog));
    let with_image = FeedbackRecord {
        model: "efficientnet-lite0".into(),
        image_sha256: Some(sha256_hex(&dog)),
        image_file: Some(dog_name.clone()),
        predicted_label: Some("Siberian_husky".into()),
        correct_label: Some("Eskimo_dog".into()),
        ..Default::default()
    };
    let text_only = FeedbackRecord {
        model: "efficientnet-lite0".into(),
        predicted_label: Some("cup".into()),
        correct_label: Some("espresso".into()),
        filename: Some("a,\"quoted\"\nname.png".into()),
        ..Default::default()
    };
    mirror.push(1, &with_image, Some((dog_name.clone(), dog.clone()))).await;
    mirror.push(2, &text_only, None).await;

    let dir = tempfile::tempdir().unwrap();
    let export = |format: &str| {
        let out = dir.path().join(format);
        let printed = lens(&["feedback", "export", out.to_str().unwrap(), "--redis", &redis.url(), "--format", format]);
        (out, printed)
    };

    let (out, _) = export("jsonl");
    let lines: Vec<Value> = std::fs::read_to_string(out.join("feedback.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0]["id"].as_i64(), lines[0]["correct_label"].as_str()), (Some(1), Some("Eskimo_dog")));
    assert_eq!(
        (lines[0]["status"].as_str(), lines[0]["image_file"].as_str()),
        (Some("pending"), Some(dog_name.as_str()))
    );
    assert!(lines[0]["node"].as_str().unwrap().starts_with("api"), "{}", lines[0]);
    assert_eq!(lines[1]["filename"], "a,\"quoted\"\nname.png");
    assert!(lines[1]["image_file"].is_null());
    assert_eq!(std::fs::read(out.join("images").join(&dog_name)).unwrap(), dog);

    let (out, _) = export("csv");
    let mut rows = csv::Reader::from_path(out.join("feedback.csv")).unwrap();
    let header: Vec<String> = rows.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(&header[..3], ["node", "id", "created_at"]);
    let records: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 2);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(&records[1][col("filename")], "a,\"quoted\"\nname.png");
    assert_eq!(&records[0][col("status")], "pending");

    let (out, printed) = export("imagefolder");
    assert!(printed.contains("exported 1 reports") && printed.contains("skipped 1"), "{printed}");
    assert_eq!(std::fs::read(out.join("Eskimo_dog").join(&dog_name)).unwrap(), dog);
    let v = eval_json(&[out.to_str().unwrap()]);
    assert_eq!((v["images"].as_u64(), v["top1"].as_f64()), (Some(1), Some(1.0)), "{v}");
}

#[test]
fn compare_precision_puts_fp32_and_int8_of_one_model_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    labelled_tree(&tree);
    let map = tree.join("labels.csv");
    let v = eval_json(&[
        tree.to_str().unwrap(),
        "--labels-map",
        map.to_str().unwrap(),
        "--precision",
        "fp32",
        "--compare-precision",
        "int8",
    ]);
    let c = &v["compare"];
    assert_eq!(v["top1"], 5.0 / 8.0, "the fp32 run is unchanged by the comparison");
    assert_eq!(c["images"].as_u64(), Some(8), "{v}");
    // Its disagreements are exactly where `lens predict` in fp32 and int8 differ.
    let files: Vec<PathBuf> = walk(&tree).into_iter().filter(|p| !p.ends_with("labels.csv")).collect();
    let (a, b) = (predictions_in(&model_dir(), "fp32", &files), predictions_in(&model_dir(), "int8", &files));
    let expected: BTreeSet<PathBuf> =
        a.iter().filter(|(f, l)| b.get(*f) != Some(l) && f.parent() != Some(&tree)).map(|(f, _)| f.clone()).collect();
    let got: BTreeSet<PathBuf> =
        c["disagreements"].as_array().unwrap().iter().map(|d| PathBuf::from(d["file"].as_str().unwrap())).collect();
    assert_eq!(got, expected, "{v}");
}
