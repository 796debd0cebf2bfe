//! The feedback store on a real file system: concurrent image writes, surviving
//! a restart, review decisions, the three export formats, and input limits.

mod common;

use std::fs;
use std::sync::{Arc, Barrier};
use std::thread;

use lens::feedback::{
    Decision, ExportFormat, ExportSummary, FeedbackError, FeedbackRecord, FeedbackStore, ImageStore, ReviewStatus,
    sha256_hex,
};

fn record_with_image(store: &FeedbackStore, bytes: &[u8]) -> FeedbackRecord {
    let file = store.images().put(bytes, "jpg").unwrap();
    FeedbackRecord {
        model: "mobilenet-v3".into(),
        image_sha256: Some(sha256_hex(bytes)),
        image_file: Some(file),
        filename: Some("holiday photo.JPG".into()),
        predicted_label: Some("tabby cat".into()),
        score: Some(0.8125),
        correct_label: Some("lynx".into()),
        report: Some(r#"{"label":"tabby cat","score":0.8125}"#.into()),
    }
}

#[test]
fn concurrent_puts_of_the_same_bytes_leave_one_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let bytes: Arc<Vec<u8>> = Arc::new((0..256 * 1024).map(|i| (i * 31 % 251) as u8).collect());
    let start = Arc::new(Barrier::new(32));
    let names: Vec<String> = (0..32)
        .map(|_| {
            let (store, bytes, start) = (store.clone(), bytes.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                store.put(&bytes, "jpg").unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();

    let expected = format!("{}.jpg", sha256_hex(&bytes));
    assert!(names.iter().all(|name| *name == expected), "{names:?}");
    let entries: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(entries, std::slice::from_ref(&expected), "temp files left behind or duplicates");
    assert_eq!(fs::read(dir.path().join(&expected)).unwrap(), *bytes);
}

#[test]
fn a_record_survives_closing_and_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = FeedbackStore::open(dir.path()).unwrap();
    let record = record_with_image(&store, b"not really a jpeg");
    let id = store.record(&record).unwrap();
    drop(store);

    let store = FeedbackStore::open(dir.path()).unwrap();
    assert_eq!(store.count().unwrap(), 1);
    let rows = store.list().unwrap();
    assert_eq!(rows.len(), 1);
    let (got_id, created_at, got) = &rows[0];
    assert_eq!(*got_id, id);
    assert!(*created_at > 1.6e9, "created_at {created_at} is not unix seconds");
    assert_eq!(*got, record);
    assert!(store.images().path_of(record.image_file.as_deref().unwrap()).is_some());
}

#[test]
fn export_writes_csv_that_parses_back_and_copies_images() {
    let dir = tempfile::tempdir().unwrap();
    let store = FeedbackStore::open(&dir.path().join("store")).unwrap();
    let tricky = FeedbackRecord {
        filename: Some("a, \"quoted\"\nname.jpg".into()),
        correct_label: Some("line one\r\nline two".into()),
        report: Some(r#"{"labels":["a,b","c"],"note":"say ""hi"""}"#.into()),
        ..record_with_image(&store, b"first image")
    };
    let bare = FeedbackRecord { model: "resnet50".into(), ..Default::default() };
    let shared = record_with_image(&store, b"second image");
    let records = [tricky, bare, shared.clone(), shared];
    for r in &records {
        store.record(r).unwrap();
    }

    let out = dir.path().join("export");
    let summary = store.export(&out, ExportFormat::Csv, &[]).unwrap();
    assert_eq!(summary, ExportSummary { written: records.len(), skipped: 0 });

    let csv = fs::read_to_string(out.join("feedback.csv")).unwrap();
    let rows = common::csv_rows(&csv);
    assert_eq!(
        rows[0],
        [
            "id",
            "created_at",
            "model",
            "image_sha256",
            "image_file",
            "filename",
            "predicted_label",
            "score",
            "correct_label",
            "report",
            "status",
            "label",
            "decided_at"
        ]
    );
    assert_eq!(rows.len(), records.len() + 1);
    let stored = store.list().unwrap();
    for ((row, r), (id, created_at, _)) in rows[1..].iter().zip(&records).zip(&stored) {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let expected = [
            id.to_string(),
            created_at.to_string(),
            r.model.clone(),
            text(&r.image_sha256),
            text(&r.image_file),
            text(&r.filename),
            text(&r.predicted_label),
            r.score.map(|s| s.to_string()).unwrap_or_default(),
            text(&r.correct_label),
            text(&r.report),
            "pending".into(),
            String::new(),
            String::new(),
        ];
        assert_eq!(*row, expected);
        assert_eq!(row[7].parse::<f64>().ok(), r.score);
    }

    let mut copied: Vec<String> =
        fs::read_dir(out.join("images")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    copied.sort();
    let mut expected: Vec<String> = records.iter().filter_map(|r| r.image_file.clone()).collect();
    expected.sort();
    expected.dedup();
    assert_eq!(copied, expected);
    for name in &copied {
        let original = fs::read(store.images().path_of(name).unwrap()).unwrap();
        assert_eq!(fs::read(out.join("images").join(name)).unwrap(), original);
    }
}

/// Five reports: accepted, relabelled, rejected, pending, and one without an image.
fn reviewed_store(dir: &std::path::Path) -> FeedbackStore {
    let store = FeedbackStore::open(dir).unwrap();
    let labelled = |bytes: &[u8], label: &str| FeedbackRecord {
        correct_label: Some(label.into()),
        ..record_with_image(&store, bytes)
    };
    for r in [
        labelled(b"one", "lynx"),
        labelled(b"two", "lynx"),
        labelled(b"three", "tabby"),
        labelled(b"four", "../escape"),
        FeedbackRecord { model: "m".into(), correct_label: Some("lynx".into()), ..Default::default() },
    ] {
        store.record(&r).unwrap();
    }
    store.decide(1, &Decision::Accept).unwrap();
    store.decide(2, &Decision::Relabel("Egyptian_cat".into())).unwrap();
    store.decide(3, &Decision::Reject).unwrap();
    store
}

#[test]
fn imagefolder_export_uses_the_decided_label_and_skips_what_cannot_train() {
    let dir = tempfile::tempdir().unwrap();
    let store = reviewed_store(&dir.path().join("store"));
    let out = dir.path().join("folders");
    let summary = store.export(&out, ExportFormat::Imagefolder, &[]).unwrap();
    // Written: #1 (lynx), #2 (Egyptian_cat). Skipped: #3 rejected, #4 unsafe label, #5 no image.
    assert_eq!(summary, ExportSummary { written: 2, skipped: 3 });
    let mut tree: Vec<String> = Vec::new();
    for class in fs::read_dir(&out).unwrap().flatten() {
        for file in fs::read_dir(class.path()).unwrap().flatten() {
            tree.push(format!("{}/{}", class.file_name().to_string_lossy(), file.file_name().to_string_lossy()));
        }
    }
    tree.sort();
    assert_eq!(tree, [format!("Egyptian_cat/{}.jpg", sha256_hex(b"two")), format!("lynx/{}.jpg", sha256_hex(b"one"))]);
    assert_eq!(fs::read(out.join("lynx").join(format!("{}.jpg", sha256_hex(b"one")))).unwrap(), b"one");
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn jsonl_export_carries_decisions_and_filters_by_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = reviewed_store(&dir.path().join("store"));
    let out = dir.path().join("jsonl");
    let approved = [ReviewStatus::Accepted, ReviewStatus::Relabelled];
    assert_eq!(store.export(&out, ExportFormat::Jsonl, &approved).unwrap().written, 2);
    let lines: Vec<serde_json::Value> = fs::read_to_string(out.join("feedback.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0]["id"].as_i64(), lines[0]["status"].as_str()), (Some(1), Some("accepted")));
    assert_eq!(lines[0]["label"], "lynx");
    assert_eq!((lines[1]["status"].as_str(), lines[1]["label"].as_str()), (Some("relabelled"), Some("Egyptian_cat")));
    assert_eq!(lines[1]["correct_label"], "lynx");
    assert!(lines[1]["decided_at"].as_f64().unwrap() >= lines[1]["created_at"].as_f64().unwrap());
    let image = lines[1]["image_file"].as_str().unwrap();
    assert_eq!(fs::read(out.join("images").join(image)).unwrap(), b"two");

    let pending = dir.path().join("pending");
    assert_eq!(store.export(&pending, ExportFormat::Jsonl, &[ReviewStatus::Pending]).unwrap().written, 2);
    let text = fs::read_to_string(pending.join("feedback.jsonl")).unwrap();
    assert!(text.lines().all(|l| l.contains("\"status\":\"pending\"")), "{text}");
}

#[test]
fn over_long_or_malformed_fields_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = FeedbackStore::open(dir.path()).unwrap();
    let base = FeedbackRecord { model: "m".into(), ..Default::default() };
    let rejected = [
        FeedbackRecord { correct_label: Some("x".repeat(1025)), ..base.clone() },
        FeedbackRecord { report: Some("é".repeat(4097)), ..base.clone() },
        FeedbackRecord { image_sha256: Some("ABC".into()), ..base.clone() },
        FeedbackRecord { image_file: Some("../feedback.sqlite3".into()), ..base.clone() },
        FeedbackRecord { score: Some(f64::NAN), ..base.clone() },
    ];
    for r in &rejected {
        let err = store.record(r).unwrap_err();
        assert!(matches!(err, FeedbackError::Invalid(_)), "{err:?}");
    }
    assert_eq!(store.count().unwrap(), 0);

    let at_limit = FeedbackRecord { correct_label: Some("x".repeat(1024)), report: Some("é".repeat(4096)), ..base };
    store.record(&at_limit).unwrap();
    assert_eq!(store.count().unwrap(), 1);
}
