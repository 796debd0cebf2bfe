//! Durable user feedback ("report incorrect answer") and the images it refers to.
//!
//! This module owns two things on disk:
//!
//! - [`ImageStore`]: image files stored content-addressed as `<sha256>.<ext>`.
//!   The Flask service this replaces saved uploads under their MD5 in a folder
//!   shared with the worker, so two uploads of the same image raced on one file
//!   and the worker could read it half-written. Here every write goes to a
//!   unique temp file in the *same* directory (so the rename cannot cross a
//!   file system), is fsynced, and is then atomically renamed into place: a
//!   reader sees either no file or the whole file, never a partial one.
//! - [`FeedbackStore`]: the reports themselves, in SQLite (`feedback.sqlite3`)
//!   next to an `images/` [`ImageStore`], plus [`FeedbackStore::export`], which
//!   writes a CSV and the referenced images for relabelling.
//!
//! Each store keeps a [`DiskBudget`]: page uploads evict the least recently
//! used image past their cap; feedback images are refused past theirs (the
//! report is still stored, without the image). A full disk (ENOSPC, EDQUOT)
//! is [`FeedbackError::DiskFull`]: the temp file is removed, nothing is
//! visible, and the next write simply tries again.
//!
//! Everything here is synchronous and blocking; the server calls it from
//! `spawn_blocking` and shares the store as `Arc<FeedbackStore>`.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

use crate::disk::{DiskBudget, Reservation, is_disk_full};
use crate::preprocess::IMAGE_EXTENSIONS;

/// Extensions an image may be stored under, lowercase.
/// Longest accepted text field of a [`FeedbackRecord`], in characters.
const MAX_FIELD_CHARS: usize = 1024;
/// Longest accepted [`FeedbackRecord::report`], in characters.
const MAX_REPORT_CHARS: usize = 4096;
/// CSV header written by [`FeedbackStore::export`]; the column order of [`csv_row`].
pub const CSV_HEADER: &str = "id,created_at,model,image_sha256,image_file,filename,\
                          predicted_label,score,correct_label,report";

/// Errors from the image and feedback stores.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("feedback database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The caller's input was rejected; the message says which field and why.
    #[error("invalid feedback: {0}")]
    Invalid(String),
    /// The store is at its byte cap (see [`DiskBudget`]).
    #[error("the image store is at its cap of {cap} bytes")]
    CapReached { cap: u64 },
    /// The disk is full or over quota at `path`.
    #[error("no space left on the disk at {path}: {source}")]
    DiskFull { path: PathBuf, source: io::Error },
}

impl FeedbackError {
    /// True when the storage, not the input, is at fault: cap reached, disk
    /// full, or any I/O or database failure.
    pub fn is_storage(&self) -> bool {
        !matches!(self, FeedbackError::Invalid(_))
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
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FeedbackError + '_ {
    move |source| {
        let path = path.to_path_buf();
        if is_disk_full(&source) {
            FeedbackError::DiskFull { path, source }
        } else {
            FeedbackError::Io { path, source }
        }
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// True for exactly 64 lowercase hex digits.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True for exactly `<64 lowercase hex>.<allowed ext>`: no separators, no `..`.
fn is_stored_name(name: &str) -> bool {
    match name.split_once('.') {
        Some((sha, ext)) => is_sha256_hex(sha) && IMAGE_EXTENSIONS.contains(&ext),
        None => false,
    }
}

/// Content-addressed, atomically written image files, within a [`DiskBudget`].
#[derive(Clone)]
pub struct ImageStore {
    dir: PathBuf,
    budget: Arc<DiskBudget>,
}

/// Makes temp names unique among threads of this process; the pid separates
/// processes and `create_new` catches leftovers of a crashed earlier process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ImageStore {
    /// Opens (creating if needed) the store in `dir`, without a cap.
    pub fn open(dir: &Path) -> Result<Self, FeedbackError> {
        Self::open_within(dir, DiskBudget::unbounded())
    }

    /// Opens (creating if needed) the store in `dir` within `budget`: counts
    /// the files already there, removes leftover temp files, and evicts (or,
    /// for a refusing budget, keeps) what exceeds a lowered cap.
    pub fn open_within(dir: &Path, budget: DiskBudget) -> Result<Self, FeedbackError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let store = Self { dir: dir.to_path_buf(), budget: Arc::new(budget) };
        for name in store.budget.scan(dir, is_stored_name).map_err(io_at(dir))? {
            store.remove(&name);
        }
        Ok(store)
    }

    /// The budget this store writes within.
    pub fn budget(&self) -> &DiskBudget {
        &self.budget
    }

    /// Deletes an evicted file; one already gone is fine.
    fn remove(&self, name: &str) {
        let path = self.dir.join(name);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not evict an image");
        }
    }

