//! The review page's HTML. Like the upload page it is written for
//! [`super::render::CONTENT_SECURITY_POLICY`]: no inline script, style or
//! event handler; looks live in `/static/style.css`, the one optional script
//! in `/static/review.js`. Every stored string (all of it typed by clients)
//! goes through [`escape_html`]. [`Filters`] are the page's label and status
//! filters, parsed from the query and carried through every form.

use std::fmt::Write;

use super::error::ApiError;
use super::render::escape_html;
use crate::feedback::{Report, ReviewStatus};

/// Longest label accepted in a filter, in characters.
const MAX_LABEL_CHARS: usize = 1024;

/// The page's filters, as they travel in the query string and in the
/// decision forms (so a decision returns to the same filtered list).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub label: String,
    pub status: Option<ReviewStatus>,
}

impl Filters {
    pub fn parse(label: Option<&str>, status: Option<&str>) -> Result<Self, ApiError> {
        let label = label.unwrap_or_default().trim().to_owned();
        if label.chars().count() > MAX_LABEL_CHARS {
            return Err(ApiError::BadRequest(format!("label is longer than {MAX_LABEL_CHARS} characters")));
        }
        let status = match status.unwrap_or_default() {
            "" | "all" => None,
            s => Some(ReviewStatus::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!("status {s:?} is not one of all, pending, accepted, relabelled, rejected"))
            })?),
        };
        Ok(Filters { label, status })
    }

    /// `/review` with these filters as its query string.
    pub fn url(&self) -> String {
        let mut pairs = Vec::new();
        if !self.label.is_empty() {
            pairs.push(("label", self.label.as_str()));
        }
        if let Some(status) = self.status {
            pairs.push(("status", status.as_str()));
        }
        match serde_urlencoded::to_string(pairs) {
            Ok(query) if !query.is_empty() => format!("/review?{query}"),
            _ => "/review".to_owned(),
        }
    }
}

/// What the review page shows.
pub struct ReviewView<'a> {
    /// The model's labels, offered as autocomplete.
    pub labels: &'a [String],
    pub filters: &'a Filters,
    /// Newest first.
    pub reports: &'a [Report],
    pub error: Option<&'a str>,
    /// The most reports a page shows.
    pub limit: usize,
}

/// The full HTML document for `view`.
pub fn render(view: &ReviewView) -> String {
    let mut main = String::new();
    main.push_str("<div id=\"message\" class=\"message-area\">");
    if let Some(error) = view.error {
        let _ = write!(main, "<p class=\"message error\" role=\"alert\">{}</p>", escape_html(error));
    }
    main.push_str("</div>\n");
    render_filters(&mut main, view.filters);
    main.push_str("<datalist id=\"review-labels\">");
    for label in view.labels {
        let _ = write!(main, "<option value=\"{}\"></option>", escape_html(label));
    }
    main.push_str("</datalist>\n");
    let shown = view.reports.len();
    let more = if shown >= view.limit { format!(" (the newest {shown}; filter to see others)") } else { String::new() };
    let _ = writeln!(main, "<p id=\"review-count\" class=\"review-count\">{shown} reports, newest first{more}.</p>");
    main.push_str("<ol class=\"reports\">\n");
    for report in view.reports {
        render_report(&mut main, report, view.filters);
    }
    main.push_str("</ol>\n");
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>Lens: review reports</title>\n\
<link rel=\"icon\" href=\"/static/favicon.svg\" type=\"image/svg+xml\">\n\
<link rel=\"stylesheet\" href=\"/static/style.css\">\n\
<script src=\"/static/review.js\" defer></script>\n\
</head>\n<body class=\"review-page\">\n\
<header class=\"site-header\">\n<h1>Review reports</h1>\n\
<p class=\"status\"><a href=\"/\">Upload page</a></p>\n</header>\n\
<main id=\"main\">\n{main}</main>\n</body>\n</html>\n"
    )
}

fn render_filters(out: &mut String, filters: &Filters) {
    let _ = write!(
        out,
        "<form id=\"review-filter\" class=\"review-filter\" method=\"get\" action=\"/review\">\n\
<label for=\"filter-label\">Label</label>\n\
<input type=\"text\" id=\"filter-label\" name=\"label\" list=\"review-labels\" autocomplete=\"off\" value=\"{}\">\n\
<label for=\"filter-status\">Status</label>\n\
<select id=\"filter-status\" name=\"status\" data-autosubmit>\n",
        escape_html(&filters.label)
    );
    let selected = |s: Option<ReviewStatus>| if filters.status == s { " selected" } else { "" };
    let _ = writeln!(out, "<option value=\"all\"{}>all</option>", selected(None));
    for status in ReviewStatus::ALL {
        let name = status.as_str();
        let _ = writeln!(out, "<option value=\"{name}\"{}>{name}</option>", selected(Some(status)));
    }
    out.push_str("</select>\n<button type=\"submit\" id=\"filter-button\">Filter</button>\n");
    out.push_str("<a href=\"/review\" class=\"clear-filter\">Show all</a>\n</form>\n");
}

