//! The reviewer's decisions on reports: accept the reporter's label, relabel,
//! or reject. One row per report in the `review` table (the latest decision
//! wins, with its time); a report without a row is pending.

use rusqlite::{OptionalExtension, params};

use super::{FeedbackError, FeedbackRecord, FeedbackStore, MAX_FIELD_CHARS, invalid, now_secs, record_from_row};

/// Where a report stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewStatus {
    /// Nobody has decided yet.
    Pending,
    /// The reporter's correct label was confirmed.
    Accepted,
    /// The reviewer gave another label.
    Relabelled,
    /// Not a useful report (spam, unclear photo, wrong correction).
    Rejected,
}

impl ReviewStatus {
    pub const ALL: [ReviewStatus; 4] =
        [ReviewStatus::Pending, ReviewStatus::Accepted, ReviewStatus::Relabelled, ReviewStatus::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Accepted => "accepted",
            ReviewStatus::Relabelled => "relabelled",
            ReviewStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A decision taken on a report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Review {
    pub status: ReviewStatus,
    /// The label the report now stands for (absent when rejected).
    pub label: Option<String>,
    /// Seconds since the Unix epoch.
    pub decided_at: f64,
}

/// What a reviewer asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Accept,
    Relabel(String),
    Reject,
}

/// One stored report with its decision, if any.
#[derive(Debug, Clone)]
pub struct Report {
    pub id: i64,
    pub created_at: f64,
    pub record: FeedbackRecord,
    pub review: Option<Review>,
}

impl Report {
    pub fn status(&self) -> ReviewStatus {
        self.review.as_ref().map_or(ReviewStatus::Pending, |r| r.status)
    }

    /// The label this report stands for: the reviewer's, else the reporter's
    /// correct label; none once rejected.
    pub fn label(&self) -> Option<&str> {
        match &self.review {
            Some(r) if r.status == ReviewStatus::Rejected => None,
            Some(Review { label: Some(label), .. }) => Some(label),
            _ => self.record.correct_label.as_deref(),
        }
    }
}

/// Which reports to list.
#[derive(Debug, Clone, Default)]
pub struct ReviewFilter {
    /// Only reports whose predicted, reported or decided label is exactly this.
    pub label: Option<String>,
    /// Only these statuses; empty means all.
    pub statuses: Vec<ReviewStatus>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Newest first (the review page) instead of oldest first (exports).
    pub newest_first: bool,
}

const SELECT: &str = "SELECT f.id, f.created_at, f.model, f.image_sha256, f.image_file, f.filename,
        f.predicted_label, f.score, f.correct_label, f.report, r.status, r.label, r.decided_at
    FROM feedback f LEFT JOIN review r ON r.feedback_id = f.id";

fn report_from_row(row: &rusqlite::Row) -> rusqlite::Result<Report> {
    let record = record_from_row(row)?;
    let status: Option<String> = row.get(10)?;
    // The CHECK constraint admits only the three decided statuses.
    let review = status.and_then(|s| ReviewStatus::parse(&s)).map(|status| Review {
        status,
        label: row.get(11).ok().flatten(),
        decided_at: row.get(12).unwrap_or(0.0),
    });
    Ok(Report { id: row.get(0)?, created_at: row.get(1)?, record, review })
}

impl FeedbackStore {
    /// Reports matching `filter`, with their decisions.
    pub fn reports(&self, filter: &ReviewFilter) -> Result<Vec<Report>, FeedbackError> {
        let mut sql =
            format!("{SELECT} WHERE (?1 IS NULL OR f.predicted_label = ?1 OR f.correct_label = ?1 OR r.label = ?1)");
        if !filter.statuses.is_empty() {
            // Only the enum's own fixed names are spliced in, never caller text.
            let names: Vec<String> = filter.statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
            sql.push_str(&format!(" AND COALESCE(r.status, 'pending') IN ({})", names.join(",")));
        }
        sql.push_str(if filter.newest_first { " ORDER BY f.id DESC" } else { " ORDER BY f.id" });
        sql.push_str(" LIMIT ?2");
        let limit = filter.limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![filter.label, limit], report_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One report by id.
    pub fn report(&self, id: i64) -> Result<Option<Report>, FeedbackError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{SELECT} WHERE f.id = ?1"))?;
        Ok(stmt.query_row(params![id], report_from_row).optional()?)
    }