    /// Writes bytes to a unique temp file in `dir`, fsyncs, renames to `<sha256>.<ext>`; returns the file name.
    ///
    /// If the file already exists, only marks it as recently used (same
    /// content by construction). Past the cap, [`FeedbackError::CapReached`]
    /// or older files are evicted, as the budget says; a full disk is
    /// [`FeedbackError::DiskFull`] and leaves nothing behind. `ext` must be one of png|jpg|jpeg|gif|webp|bmp (any
    /// case); anything else is [`FeedbackError::Invalid`]. Safe under
    /// concurrent calls with the same bytes: each writer has its own temp file,
    /// and whichever rename lands last replaces identical bytes atomically.
    pub fn put(&self, bytes: &[u8], ext: &str) -> Result<String, FeedbackError> {
        let ext = ext.to_ascii_lowercase();
        if !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            return Err(FeedbackError::Invalid(format!(
                "image extension {ext:?} is not one of {}",
                IMAGE_EXTENSIONS.join("|")
            )));
        }
        let name = format!("{}.{ext}", sha256_hex(bytes));
        let target = self.dir.join(&name);
        if target.is_file() {
            self.budget.touch(&name);
            return Ok(name);
        }
        let reservation =
            self.budget.reserve(&name, bytes.len() as u64).map_err(|c| FeedbackError::CapReached { cap: c.cap })?;
        let fresh = match reservation {
            Reservation::Held => false,
            Reservation::New { evict } => {
                evict.iter().for_each(|old| self.remove(old));
                true
            }
        };
        let written = self.write_in_place(&name, &target, bytes);
        if let Err(e) = &written {
            if fresh {
                self.budget.release(&name);
            }
            self.budget.refused(if e.is_disk_full() { "disk_full" } else { "io" });
        }
        written.map(|()| name)
    }

    fn write_in_place(&self, name: &str, target: &Path, bytes: &[u8]) -> Result<(), FeedbackError> {
        let temp = self.write_temp(name, bytes)?;
        match temp.rename_to(target) {
            Ok(()) => {}
            // A platform that will not rename over an existing file: a
            // concurrent writer of the same bytes got there first.
            Err(_) if target.is_file() => {}
            Err(e) => return Err(io_at(target)(e)),
        }
        sync_dir(&self.dir)
    }

    /// Creates `.<name>.<pid>.<n>.tmp` exclusively, writes and fsyncs it.
    /// The leading dot and `.tmp` suffix mean [`Self::path_of`] never serves it.
    fn write_temp(&self, name: &str, bytes: &[u8]) -> Result<TempFile, FeedbackError> {
        let pid = std::process::id();
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!(".{name}.{pid}.{n}.tmp"));
            let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_at(&path)(e)),
            };
            let temp = TempFile { path };
            // `file` is closed on return, before the rename (Windows needs that).
            file.write_all(bytes).map_err(io_at(&temp.path))?;
            file.sync_all().map_err(io_at(&temp.path))?;
            return Ok(temp);
        }
    }

    /// Path of a stored file by name, only if `name` is exactly
    /// `<64 lowercase hex>.<allowed ext>` (no path traversal) and it exists.
    /// Marks it as recently used.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        if !is_stored_name(name) {
            return None;
        }
        let path = self.dir.join(name);
        let found = path.is_file();
        if found {
            self.budget.touch(name);
        }
        found.then_some(path)
    }

    /// Finds the stored file for a sha256 (any allowed ext).
    pub fn find(&self, sha256: &str) -> Option<String> {
        if !is_sha256_hex(sha256) {
            return None;
        }
        IMAGE_EXTENSIONS.iter().map(|ext| format!("{sha256}.{ext}")).find(|name| self.dir.join(name).is_file())
    }
}

/// A temp file that is removed on drop unless it was renamed into place, so
/// a failed write leaves nothing behind.
struct TempFile {
    /// Empty once renamed.
    path: PathBuf,
}

