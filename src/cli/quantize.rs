//! `lens quantize`: writes a model directory's int8 variant from the user's
//! own photos, verified against fp32 before it can serve.
//!
//! The quantizer is `tools/quantize_int8.py` in the project's `.venv` (ONNX
//! Runtime's `quantize_static`; `tools/INT8.md` says why it and not NNCF).
//! This command finds the photos (files and folders, recognised by content,
//! so an upload store or a `lens feedback export` folder serves as is),
//! splits them into calibration photos and held-out photos (every fourth,
//! never calibrated on), runs the script, shows its progress as a bar on a
//! terminal, and exits non-zero with the script's reason when it refuses. The
//! script writes nothing half-done: its files are renamed into place only
//! once every check passed.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};

use super::predict::expand;
use super::progress;
use crate::config::QuantizeArgs;
use crate::preprocess::{Format, sniff_format};

/// Every this-many-th photo is held out to verify the variant.
const HELD_OUT_EVERY: usize = 4;
/// Fewest photos that give both a calibration set and a held-out set.
pub const MIN_PHOTOS: usize = 8;

/// A photo and its format, as its first bytes say.
#[derive(Debug, Clone, PartialEq)]
pub struct Photo {
    pub path: PathBuf,
    pub format: Format,
}

/// Photos split into calibration and held-out sets, in a stable order.
#[derive(Debug, PartialEq)]
pub struct Split {
    pub calibration: Vec<Photo>,
    pub held_out: Vec<Photo>,
}

/// Every fourth photo (in sorted order) is held out; of the rest, the first
/// `samples` calibrate.
pub fn split(photos: &[Photo], samples: usize) -> Split {
    let (mut calibration, mut held_out) = (Vec::new(), Vec::new());
    for (i, p) in photos.iter().enumerate() {
        if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 {
            held_out.push(p.clone());
        } else if calibration.len() < samples {
            calibration.push(p.clone());
        }
    }
    Split { calibration, held_out }
}

