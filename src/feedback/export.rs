//! Reports out of Lens, in the three shapes `lens feedback export` writes:
//!
//! - `csv` (the default): `DIR/feedback.csv` (RFC 4180, written by the `csv`
//!   crate) and the images in `DIR/images/`.
//! - `jsonl`: `DIR/feedback.jsonl`, one object per report, and `DIR/images/`.
//! - `imagefolder`: `DIR/<label>/<sha256>.<ext>`, one folder per class, ready
//!   for `lens eval` and for common training loaders. The label is the
//!   reviewer's (accepted or relabelled), else the reporter's correct label;
//!   rejected reports, reports without an image or a label, and labels that
//!   are not a plain folder name are skipped and counted.
//!
//! [`Exporter`] is fed one report at a time, so the local store and the Redis
//! stream share it.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::review::{Report, ReviewFilter, ReviewStatus};
use super::{FeedbackError, FeedbackStore, ImageStore, io_at};

/// The output shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    #[default]
    Csv,
    Jsonl,
    Imagefolder,
}

/// The columns of `feedback.csv` (a Redis export puts `node` first).
pub const CSV_COLUMNS: [&str; 13] = [
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
    "decided_at",
];

/// Where a report's image comes from.
pub enum ImageSource<'a> {
    /// A stored file named `<sha256>.<ext>`.
    File(&'a Path),
    /// Bytes (from Redis) and the name they were stored under.
    Bytes(&'a [u8], &'a str),
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub written: usize,
    /// Reports an `imagefolder` export left out (no image, no usable label, rejected).
    pub skipped: usize,
}

/// Writes reports to `out` in one [`ExportFormat`].
pub struct Exporter {
    format: ExportFormat,
    out: PathBuf,
    with_node: bool,
    csv: Option<csv::Writer<File>>,
    jsonl: Option<BufWriter<File>>,
    summary: ExportSummary,
}

impl Exporter {
    /// Creates `out` and the table file. `with_node` adds the `node` column
    /// (which API node took the report, for Redis exports).
    pub fn create(out: &Path, format: ExportFormat, with_node: bool) -> Result<Self, FeedbackError> {
        fs::create_dir_all(out).map_err(io_at(out))?;
        let create = |name: &str| {
            let path = out.join(name);
            File::create(&path).map_err(io_at(&path))
        };
        let (mut csv, mut jsonl) = (None, None);
        match format {
            ExportFormat::Csv => {
                let mut w = csv::Writer::from_writer(create("feedback.csv")?);
                let node = with_node.then_some("node");
                w.write_record(node.into_iter().chain(CSV_COLUMNS)).map_err(csv_error(out))?;
                csv = Some(w);
            }
            ExportFormat::Jsonl => jsonl = Some(BufWriter::new(create("feedback.jsonl")?)),
            ExportFormat::Imagefolder => {}
        }
        Ok(Exporter { format, out: out.to_owned(), with_node, csv, jsonl, summary: ExportSummary::default() })
    }

    /// Adds one report; `node` is the API node that took it (Redis only).
    pub fn add(
        &mut self,
        node: Option<&str>,
        report: &Report,
        image: Option<ImageSource>,
    ) -> Result<(), FeedbackError> {
        if self.format == ExportFormat::Imagefolder {
            return self.add_to_folder(report, image);
        }
        let image_file = match image {
            Some(image) => Some(copy_image(&ImageStore::open(&self.out.join("images"))?, image)?),
            None => None,
        };
        let node = if self.with_node { Some(node.unwrap_or_default()) } else { None };
        if let Some(w) = &mut self.csv {
            let row = csv_row(report, image_file.as_deref());
            w.write_record(node.into_iter().map(str::to_owned).chain(row)).map_err(csv_error(&self.out))?;
        }
        if let Some(w) = &mut self.jsonl {
            let mut object = json_row(report, image_file.as_deref());
            if let Some(node) = node {
                object.insert("node".into(), node.into());
            }
            let path = self.out.join("feedback.jsonl");
            writeln!(w, "{}", serde_json::Value::Object(object)).map_err(io_at(&path))?;
        }
        self.summary.written += 1;
        Ok(())
    }

    fn add_to_folder(&mut self, report: &Report, image: Option<ImageSource>) -> Result<(), FeedbackError> {
        match (report.label().filter(|l| is_folder_name(l)), image) {
            (Some(label), Some(image)) => {
                copy_image(&ImageStore::open(&self.out.join(label))?, image)?;
                self.summary.written += 1;
            }
            _ => self.summary.skipped += 1,
        }
        Ok(())
    }

    /// Flushes the table file.
    pub fn finish(mut self) -> Result<ExportSummary, FeedbackError> {
        if let Some(w) = &mut self.csv {
            w.flush().map_err(io_at(&self.out.join("feedback.csv")))?;
        }
        if let Some(w) = &mut self.jsonl {
            w.flush().map_err(io_at(&self.out.join("feedback.jsonl")))?;
        }
        Ok(self.summary)
    }
}

fn csv_error(out: &Path) -> impl FnOnce(csv::Error) -> FeedbackError + '_ {
    move |e| FeedbackError::Io { path: out.join("feedback.csv"), source: e.into() }
}

/// Puts the image into `store` (atomically, content-addressed); returns its name.
fn copy_image(store: &ImageStore, image: ImageSource) -> Result<String, FeedbackError> {
    match image {
        ImageSource::Bytes(bytes, name) => store.put(bytes, name.rsplit('.').next().unwrap_or("jpg")),
        ImageSource::File(path) => {
            let bytes = fs::read(path).map_err(io_at(path))?;
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("jpg");
            store.put(&bytes, ext)
        }
    }
}