fn render_report(out: &mut String, report: &Report, filters: &Filters) {
    let id = report.id;
    let r = &report.record;
    let status = report.status().as_str();
    let _ = writeln!(out, "<li class=\"report\" id=\"report-{id}\" data-status=\"{status}\">");
    match &r.image_file {
        Some(name) => {
            let _ = writeln!(
                out,
                "<img class=\"thumb\" src=\"/review/images/{}\" alt=\"Reported image #{id}\" loading=\"lazy\">",
                escape_html(name)
            );
        }
        None => {
            let _ = writeln!(out, "<div class=\"thumb no-image\">No image kept</div>");
        }
    }
    out.push_str("<div class=\"report-body\">\n");
    let _ = writeln!(
        out,
        "<p class=\"report-meta\">#{id} · {} · {} · <span class=\"badge badge-{status}\">{status}</span></p>",
        format_utc(report.created_at),
        escape_html(&r.model)
    );
    let text = |v: &Option<String>| v.as_deref().map_or_else(|| "—".to_owned(), escape_html);
    let score = r.score.map(|s| format!(" ({s:.4})")).unwrap_or_default();
    let _ = writeln!(out, "<p>Predicted: <strong class=\"predicted\">{}</strong>{score}</p>", text(&r.predicted_label));
    let _ = writeln!(out, "<p>Reporter says: <strong class=\"reported\">{}</strong></p>", text(&r.correct_label));
    if let Some(filename) = &r.filename {
        let _ = writeln!(out, "<p class=\"filename\">{}</p>", escape_html(filename));
    }
    if let Some(review) = &report.review {
        let label = review.label.as_deref().map(|l| format!(" as <strong>{}</strong>", escape_html(l)));
        let _ = writeln!(
            out,
            "<p class=\"decision\">{}{} on {}</p>",
            capitalised(status),
            label.unwrap_or_default(),
            format_utc(review.decided_at)
        );
    }
    render_decision_form(out, report, filters);
    out.push_str("</div>\n</li>\n");
}

fn render_decision_form(out: &mut String, report: &Report, filters: &Filters) {
    let id = report.id;
    let current = report.label().or(report.record.correct_label.as_deref()).unwrap_or_default();
    let back_status = filters.status.map_or("all", |s| s.as_str());
    let _ = write!(
        out,
        "<form class=\"decide\" method=\"post\" action=\"/review/{id}\">\n\
<input type=\"hidden\" name=\"return_label\" value=\"{}\">\n\
<input type=\"hidden\" name=\"return_status\" value=\"{back_status}\">\n\
<label for=\"label-{id}\">Label</label>\n\
<input type=\"text\" id=\"label-{id}\" name=\"label\" list=\"review-labels\" autocomplete=\"off\" \
maxlength=\"1024\" value=\"{}\">\n\
<button type=\"submit\" name=\"action\" value=\"accept\">Accept</button>\n\
<button type=\"submit\" name=\"action\" value=\"relabel\">Relabel</button>\n\
<button type=\"submit\" name=\"action\" value=\"reject\" class=\"reject\">Reject</button>\n\
</form>\n",
        escape_html(&filters.label),
        escape_html(current)
    );
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// `YYYY-MM-DD HH:MM UTC` for Unix seconds (days to civil date after
/// Howard Hinnant's `civil_from_days`).
pub fn format_utc(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) as i64 } else { 0 };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::{FeedbackRecord, Review};

    #[test]
    fn formats_unix_seconds_as_utc() {
        assert_eq!(format_utc(0.0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400.0 + 3_660.0), "2000-02-29 01:01 UTC");
        assert_eq!(format_utc(1_795_865_308.0), "2026-11-28 11:28 UTC");
    }

    #[test]
    fn hostile_report_text_is_escaped_and_the_page_obeys_the_csp() {
        let evil = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
        let record = FeedbackRecord {
            model: evil.into(),
            image_file: Some(format!("{}.jpg", "a".repeat(64))),
            filename: Some(evil.into()),
            predicted_label: Some(evil.into()),
            score: Some(0.5),
            correct_label: Some(evil.into()),
            ..Default::default()
        };
        let review = Review { status: ReviewStatus::Relabelled, label: Some(evil.into()), decided_at: 1.0 };
        let reports = [Report { id: 3, created_at: 0.0, record, review: Some(review) }];
        let filters = Filters { label: evil.into(), status: Some(ReviewStatus::Relabelled) };
        let labels = [evil.to_owned(), "tabby".to_owned()];
        let html = render(&ReviewView {
            labels: &labels,
            filters: &filters,
            reports: &reports,
            error: Some(evil),
            limit: 200,
        });
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(!html.contains(" style=\"") && !html.contains("<style"));
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains("<script src=\"/static/review.js\" defer></script>"));
        assert!(!html.contains(" onerror=\"") && !html.contains(" onclick=\""));
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&gt;&lt;img src=x onerror=alert(2)&gt;")
        );
        assert!(html.contains("<form class=\"decide\" method=\"post\" action=\"/review/3\">"));
        assert!(html.contains("<option value=\"relabelled\" selected>relabelled</option>"));
        assert!(html.contains("<option value=\"tabby\"></option>"));
        assert!(html.contains("data-status=\"relabelled\""));
    }
}
