//! [`ImageStore`]: image files stored content-addressed as `<sha256>.<ext>`,
//! written atomically (temp file in the same directory, fsync, rename), so a
//! reader sees either no file or the whole file, never a partial one.
//!
//! Each store keeps a [`DiskBudget`]: page uploads evict the least recently
//! used image past their cap; feedback images are refused past theirs (the
//! report is still stored, without the image). A full disk (ENOSPC, EDQUOT)
//! is [`FeedbackError::DiskFull`]: the temp file is removed, nothing is
//! visible, and the next write simply tries again.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::{FeedbackError, io_at};
use crate::disk::{DiskBudget, Reservation};
use crate::preprocess::IMAGE_EXTENSIONS;

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// True for exactly 64 lowercase hex digits.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
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
    pub(super) dir: PathBuf,
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

#[cfg(test)]
mod tests {
    use super::*;

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
