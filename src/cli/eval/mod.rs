//! `lens eval DIR`: accuracy of a model on a labelled ImageFolder tree, and
//! with `--compare` the difference between two models (or two `model.toml`
//! preprocessing variants of one ONNX file) on the same photos.
//!
//! - [`tree`]: reading the tree and the `--labels-map`.
//! - [`pipeline`]: decoding on every core into the model session pool.
//! - [`tally`]: top-1, top-5, top-K, per-class accuracy, confusions, disagreements.
//!
//! Unreadable files are counted and listed, never fatal.

pub mod pipeline;
pub mod tally;
pub mod tree;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::config::{EvalArgs, ModelArgs};
use crate::model::ModelDir;
use tally::{Disagreement, Outcome, Summary, disagreements, summarize};
use tree::Sample;

/// How many confused pairs and disagreements the text report lists.
const LISTED: usize = 10;

/// The `--json` object: the `--model` summary, plus the comparison if asked.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    compare: Option<Comparison>,
}

#[derive(Serialize)]
struct Comparison {
    #[serde(flatten)]
    summary: Summary,
    /// `--compare` minus `--model`.
    top1_difference: f64,
    top5_difference: f64,
    disagreements: Vec<Disagreement>,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let model = ModelDir::load(&args.model.model).context("loading the model directory")?;
    let map = match &args.labels_map {
        Some(path) => tree::load_labels_map(path)?,
        None => BTreeMap::new(),
    };
    let samples = tree::scan(&args.dir, &model.labels, &map)?;
    if samples.is_empty() {
        bail!("no files under the class folders of {}", args.dir.display());
    }
    let (summary, outcomes) = evaluate(&model, &args.model, &samples, args)?;
    // `--compare-precision` alone compares this model in another precision.
    let other = args.compare.clone().or_else(|| args.compare_precision.map(|_| args.model.model.clone()));
    let compare = match &other {
        Some(dir) => Some(compare(dir, &samples, &summary, &outcomes, args)?),
        None => None,
    };
    let report = Report { summary, compare };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        print_report(&mut out, &report, &args.dir)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn evaluate(
    model: &ModelDir,
    model_args: &ModelArgs,
    samples: &[Sample],
    args: &EvalArgs,
) -> anyhow::Result<(Summary, Vec<Outcome>)> {
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let bar = crate::cli::progress::bar(paths.len(), args.json);
    bar.set_message(model.spec.name.clone());
    let started = Instant::now();
    let outcomes = pipeline::classify_all(model, model_args, &paths, args.top_k.max(5), &bar)?;
    bar.finish_and_clear();
    let summary = summarize(&model.spec.name, samples, &outcomes, args.top_k, started.elapsed().as_secs_f64());
    Ok((summary, outcomes))
}

fn compare(
    dir: &Path,
    samples: &[Sample],
    first: &Summary,
    first_outcomes: &[Outcome],
    args: &EvalArgs,
) -> anyhow::Result<Comparison> {
    let other = ModelDir::load(dir).with_context(|| format!("loading the --compare model {}", dir.display()))?;
    if let Some(missing) = samples.iter().find(|s| !other.labels.contains(&s.truth)) {
        bail!("the --compare model has no label {:?}", missing.truth);
    }
    let precision = args.compare_precision.or(args.model.precision);
    let other_args = ModelArgs { model: dir.to_owned(), precision, ..args.model.clone() };
    let (summary, outcomes) = evaluate(&other, &other_args, samples, args)?;
    Ok(Comparison {
        top1_difference: summary.top1 - first.top1,
        top5_difference: summary.top5 - first.top5,
        disagreements: disagreements(samples, first_outcomes, &outcomes),
        summary,
    })
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn print_report(out: &mut impl Write, report: &Report, dir: &Path) -> std::io::Result<()> {
    print_summary(out, &report.summary, dir)?;
    let Some(c) = &report.compare else { return Ok(()) };
    writeln!(out)?;
    print_summary(out, &c.summary, dir)?;
    writeln!(out)?;
    let (a, b) = (&report.summary.model, &c.summary.model);
    writeln!(
        out,
        "{b} vs {a}: top-1 {:+.1} points, top-5 {:+.1} points",
        c.top1_difference * 100.0,
        c.top5_difference * 100.0
    )?;
    writeln!(out, "they disagree on {} of {} images:", c.disagreements.len(), report.summary.images)?;
    for d in c.disagreements.iter().take(LISTED) {
        writeln!(out, "  {}  (truth {}): {a} says {}, {b} says {}", d.file.display(), d.truth, d.model, d.compare)?;
    }
    if c.disagreements.len() > LISTED {
        writeln!(out, "  ... and {} more (--json lists all)", c.disagreements.len() - LISTED)?;
    }
    Ok(())
}

fn print_summary(out: &mut impl Write, s: &Summary, dir: &Path) -> std::io::Result<()> {
    writeln!(
        out,
        "{} on {}: {} images, {} unreadable, {:.1} s ({:.1} images/s)",
        s.model,
        dir.display(),
        s.images,
        s.unreadable.len(),
        s.seconds,
        s.images_per_second
    )?;
    writeln!(out, "  top-1 {}", percent(s.top1))?;
    writeln!(out, "  top-5 {}", percent(s.top5))?;
    if s.k != 5 && s.k != 1 {
        writeln!(out, "  top-{} {}", s.k, percent(s.topk))?;
    }
    writeln!(out, "per class (top-1):")?;
    for (label, c) in &s.per_class {
        writeln!(out, "  {:>6}  {}/{}  {label}", percent(c.top1), c.correct, c.images)?;
    }
    if !s.confusions.is_empty() {
        writeln!(out, "most confused (truth -> predicted):")?;
        for c in s.confusions.iter().take(LISTED) {
            writeln!(out, "  {:>4}  {} -> {}", c.count, c.truth, c.predicted)?;
        }
    }
    if !s.unreadable.is_empty() {
        writeln!(out, "unreadable:")?;
        for u in &s.unreadable {
            writeln!(out, "  {}: {}", u.file.display(), u.error)?;
        }
    }
    Ok(())
}
