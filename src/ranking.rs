//! Turning class probabilities into the answers clients see.

use serde::Serialize;

/// One ranked class, as returned in `top_k` lists.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ClassScore {
    pub label: String,
    pub index: usize,
    /// Probability rounded to 4 decimals, as the original service did.
    pub score: f64,
}

/// The `k` best classes of `scores`, best first, labelled.
pub fn ranked(scores: &[f32], labels: &[String], k: usize) -> Vec<ClassScore> {
    top_k(scores, k.max(1))
        .into_iter()
        .map(|(index, p)| ClassScore {
            label: labels.get(index).cloned().unwrap_or_else(|| format!("class_{index}")),
            index,
            score: round4(p),
        })
        .collect()
}

/// Rounds to 4 decimals, the precision of the public `score` field.
pub fn round4(p: f32) -> f64 {
    (p as f64 * 10_000.0).round() / 10_000.0
}

/// The `k` best classes as `(index, probability)`, best first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    idx.truncate(k);
    idx.sort_by(|a, b| b.1.total_cmp(&a.1));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_best_first() {
        let t = top_k(&[0.1, 0.5, 0.05, 0.35], 3);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 0]);
        assert_eq!(top_k(&[0.2], 5).len(), 1);
    }

    #[test]
    fn ranks_and_rounds() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let r = ranked(&[0.123_456, 0.876_544], &labels, 5);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], ClassScore { label: "b".into(), index: 1, score: 0.8765 });
        assert_eq!(r[1].score, 0.1235);
    }

    #[test]
    fn labels_missing_from_the_file_get_a_placeholder() {
        let r = ranked(&[0.1, 0.9], &["only".to_string()], 1);
        assert_eq!(r[0].label, "class_1");
    }
}