impl TempFile {
    fn rename_to(mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.path, target)?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Makes a rename in `dir` durable: on Unix the directory entry lives in the
/// directory's own data, which needs its own fsync.
fn sync_dir(dir: &Path) -> Result<(), FeedbackError> {
    #[cfg(unix)]
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
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
        Ok(Self { conn: Mutex::new(conn), images })
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
        let created_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let conn = self.conn();
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
        let rows = stmt.query_map([], |row| {
            let record = FeedbackRecord {
                model: row.get(2)?,
                image_sha256: row.get(3)?,
                image_file: row.get(4)?,
                filename: row.get(5)?,
                predicted_label: row.get(6)?,
                score: row.get(7)?,
                correct_label: row.get(8)?,
                report: row.get(9)?,
            };
            Ok((row.get(0)?, row.get(1)?, record))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes `out/feedback.csv` and copies every referenced image into
    /// `out/images/`; returns the number of rows. Ready for relabelling.
    ///
    /// The CSV is RFC 4180 (fields with commas, quotes or line breaks are
    /// quoted); an absent value is an empty field. Fields are written verbatim,
    /// so text a client typed (filename, report) may start with `=`: open the
    /// file as data, not as a spreadsheet formula source.
    pub fn export(&self, out: &Path) -> Result<usize, FeedbackError> {
        let rows = self.list()?;
        let out_images = out.join("images");
        fs::create_dir_all(&out_images).map_err(io_at(&out_images))?;
        let mut csv = String::from(CSV_HEADER);
        csv.push('\n');
        let mut copied = HashSet::new();
        for (id, created_at, record) in &rows {
            csv.push_str(&csv_row(*id, *created_at, record));
            csv.push('\n');
            let Some(name) = &record.image_file else { continue };
            if copied.insert(name.as_str()) {
                let from = self.images.path_of(name).ok_or_else(|| FeedbackError::Io {
                    path: self.images.dir.join(name),
                    source: io::Error::new(io::ErrorKind::NotFound, format!("image of row {id}")),
                })?;
                let to = out_images.join(name);
                fs::copy(&from, &to).map_err(io_at(&to))?;
            }
        }
        let path = out.join("feedback.csv");
        fs::write(&path, csv).map_err(io_at(&path))?;
        Ok(rows.len())
    }
}

/// One CSV line (without the line break) in [`CSV_HEADER`] order.
pub fn csv_row(id: i64, created_at: f64, r: &FeedbackRecord) -> String {
    let text = |v: &Option<String>| csv_field(v.as_deref().unwrap_or(""));
    [
        id.to_string(),
        created_at.to_string(),
        csv_field(&r.model),
        text(&r.image_sha256),
        text(&r.image_file),
        text(&r.filename),
        text(&r.predicted_label),
        r.score.map(|s| s.to_string()).unwrap_or_default(),
        text(&r.correct_label),
        text(&r.report),
    ]
    .join(",")
}

/// Quotes a CSV field if it holds a comma, quote or line break, doubling quotes.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_field_quotes_only_when_needed() {
        assert_eq!(csv_field("plain text"), "plain text");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\rhere"), "\"cr\rhere\"");
    }

    #[test]
    fn csv_row_leaves_absent_values_empty() {
        let r = FeedbackRecord { model: "m".into(), score: Some(0.5), ..Default::default() };
        assert_eq!(csv_row(7, 1.25, &r), "7,1.25,m,,,,,0.5,,");
        assert_eq!(CSV_HEADER.split(',').count(), 10);
    }

    #[test]
    fn stored_names_are_strictly_validated() {
        let sha = sha256_hex(b"x");
        assert!(is_stored_name(&format!("{sha}.jpg")));
        assert!(is_stored_name(&format!("{sha}.webp")));
        for bad in [
            "../etc/passwd".to_string(),
            "abc.jpg".to_string(),
            format!("{}.jpg", sha.to_uppercase()),
            format!("{sha}.exe"),
            format!("{sha}.JPG"),
            format!("{sha}.jpg.tmp"),
            format!("../{sha}.jpg"),
            sha.clone(),
            format!(".{sha}.jpg"),
        ] {
            assert!(!is_stored_name(&bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn path_of_rejects_traversal_even_if_the_target_exists() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&dir.path().join("images")).unwrap();
        fs::write(dir.path().join("secret.jpg"), b"s").unwrap();
        assert_eq!(store.path_of("../secret.jpg"), None);
        let name = store.put(b"img", "JPG").unwrap();
        assert!(name.ends_with(".jpg"));
        assert_eq!(store.path_of(&name), Some(dir.path().join("images").join(&name)));
        assert_eq!(store.find(&sha256_hex(b"img")), Some(name));
        assert!(matches!(store.put(b"img", "exe"), Err(FeedbackError::Invalid(_))));
    }

    #[test]
    fn sha256_of_known_inputs() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
