//! Reading an ImageFolder tree (`DIR/<class>/**/<image>`) and the optional
//! `--labels-map` that renames its folders to the model's labels.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// One photo and the label it truly shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    pub truth: String,
}

/// Reads a `folder,label` CSV (no header; `#` starts a comment line).
pub fn load_labels_map(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("reading the labels map {}", path.display()))?;
    let mut map = BTreeMap::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: line {}", path.display(), line + 1))?;
        match (record.get(0), record.get(1), record.len()) {
            (Some(folder), Some(label), 2) if !folder.is_empty() && !label.is_empty() => {
                map.insert(folder.to_owned(), label.to_owned());
            }
            _ => bail!("{}: line {}: expected `folder,label`", path.display(), line + 1),
        }
    }
    Ok(map)
}

/// Every file under each class folder of `dir` (sorted, hidden entries and
/// files directly in `dir` skipped), with its folder mapped to a label.
/// A folder that names no label of `labels` is an error that lists them all.
pub fn scan(dir: &Path, labels: &[String], map: &BTreeMap<String, String>) -> anyhow::Result<Vec<Sample>> {
    let known: HashSet<&str> = labels.iter().map(String::as_str).collect();
    let mut samples = Vec::new();
    let mut unknown = Vec::new();
    for folder in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let truth = map.get(&name).cloned().unwrap_or(name);
        if !known.contains(truth.as_str()) {
            unknown.push(truth);
            continue;
        }
        let mut files = Vec::new();
        collect_files(&folder, &mut files)?;
        samples.extend(files.into_iter().map(|path| Sample { path, truth: truth.clone() }));
    }
    if !unknown.is_empty() {
        bail!(
            "these class folders of {} are not labels of the model: {}; name them as the labels or map them with --labels-map",
            dir.display(),
            unknown.join(", ")
        );
    }
    Ok(samples)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The entries of `dir` not starting with `.`, sorted by name.
fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_map_to_labels_and_unknown_folders_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (folder, file) in [("cat", "a.jpg"), ("kitty", "b.jpg"), ("cat", ".hidden"), ("cat/sub", "c.png")] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
            std::fs::write(dir.path().join(folder).join(file), b"x").unwrap();
        }
        std::fs::write(dir.path().join("top.jpg"), b"x").unwrap();
        let labels = vec!["cat".to_owned(), "tiger_cat".to_owned()];
        let map = BTreeMap::from([("kitty".to_owned(), "tiger_cat".to_owned())]);
        let samples = scan(dir.path(), &labels, &map).unwrap();
        let got: Vec<(String, &str)> = samples
            .iter()
            .map(|s| (s.path.strip_prefix(dir.path()).unwrap().display().to_string(), s.truth.as_str()))
            .collect();
        assert_eq!(
            got,
            [("cat/a.jpg".into(), "cat"), ("cat/sub/c.png".into(), "cat"), ("kitty/b.jpg".into(), "tiger_cat")]
        );
        let err = scan(dir.path(), &labels, &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("kitty") && err.contains("--labels-map"), "{err}");
    }

    #[test]
    fn the_labels_map_is_a_two_column_csv_with_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.csv");
        std::fs::write(&path, "# folder,label\nkitty, tiger_cat\n\"a,b\",cup\n").unwrap();
        let map = load_labels_map(&path).unwrap();
        assert_eq!(map["kitty"], "tiger_cat");
        assert_eq!(map["a,b"], "cup");
        std::fs::write(&path, "kitty\n").unwrap();
        assert!(load_labels_map(&path).is_err());
    }
}