/// A label usable as one folder name on any common file system: no path
/// separators, not `.`/`..` or hidden, no control characters, not too long.
pub fn is_folder_name(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 255
        && !label.starts_with('.')
        && !label.chars().any(|c| c.is_control() || matches!(c, '/' | '\\' | ':'))
}

/// A text cell as a spreadsheet may open it safely: one that starts with
/// `=`, `+`, `-`, `@`, a tab or a carriage return would be read as a
/// formula, so it gets a leading `'` (OWASP's advice for CSV injection).
pub fn safe_cell(text: String) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text }
}

/// The fields of one report in [`CSV_COLUMNS`] order; absent values are
/// empty, and every text a client wrote is a [`safe_cell`].
pub fn csv_row(report: &Report, image_file: Option<&str>) -> Vec<String> {
    let r = &report.record;
    let text = |v: &Option<String>| safe_cell(v.clone().unwrap_or_default());
    let review = report.review.as_ref();
    vec![
        report.id.to_string(),
        report.created_at.to_string(),
        safe_cell(r.model.clone()),
        text(&r.image_sha256),
        image_file.unwrap_or_default().to_owned(),
        text(&r.filename),
        text(&r.predicted_label),
        r.score.map(|s| s.to_string()).unwrap_or_default(),
        text(&r.correct_label),
        text(&r.report),
        report.status().as_str().to_owned(),
        safe_cell(review.and_then(|v| v.label.clone()).unwrap_or_default()),
        review.map(|v| v.decided_at.to_string()).unwrap_or_default(),
    ]
}

/// One report as a JSON object with the [`CSV_COLUMNS`] keys; absent values are null.
pub fn json_row(report: &Report, image_file: Option<&str>) -> serde_json::Map<String, serde_json::Value> {
    let r = &report.record;
    let review = report.review.as_ref();
    let value = serde_json::json!({
        "id": report.id,
        "created_at": report.created_at,
        "model": r.model,
        "image_sha256": r.image_sha256,
        "image_file": image_file,
        "filename": r.filename,
        "predicted_label": r.predicted_label,
        "score": r.score,
        "correct_label": r.correct_label,
        "report": r.report,
        "status": report.status().as_str(),
        "label": review.and_then(|v| v.label.clone()),
        "decided_at": review.map(|v| v.decided_at),
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

impl FeedbackStore {
    /// Writes the reports with one of `statuses` (all if empty) to `out` in
    /// `format`, oldest first.
    pub fn export(
        &self,
        out: &Path,
        format: ExportFormat,
        statuses: &[ReviewStatus],
    ) -> Result<ExportSummary, FeedbackError> {
        let filter = ReviewFilter { statuses: statuses.to_vec(), ..Default::default() };
        let mut exporter = Exporter::create(out, format, false)?;
        for report in self.reports(&filter)? {
            // The image cap evicts the least recently used images, so an
            // old report may have lost its image: it is exported without.
            let image = match &report.record.image_file {
                Some(name) => {
                    let path = self.images.path_of(name).filter(|p| p.is_file());
                    if path.is_none() {
                        tracing::warn!(report = report.id, "the report's image was evicted; exported without it");
                    }
                    path
                }
                None => None,
            };
            exporter.add(None, &report, image.as_deref().map(ImageSource::File))?;
        }
        exporter.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::FeedbackRecord;

    #[test]
    fn folder_names_reject_paths_and_hidden_names() {
        assert!(is_folder_name("Eskimo_dog"));
        assert!(is_folder_name("tiger cat"));
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "c:", "a\nb", &"x".repeat(256)] {
            assert!(!is_folder_name(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let record = FeedbackRecord {
            model: "m".into(),
            filename: Some("a,\"b\"\nc.jpg".into()),
            score: Some(0.5),
            ..Default::default()
        };
        let report = Report { id: 7, created_at: 1.25, record, review: None };
        let mut exporter = Exporter::create(dir.path(), ExportFormat::Csv, false).unwrap();
        exporter.add(None, &report, None).unwrap();
        assert_eq!(exporter.finish().unwrap(), ExportSummary { written: 1, skipped: 0 });
        let text = fs::read_to_string(dir.path().join("feedback.csv")).unwrap();
        assert_eq!(text, format!("{}\n7,1.25,m,,,\"a,\"\"b\"\"\nc.jpg\",,0.5,,,pending,,\n", CSV_COLUMNS.join(",")));
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let record = FeedbackRecord {
            model: "m".into(),
            filename: Some("=HYPERLINK(\"http://x\")".into()),
            predicted_label: Some("@SUM(1+1)*cmd|' /C calc'!A0".into()),
            correct_label: Some("-2+3".into()),
            report: Some("\tnote".into()),
            score: Some(-0.5),
            ..Default::default()
        };
        let report = Report { id: 1, created_at: 2.0, record, review: None };
        let mut exporter = Exporter::create(dir.path(), ExportFormat::Csv, false).unwrap();
        exporter.add(None, &report, None).unwrap();
        exporter.finish().unwrap();
        let text = fs::read_to_string(dir.path().join("feedback.csv")).unwrap();
        let mut rows = csv::Reader::from_reader(text.as_bytes());
        let row = rows.records().next().unwrap().unwrap();
        let cell = |name: &str| row[CSV_COLUMNS.iter().position(|c| *c == name).unwrap()].to_owned();
        assert_eq!(cell("filename"), "'=HYPERLINK(\"http://x\")");
        assert_eq!(cell("predicted_label"), "'@SUM(1+1)*cmd|' /C calc'!A0");
        assert_eq!(cell("correct_label"), "'-2+3");
        assert_eq!(cell("report"), "'\tnote");
        assert_eq!(cell("score"), "-0.5", "numbers are numbers");
        assert_eq!(safe_cell("plain".into()), "plain");
    }
}
