//! The review page: `GET /review` lists reports newest first, filtered by
//! label and status; `POST /review/{id}` accepts, relabels or rejects one and
//! redirects back (POST-redirect-GET, so it works without JavaScript);
//! `GET /review/images/{sha256}.{ext}` serves the reported images. The HTML
//! is rendered by [`super::review_html`]. With API keys configured, every
//! `/review` path is for admins only.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::AppState;
use super::error::ApiError;
use super::form::read_urlencoded;
use super::review_html::{self, Filters, ReviewView};
use crate::feedback::{Decision, FeedbackError, ReviewFilter};

/// Most reports one page shows.
pub const PAGE_LIMIT: usize = 200;

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `GET /review`: the reports matching the filters, newest first.
#[utoipa::path(get, path = "/review", tag = "feedback", operation_id = "review_page",
    params(("label" = Option<String>, Query, description = "Only reports about this label"),
           ("status" = Option<String>, Query, description = "pending | accepted | relabelled | rejected")),
    responses((status = 200, description = "The review page.", content_type = "text/html"),
              (status = 400, description = "A bad filter.")))]
pub async fn page(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filters = Filters::parse(field(&pairs, "label"), field(&pairs, "status"))?;
    render(&state, &filters, None, StatusCode::OK).await
}

/// Renders the page for `filters`, with an optional error message.
async fn render(
    state: &AppState,
    filters: &Filters,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let filter = ReviewFilter {
        label: Some(filters.label.clone()).filter(|l| !l.is_empty()),
        statuses: filters.status.into_iter().collect(),
        limit: Some(PAGE_LIMIT),
        newest_first: true,
    };
    let store = state.feedback.clone();
    let reports = tokio::task::spawn_blocking(move || store.reports(&filter))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let view = ReviewView {
        labels: &state.models.serving_default()?.model.labels,
        filters,
        reports: &reports,
        error: error.as_deref(),
        limit: PAGE_LIMIT,
    };
    Ok((status, Html(review_html::render(&view))).into_response())
}

/// `POST /review/{id}`: `action` = accept | relabel | reject, `label` for a
/// relabel; `return_label` and `return_status` say where to go back to.
#[utoipa::path(post, path = "/review/{id}", tag = "feedback",
    params(("id" = i64, Path, description = "The report's id")),
    request_body(content_type = "application/x-www-form-urlencoded", description = "`action` = accept | relabel | reject, `label` for a relabel."),
    responses((status = 303, description = "Stored; back to the list."),
              (status = 400, description = "A bad action or an unknown label."),
              (status = 404, description = "No such report.")))]
pub async fn decide(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("report id {id:?} is not a number")))?;
    let fields = read_urlencoded(&body, state.limits.max_parts)?;
    let back = Filters::parse(field(&fields, "return_label"), field(&fields, "return_status"))?;
    let label = field(&fields, "label").unwrap_or_default().trim().to_owned();
    let decision = match field(&fields, "action").unwrap_or_default() {
        "accept" => Decision::Accept,
        "relabel" => Decision::Relabel(label.clone()),
        "reject" => Decision::Reject,
        other => {
            return Err(ApiError::BadRequest(format!("action {other:?} is not one of accept, relabel, reject")));
        }
    };
    let store = state.feedback.clone();
    let report = tokio::task::spawn_blocking(move || store.report(id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Some(report) = report else {
        return render(&state, &back, Some(format!("There is no report #{id}.")), StatusCode::NOT_FOUND).await;
    };
    // A label must be one the report's model knows, so exports stay usable for `lens eval`.
    let model = match state.models.get(&report.record.model) {
        Some(m) => m,
        None => state.models.serving_default()?,
    };
    let known = |l: &str| model.model.labels.iter().any(|k| k == l);
    let problem = match &decision {
        Decision::Relabel(l) if !known(l) => {
            Some(format!("{l:?} is not a label of {}: pick one from the list.", model.name()))
        }
        Decision::Accept => match report.record.correct_label.as_deref() {
            Some(l) if known(l) => None,
            Some(l) => {
                Some(format!("The reporter's label {l:?} is not a label of {}: relabel #{id} instead.", model.name()))
            }
            None => Some(format!("Report #{id} has no correct label to accept: relabel it instead.")),
        },
        _ => None,
    };
    if let Some(message) = problem {
        return render(&state, &back, Some(message), StatusCode::BAD_REQUEST).await;
    }
    let store = state.feedback.clone();
    let decided = tokio::task::spawn_blocking(move || store.decide(id, &decision))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match decided {
        Ok(_) => Ok(Redirect::to(&format!("{}#report-{id}", back.url())).into_response()),
        Err(FeedbackError::Invalid(message)) => render(&state, &back, Some(message), StatusCode::BAD_REQUEST).await,
        Err(FeedbackError::NotFound(_)) => {
            render(&state, &back, Some(format!("There is no report #{id}.")), StatusCode::NOT_FOUND).await
        }
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// `GET /review/images/{sha256}.{ext}`: a reported image. The store accepts
/// only content-addressed names, so no path can escape it.
#[utoipa::path(get, path = "/review/images/{name}", tag = "feedback",
    params(("name" = String, Path, description = "`<sha256>.<ext>`")),
    responses((status = 200, description = "A reported image."), (status = 404, description = "Not stored.")))]
pub async fn image(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    super::ops::stored_image(state.feedback.images(), &name, "private, max-age=3600").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::ReviewStatus;

    #[test]
    fn filters_round_trip_through_the_url() {
        let f = Filters::parse(Some(" tiger cat & co "), Some("relabelled")).unwrap();
        assert_eq!(f, Filters { label: "tiger cat & co".into(), status: Some(ReviewStatus::Relabelled) });
        assert_eq!(f.url(), "/review?label=tiger+cat+%26+co&status=relabelled");
        assert_eq!(Filters::parse(None, Some("all")).unwrap().url(), "/review");
        assert!(Filters::parse(None, Some("approved")).is_err());
        assert!(Filters::parse(Some(&"x".repeat(1025)), None).is_err());
    }
}