    /// Stores `decision` on report `id` with the current time, replacing an
    /// earlier one. Accepting needs a reporter's label; relabelling needs a
    /// non-empty label of at most 1024 characters.
    pub fn decide(&self, id: i64, decision: &Decision) -> Result<Review, FeedbackError> {
        let report = self.report(id)?.ok_or(FeedbackError::NotFound(id))?;
        let (status, label) = match decision {
            Decision::Accept => {
                let label = report.record.correct_label.filter(|l| !l.trim().is_empty()).ok_or_else(|| {
                    invalid(format!("report #{id} has no correct label to accept: relabel it instead"))
                })?;
                (ReviewStatus::Accepted, Some(label))
            }
            Decision::Relabel(label) => {
                let label = label.trim();
                if label.is_empty() || label.chars().count() > MAX_FIELD_CHARS {
                    return Err(invalid(format!("a new label must be 1 to {MAX_FIELD_CHARS} characters")));
                }
                (ReviewStatus::Relabelled, Some(label.to_owned()))
            }
            Decision::Reject => (ReviewStatus::Rejected, None),
        };
        let decided_at = now_secs();
        self.conn().execute(
            "INSERT OR REPLACE INTO review (feedback_id, status, label, decided_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, status.as_str(), label, decided_at],
        )?;
        Ok(Review { status, label, decided_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(labels: &[(&str, Option<&str>)]) -> (tempfile::TempDir, FeedbackStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FeedbackStore::open(dir.path()).unwrap();
        for (predicted, correct) in labels {
            let r = FeedbackRecord {
                model: "m".into(),
                predicted_label: Some((*predicted).into()),
                correct_label: correct.map(str::to_owned),
                ..Default::default()
            };
            store.record(&r).unwrap();
        }
        (dir, store)
    }

    #[test]
    fn decisions_are_stored_and_filtered_by_status_and_label() {
        let (_dir, store) =
            store_with(&[("cat", Some("dog")), ("cat", Some("fox")), ("owl", None), ("cup", Some("mug"))]);
        assert_eq!(store.decide(1, &Decision::Accept).unwrap().label.as_deref(), Some("dog"));
        let relabelled = store.decide(2, &Decision::Relabel(" wolf ".into())).unwrap();
        assert_eq!((relabelled.status, relabelled.label.as_deref()), (ReviewStatus::Relabelled, Some("wolf")));
        assert!(relabelled.decided_at > 1.0e9);
        assert!(matches!(store.decide(3, &Decision::Accept), Err(FeedbackError::Invalid(_))));
        assert!(matches!(store.decide(3, &Decision::Relabel("  ".into())), Err(FeedbackError::Invalid(_))));
        assert!(matches!(store.decide(99, &Decision::Reject), Err(FeedbackError::NotFound(99))));
        store.decide(4, &Decision::Reject).unwrap();

        let ids = |f: ReviewFilter| store.reports(&f).unwrap().iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(ReviewFilter { newest_first: true, ..Default::default() }), [4, 3, 2, 1]);
        assert_eq!(ids(ReviewFilter { statuses: vec![ReviewStatus::Pending], ..Default::default() }), [3]);
        let approved = vec![ReviewStatus::Accepted, ReviewStatus::Relabelled];
        assert_eq!(ids(ReviewFilter { statuses: approved, ..Default::default() }), [1, 2]);
        assert_eq!(ids(ReviewFilter { label: Some("wolf".into()), ..Default::default() }), [2]);
        assert_eq!(ids(ReviewFilter { label: Some("cat".into()), ..Default::default() }), [1, 2]);
        assert_eq!(ids(ReviewFilter { limit: Some(1), newest_first: true, ..Default::default() }), [4]);

        let reports = store.reports(&ReviewFilter::default()).unwrap();
        let labels: Vec<_> = reports.iter().map(|r| (r.status(), r.label())).collect();
        assert_eq!(
            labels,
            [
                (ReviewStatus::Accepted, Some("dog")),
                (ReviewStatus::Relabelled, Some("wolf")),
                (ReviewStatus::Pending, None),
                (ReviewStatus::Rejected, None),
            ]
        );
        // A later decision replaces the earlier one.
        store.decide(4, &Decision::Accept).unwrap();
        assert_eq!(store.report(4).unwrap().unwrap().label(), Some("mug"));
    }

    #[test]
    fn hostile_label_filters_are_data_not_sql() {
        let (_dir, store) = store_with(&[("cat", Some("dog"))]);
        let filter = ReviewFilter { label: Some("x' OR 1=1 --".into()), ..Default::default() };
        assert!(store.reports(&filter).unwrap().is_empty());
    }
}
