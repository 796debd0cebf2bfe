//! Durable user feedback ("report incorrect answer"), the images it refers
//! to, the reviewer's decisions and the exports built from them.
//!
//! - [`images`]: [`ImageStore`], image files stored content-addressed as
//!   `<sha256>.<ext>`. The Flask service this replaces saved uploads under
//!   their MD5 in a folder shared with the worker, so two uploads of the same
//!   image raced on one file and the worker could read it half-written; here
//!   every write is atomic (temp file in the same directory, fsync, rename).
//! - this module: [`FeedbackStore`], the reports themselves in SQLite
//!   (`feedback.sqlite3`) next to an `images/` [`ImageStore`].
//! - [`review`]: accept, relabel or reject a report (the `/review` page), each
//!   decision stored with its time in the `review` table.
//! - [`export`]: reports as CSV, JSON Lines or an ImageFolder tree ready for
//!   `lens eval` and training loaders, from this store or from Redis.
//!
//! Everything here is synchronous and blocking; the server calls it from
//! `spawn_blocking` and shares the store as `Arc<FeedbackStore>`.

pub mod export;
pub mod images;
pub mod review;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use crate::disk::{DiskBudget, is_disk_full};

pub use export::{ExportFormat, ExportSummary, Exporter, ImageSource};
use images::is_sha256_hex;
pub use images::{ImageStore, sha256_hex};
pub use review::{Decision, Report, Review, ReviewFilter, ReviewStatus};

/// Longest accepted text field of a [`FeedbackRecord`], in characters.
const MAX_FIELD_CHARS: usize = 1024;
/// Longest accepted [`FeedbackRecord::report`], in characters.
pub const MAX_REPORT_CHARS: usize = 4096;

/// Errors from the image and feedback stores.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no report #{0}")]
    NotFound(i64),
    #[error("feedback database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The caller's input was rejected; the message says which field and why.
    #[error("invalid feedback: {0}")]
    Invalid(String),
    /// The store is at its byte cap (see [`DiskBudget`]).
    #[error("the image store is at its cap of {cap} bytes")]
    CapReached { cap: u64 },
    /// The database holds its most reports (`--feedback-max-reports`).
    #[error("the feedback store holds its maximum of {0} reports")]
    Full(u64),
    /// The disk is full or over quota at `path`.
    #[error("no space left on the disk at {path}: {source}")]
    DiskFull { path: PathBuf, source: io::Error },
}

impl FeedbackError {
    /// True when the storage, not the input, is at fault: cap reached, disk
    /// full, or any I/O or database failure.
    pub fn is_storage(&self) -> bool {
        !matches!(self, FeedbackError::Invalid(_) | FeedbackError::NotFound(_))
    }

    /// True for a full disk, whether the file system or SQLite said so.
    pub fn is_disk_full(&self) -> bool {
        match self {
            FeedbackError::DiskFull { .. } => true,
            FeedbackError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => e.code == rusqlite::ErrorCode::DiskFull,
            _ => false,
        }
    }
}

/// Attaches the path to an `io::Error`; a full disk is [`FeedbackError::DiskFull`].
pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FeedbackError + '_ {
    move |source| {
        let path = path.to_path_buf();
        if is_disk_full(&source) {
            FeedbackError::DiskFull { path, source }
        } else {
            FeedbackError::Io { path, source }
        }
    }
}

/// One "report incorrect answer" submission.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct FeedbackRecord {
    pub model: String,
    /// 64 lowercase hex, validated.
    pub image_sha256: Option<String>,
    /// `<sha>.<ext>` in the feedback image store, if the image is kept.
    pub image_file: Option<String>,
    /// The client's original filename, stored as text only (never used as a path).
    pub filename: Option<String>,
    pub predicted_label: Option<String>,
    pub score: Option<f64>,
    pub correct_label: Option<String>,
    /// The raw `report` string the page's hidden input carried.
    pub report: Option<String>,
}

impl FeedbackRecord {
    /// Rejects over-long text, a malformed hash, a non-finite score, and an
    /// `image_file` that is not in `images` or does not match `image_sha256`.
    fn validate(&self, images: &ImageStore) -> Result<(), FeedbackError> {
        let texts = [
            ("model", Some(self.model.as_str()), MAX_FIELD_CHARS),
            ("image_sha256", self.image_sha256.as_deref(), MAX_FIELD_CHARS),
            ("image_file", self.image_file.as_deref(), MAX_FIELD_CHARS),
            ("filename", self.filename.as_deref(), MAX_FIELD_CHARS),
            ("predicted_label", self.predicted_label.as_deref(), MAX_FIELD_CHARS),
            ("correct_label", self.correct_label.as_deref(), MAX_FIELD_CHARS),
            ("report", self.report.as_deref(), MAX_REPORT_CHARS),
        ];
        for (field, value, max) in texts {
            if value.is_some_and(|v| v.chars().count() > max) {
                return Err(invalid(format!("{field} is longer than {max} characters")));
            }
        }
        if self.model.is_empty() {
            return Err(invalid("model is empty".into()));
        }
        if let Some(sha) = &self.image_sha256
            && !is_sha256_hex(sha)
        {
            return Err(invalid("image_sha256 is not 64 lowercase hex digits".into()));
        }
        if let Some(file) = &self.image_file {
            if images.path_of(file).is_none() {
                return Err(invalid(format!("image_file {file:?} is not in the image store")));
            }
            if let Some(sha) = &self.image_sha256
                && !file.starts_with(sha.as_str())
            {
                return Err(invalid("image_file does not match image_sha256".into()));
            }
        }
        if self.score.is_some_and(|s| !s.is_finite()) {
            return Err(invalid("score is not a finite number".into()));
        }
        Ok(())
    }
}

