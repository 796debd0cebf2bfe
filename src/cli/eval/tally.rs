//! Scoring: accuracies, per-class accuracy, confusions and the comparison of
//! two runs over the same photos. Pure functions over the outcomes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::tree::Sample;

/// What the model made of one photo.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Labels, best first (at least as many as the widest top-K asked for).
    Ranked(Vec<String>),
    /// The file could not be read or decoded; the message says why.
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassStats {
    pub images: usize,
    pub correct: usize,
    pub top1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    pub truth: String,
    pub predicted: String,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unreadable {
    pub file: PathBuf,
    pub error: String,
}

/// The result of one model on one tree. Accuracies are over the readable images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub model: String,
    /// Readable images scored.
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    /// The `--top-k` K and the top-K accuracy.
    pub k: usize,
    pub topk: f64,
    pub per_class: BTreeMap<String, ClassStats>,
    /// Most frequent (truth, top-1 prediction) mistakes first.
    pub confusions: Vec<Confusion>,
    pub unreadable: Vec<Unreadable>,
    pub seconds: f64,
    /// All files (readable or not) per second.
    pub images_per_second: f64,
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// Scores `outcomes` (one per sample, in order) at top-1, top-5 and top-`k`.
pub fn summarize(model: &str, samples: &[Sample], outcomes: &[Outcome], k: usize, seconds: f64) -> Summary {
    let (mut images, mut hits1, mut hits5, mut hitsk) = (0, 0, 0, 0);
    let mut per_class: BTreeMap<String, ClassStats> = BTreeMap::new();
    let mut confused: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for (sample, outcome) in samples.iter().zip(outcomes) {
        let ranked = match outcome {
            Outcome::Ranked(ranked) => ranked,
            Outcome::Unreadable(error) => {
                unreadable.push(Unreadable { file: sample.path.clone(), error: error.clone() });
                continue;
            }
        };
        images += 1;
        let within = |n: usize| ranked.iter().take(n).any(|l| *l == sample.truth);
        let class = per_class.entry(sample.truth.clone()).or_insert(ClassStats { images: 0, correct: 0, top1: 0.0 });
        class.images += 1;
        if within(1) {
            hits1 += 1;
            class.correct += 1;
        } else if let Some(predicted) = ranked.first() {
            *confused.entry((sample.truth.clone(), predicted.clone())).or_default() += 1;
        }
        hits5 += usize::from(within(5));
        hitsk += usize::from(within(k));
    }
    for class in per_class.values_mut() {
        class.top1 = ratio(class.correct, class.images);
    }
    let mut confusions: Vec<Confusion> =
        confused.into_iter().map(|((truth, predicted), count)| Confusion { truth, predicted, count }).collect();
    // Stable: equal counts keep the (truth, predicted) order of the map.
    confusions.sort_by_key(|c| std::cmp::Reverse(c.count));
    Summary {
        model: model.to_owned(),
        images,
        top1: ratio(hits1, images),
        top5: ratio(hits5, images),
        k,
        topk: ratio(hitsk, images),
        per_class,
        confusions,
        unreadable,
        seconds,
        images_per_second: if seconds > 0.0 { samples.len() as f64 / seconds } else { 0.0 },
    }
}

/// A photo on which the two runs give different top-1 labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disagreement {
    pub file: PathBuf,
    pub truth: String,
    /// Top-1 of `--model`.
    pub model: String,
    /// Top-1 of `--compare`.
    pub compare: String,
}

/// The photos both runs read and labelled differently, in sample order.
pub fn disagreements(samples: &[Sample], a: &[Outcome], b: &[Outcome]) -> Vec<Disagreement> {
    samples
        .iter()
        .zip(a.iter().zip(b))
        .filter_map(|(sample, pair)| match pair {
            (Outcome::Ranked(x), Outcome::Ranked(y)) if x.first() != y.first() => Some(Disagreement {
                file: sample.path.clone(),
                truth: sample.truth.clone(),
                model: x.first().cloned().unwrap_or_default(),
                compare: y.first().cloned().unwrap_or_default(),
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, truth: &str) -> Sample {
        Sample { path: PathBuf::from(name), truth: truth.into() }
    }

    fn ranked(labels: &[&str]) -> Outcome {
        Outcome::Ranked(labels.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn counts_hits_misses_confusions_and_unreadable_files() {
        let samples =
            [sample("a", "cat"), sample("b", "cat"), sample("c", "dog"), sample("d", "dog"), sample("e", "dog")];
        let outcomes = [
            ranked(&["cat", "dog"]),
            ranked(&["dog", "fox", "owl", "cup", "mug", "cat"]),
            ranked(&["cat", "dog"]),
            ranked(&["cat", "fox"]),
            Outcome::Unreadable("broken".into()),
        ];
        let s = summarize("m", &samples, &outcomes, 2, 2.0);
        assert_eq!(s.images, 4);
        assert_eq!((s.top1, s.top5, s.topk), (0.25, 0.5, 0.5));
        assert_eq!(s.per_class["cat"], ClassStats { images: 2, correct: 1, top1: 0.5 });
        assert_eq!(s.per_class["dog"], ClassStats { images: 2, correct: 0, top1: 0.0 });
        assert_eq!(
            s.confusions,
            [
                Confusion { truth: "dog".into(), predicted: "cat".into(), count: 2 },
                Confusion { truth: "cat".into(), predicted: "dog".into(), count: 1 },
            ]
        );
        assert_eq!(s.unreadable, [Unreadable { file: "e".into(), error: "broken".into() }]);
        assert_eq!(s.images_per_second, 2.5);
    }

    #[test]
    fn disagreements_are_differing_top1_labels_of_readable_photos() {
        let samples = [sample("a", "cat"), sample("b", "cat"), sample("c", "cat")];
        let a = [ranked(&["cat", "dog"]), ranked(&["cat"]), Outcome::Unreadable("x".into())];
        let b = [ranked(&["cat"]), ranked(&["dog", "cat"]), Outcome::Unreadable("x".into())];
        let d = disagreements(&samples, &a, &b);
        assert_eq!(
            d,
            [Disagreement { file: "b".into(), truth: "cat".into(), model: "cat".into(), compare: "dog".into() }]
        );
    }
}