pub fn run(args: &QuantizeArgs) -> anyhow::Result<ExitCode> {
    let photos: Vec<Photo> = expand(&args.calibration)
        .into_iter()
        .filter_map(|path| Some(Photo { format: format_of(&path)?, path }))
        .collect();
    if photos.is_empty() {
        bail!(
            "no photos in {}: give files or folders of JPEG, PNG, GIF, WebP or BMP photos like the ones the model will see",
            shown(&args.calibration)
        );
    }
    if photos.len() < MIN_PHOTOS {
        bail!(
            "only {} photos in {}: at least {MIN_PHOTOS} are needed, some to calibrate on and every fourth to verify the result",
            photos.len(),
            shown(&args.calibration)
        );
    }
    let split = split(&photos, args.samples.max(1));
    let work = std::env::temp_dir().join(format!("lens-quantize-{}", std::process::id()));
    let result = quantize(args, &split, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn quantize(args: &QuantizeArgs, split: &Split, work: &Path) -> anyhow::Result<ExitCode> {
    let calibration = link_all(&split.calibration, &work.join("calibration"))?;
    let held_out = link_all(&split.held_out, &work.join("held-out"))?;
    let python = project_file(".venv/bin/python").context("the project's .venv is missing: run `make setup`")?;
    let script = project_file("tools/quantize_int8.py").context("tools/quantize_int8.py is missing")?;
    eprintln!(
        "quantizing {} with {} calibration photos; {} held-out photos verify it",
        args.model_dir.display(),
        split.calibration.len(),
        split.held_out.len()
    );
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(&args.model_dir)
        .arg("--calibration")
        .arg(&calibration)
        .arg("--heldout")
        .arg(&held_out)
        .args(["--samples", &split.calibration.len().to_string()])
        .args(["--min-agreement", &args.min_agreement.to_string()])
        .args(["--bench", args.bench.as_str()])
        // The script then writes its `what: i/n photos` lines for the bar.
        .env("LENS_PROGRESS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    let stderr = child.stderr.take().context("the quantizer's stderr")?;
    let progress = std::thread::spawn(move || show_progress(stderr));
    let mut report = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut report).context("reading the quantizer's report")?;
    }
    let status = child.wait().context("waiting for the quantizer")?;
    let _ = progress.join();
    match status.code() {
        Some(0) => {
            summarize(&report, &args.model_dir);
            Ok(ExitCode::SUCCESS)
        }
        // The script said why ("refused: ..."); nothing was written.
        Some(1) => Ok(ExitCode::from(1)),
        _ => bail!("the quantizer failed ({status}); nothing was written"),
    }
}

/// Shows the script's `what: i/n photos` lines as a bar on a terminal and
/// passes every other line through.
fn show_progress(stderr: impl Read) {
    let bar = progress::bar(0, false);
    let mut line = Vec::new();
    for byte in BufReader::new(stderr).bytes().map_while(Result::ok) {
        if byte != b'\r' && byte != b'\n' {
            line.push(byte);
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        line.clear();
        match parse_progress(&text) {
            Some((what, done, total)) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(what.to_owned());
            }
            None if !text.trim().is_empty() => {
                if bar.is_hidden() {
                    eprintln!("{text}");
                } else {
                    bar.println(&text);
                }
            }
            None => {}
        }
    }
    bar.finish_and_clear();
}

/// `"calibration: 12/300 photos"` as `("calibration", 12, 300)`.
pub fn parse_progress(line: &str) -> Option<(&str, u64, u64)> {
    let (what, rest) = line.rsplit_once(": ")?;
    let (done, total) = rest.strip_suffix(" photos")?.split_once('/')?;
    Some((what, done.parse().ok()?, total.parse().ok()?))
}

/// The report's headline figures, from the script's JSON on stdout.
fn summarize(report: &str, model_dir: &Path) {
    let parsed: serde_json::Value = serde_json::from_str(report).unwrap_or_default();
    println!("wrote {}", model_dir.join("model.int8.onnx").display());
    if let Some(engines) = parsed.pointer("/heldout/agreement").and_then(|a| a.as_object()) {
        for (engine, figures) in engines {
            let top1 = figures.get("top1_agreement").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            println!("{engine}: int8 top-1 agrees with fp32 on {:.2}% of the held-out photos", top1 * 100.0);
        }
    }
    if let Some(engines) = parsed.pointer("/speed").and_then(|a| a.as_object()) {
        for (engine, figures) in engines.iter().filter(|(_, f)| f.get("speedup").is_some()) {
            println!("{engine}: int8 runs {}x as fast as fp32 on this CPU (batch 8)", figures["speedup"]);
        }
    }
    println!("the full report is {}", model_dir.join("model.int8.json").display());
}

/// A file's image format by its first bytes, whatever its name.
fn format_of(path: &Path) -> Option<Format> {
    let mut head = [0u8; 32];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    sniff_format(&head[..n])
}

/// Links `photos` into `dir` under names the script reads (its extension by
/// content), numbered so that files of the same name do not collide.
fn link_all(photos: &[Photo], dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, Photo { path, format }) in photos.iter().enumerate() {
        let ext = match format.mime_type().trim_start_matches("image/") {
            "jpeg" => "jpg",
            other => other,
        };
        let target = std::fs::canonicalize(path).with_context(|| format!("reading {}", path.display()))?;
        let link = dir.join(format!("{i:06}.{ext}"));
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// A file of the project, looked for from the working directory, the
/// executable's folders (`target/release/lens` lives in the project), and
/// the source tree it was built from.
fn project_file(relative: &str) -> Option<PathBuf> {
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots.into_iter().map(|r| r.join(relative)).find(|p| p.is_file())
}

fn shown(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fourth_photo_is_held_out_and_never_calibrated_on() {
        let photo = |i: usize| Photo { path: PathBuf::from(format!("{i}.jpg")), format: Format::Jpeg };
        let photos: Vec<Photo> = (0..10).map(photo).collect();
        let s = split(&photos, 300);
        assert_eq!(s.held_out, vec![photo(3), photo(7)]);
        assert_eq!(s.calibration.len(), 8);
        assert!(s.calibration.iter().all(|p| !s.held_out.contains(p)));
        assert_eq!(split(&photos, 2).calibration, vec![photo(0), photo(1)]);
    }

    #[test]
    fn progress_lines_are_read_and_others_are_not() {
        assert_eq!(parse_progress("calibration: 12/300 photos"), Some(("calibration", 12, 300)));
        assert_eq!(parse_progress("held-out (fp32): 3/75 photos"), Some(("held-out (fp32)", 3, 75)));
        assert_eq!(parse_progress("refused: no photos"), None);
        assert_eq!(parse_progress("x: a/b photos"), None);
    }
}