fn invalid(message: String) -> FeedbackError {
    FeedbackError::Invalid(message)
}

/// SQLite-backed feedback store in `dir`: `dir/feedback.sqlite3` + `dir/images/` (an [`ImageStore`]).
///
/// The connection sits behind a std `Mutex`, not tokio's: every call is short,
/// synchronous and already on a blocking thread, and feedback is low-volume,
/// so one connection serialising writers is simpler than a pool and loses
/// nothing.
pub struct FeedbackStore {
    conn: Mutex<Connection>,
    images: ImageStore,
    /// Reports refused past this many ([`FeedbackError::Full`]).
    max_reports: u64,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS feedback (
    id              INTEGER PRIMARY KEY,
    created_at      REAL NOT NULL,
    model           TEXT NOT NULL,
    image_sha256    TEXT,
    image_file      TEXT,
    filename        TEXT,
    predicted_label TEXT,
    score           REAL,
    correct_label   TEXT,
    report          TEXT
);
CREATE TABLE IF NOT EXISTS review (
    feedback_id INTEGER PRIMARY KEY REFERENCES feedback(id),
    status      TEXT NOT NULL CHECK (status IN ('accepted', 'relabelled', 'rejected')),
    label       TEXT,
    decided_at  REAL NOT NULL
)";

impl FeedbackStore {
    /// Opens (creating if needed) the store in `dir` and its schema.
    ///
    /// WAL lets an export (or another process, e.g. a CLI export while the
    /// server runs) read while the server writes. `synchronous=FULL` fsyncs the
    /// WAL on every commit, so a report acknowledged to the user survives a
    /// power cut, not only a process crash (NORMAL in WAL mode may lose the last
    /// commits on power loss). At feedback rates that fsync costs nothing.
    pub fn open(dir: &Path) -> Result<Self, FeedbackError> {
        Self::open_within(dir, DiskBudget::unbounded())
    }

    /// [`Self::open`], with the images kept within `budget`.
    pub fn open_within(dir: &Path, budget: DiskBudget) -> Result<Self, FeedbackError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let images = ImageStore::open_within(&dir.join("images"), budget)?;
        let conn = Connection::open(dir.join("feedback.sqlite3"))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(invalid(format!("database refused WAL mode (got {mode:?})")));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn: Mutex::new(conn), images, max_reports: u64::MAX })
    }

    /// Refuses reports once `max` are stored.
    pub fn with_max_reports(mut self, max: u64) -> Self {
        self.max_reports = max;
        self
    }

    /// The store for images kept with feedback (`dir/images/`).
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// A panic while holding the lock cannot leave SQLite half-written (each
    /// statement is atomic), so a poisoned lock is still safe to use.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Inserts; returns the row id. Over-long fields (text > 1024 chars,
    /// report > 4096) and malformed hashes or image names are [`FeedbackError::Invalid`].
    pub fn record(&self, r: &FeedbackRecord) -> Result<i64, FeedbackError> {
        r.validate(&self.images)?;
        let created_at = now_secs();
        let conn = self.conn();
        // Ids only grow, so the largest id bounds the count cheaply.
        let last: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM feedback", [], |row| row.get(0))?;
        if last.unsigned_abs() >= self.max_reports {
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM feedback", [], |row| row.get(0))?;
            if n.unsigned_abs() >= self.max_reports {
                return Err(FeedbackError::Full(self.max_reports));
            }
        }
        conn.execute(
            "INSERT INTO feedback (created_at, model, image_sha256, image_file, filename,
                                   predicted_label, score, correct_label, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                created_at,
                r.model,
                r.image_sha256,
                r.image_file,
                r.filename,
                r.predicted_label,
                r.score,
                r.correct_label,
                r.report
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Number of stored reports.
    pub fn count(&self) -> Result<u64, FeedbackError> {
        let n: i64 = self.conn().query_row("SELECT COUNT(*) FROM feedback", [], |row| row.get(0))?;
        // COUNT(*) is never negative.
        Ok(n.unsigned_abs())
    }

    /// Every report as `(id, created_at, record)`, oldest first (by id, which
    /// is insertion order even if the wall clock stepped back).
    pub fn list(&self) -> Result<Vec<(i64, f64, FeedbackRecord)>, FeedbackError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, created_at, model, image_sha256, image_file, filename,
                    predicted_label, score, correct_label, report
             FROM feedback ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, record_from_row(row)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The report of a row whose columns are `id, created_at`, then the
/// record's eight in the table's order (every query of this module).
fn record_from_row(row: &rusqlite::Row) -> rusqlite::Result<FeedbackRecord> {
    Ok(FeedbackRecord {
        model: row.get(2)?,
        image_sha256: row.get(3)?,
        image_file: row.get(4)?,
        filename: row.get(5)?,
        predicted_label: row.get(6)?,
        score: row.get(7)?,
        correct_label: row.get(8)?,
        report: row.get(9)?,
    })
}

/// Seconds since the Unix epoch, as stored in `created_at` and `decided_at`.
fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
