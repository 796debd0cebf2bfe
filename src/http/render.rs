//! The upload page: server-rendered HTML and the static assets it links.
//!
//! The page works with JavaScript off: a plain multipart form posts to `/`
//! and the server answers with this same page, now carrying the result and a
//! "Report incorrect answer" form that posts to `/feedback`. With JavaScript
//! on, `/static/app.js` upgrades it in place (drag-and-drop, paste, preview,
//! `fetch` to `/predict`, lazy label autocomplete, a status strip).
//!
//! The page is served under [`CONTENT_SECURITY_POLICY`], which forbids inline
//! scripts and styles, so the HTML here carries no `<script>` body, no
//! `<style>` and no `style=` attribute: all behaviour and looks live in the
//! embedded assets returned by [`asset`]. Every client-supplied string goes
//! through [`escape_html`] before it reaches the document.

use std::fmt::Write;

use crate::preprocess::UPLOAD_EXTENSIONS;
use crate::ranking::ClassScore;

/// The `Content-Security-Policy` header value the page is written for: only
/// Lens's own scripts and styles, images also from `data:` and `blob:` (the
/// local preview), forms posting only back to Lens.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; \
     script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

/// What the page shows.
pub struct PageView<'a> {
    /// Model name for the status strip, e.g. `efficientnet-lite0`.
    pub model: &'a str,
    /// A classification to show (after a no-JavaScript `POST /`).
    pub result: Option<PageResult<'a>>,
    /// A message to show (error or confirmation), with its kind.
    pub message: Option<(MessageKind, &'a str)>,
}

/// How a message is announced and coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Info,
    Error,
}

/// One classified upload.
pub struct PageResult<'a> {
    /// Where the uploaded image is served, e.g. `/uploads/<sha256>.jpg`;
    /// `None` when it could not be kept (storage full).
    pub image_url: Option<&'a str>,
    /// The name the client gave the file: hostile, always escaped.
    pub filename: &'a str,
    /// Hex SHA-256 of the uploaded bytes.
    pub sha256: &'a str,
    /// Best first; `top[0]` is the prediction.
    pub top: &'a [ClassScore],
    /// Whether the answer came from the prediction cache.
    pub cached: bool,
    /// Time taken to answer, in milliseconds.
    pub elapsed_ms: f64,
}

const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");
const REVIEW_JS: &str = include_str!("../../assets/review.js");
const FAVICON_SVG: &str = include_str!("../../assets/favicon.svg");

/// Embedded static assets by path under `/static/`, e.g.
/// `"app.js"` -> `("text/javascript; charset=utf-8", bytes)`.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS.as_bytes())),
        "review.js" => Some(("text/javascript; charset=utf-8", REVIEW_JS.as_bytes())),
        "style.css" => Some(("text/css; charset=utf-8", STYLE_CSS.as_bytes())),
        "favicon.svg" => Some(("image/svg+xml", FAVICON_SVG.as_bytes())),
        _ => None,
    }
}

/// Escapes `s` for use in HTML text and in double- or single-quoted
/// attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

/// The full HTML document for `view`.
pub fn render(view: &PageView) -> String {
    let model = escape_html(view.model);
    let mut main = String::new();
    render_message(&mut main, view.message);
    render_upload_form(&mut main);
    main.push_str(
        "<figure id=\"preview\" class=\"preview\" hidden>\
         <img id=\"preview-img\" alt=\"\"><figcaption id=\"preview-name\"></figcaption></figure>\n",
    );
    main.push_str("<section id=\"result\" class=\"result\" aria-live=\"polite\" aria-labelledby=\"result-heading\">");
    if let Some(result) = &view.result {
        render_result(&mut main, result);
    }
    main.push_str("</section>\n");

    format!(
        "<!doctype html>\n\
<html lang=\"en\">\n\
<head>\n\
<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>Lens: image classification</title>\n\
<link rel=\"icon\" href=\"/static/favicon.svg\" type=\"image/svg+xml\">\n\
<link rel=\"stylesheet\" href=\"/static/style.css\">\n\
<script src=\"/static/app.js\" defer></script>\n\
</head>\n\
<body>\n\
<header class=\"site-header\">\n\
<h1>Lens</h1>\n\
<p id=\"status\" class=\"status\" aria-live=\"off\">\
<span class=\"status-item\">Model: <strong id=\"status-model\">{model}</strong></span> \
<span class=\"status-item\" id=\"status-queue\" hidden></span> \
<span class=\"status-item\" id=\"status-workers\" hidden></span></p>\n\
</header>\n\
<main id=\"main\">\n\
{main}\
</main>\n\
<footer class=\"site-footer\"><p>Images are classified by {model}. \
Accepted formats: PNG, JPEG, GIF.</p></footer>\n\
</body>\n\
</html>\n"
    )
}

/// The message area is always present so the script can announce into it.
fn render_message(out: &mut String, message: Option<(MessageKind, &str)>) {
    out.push_str("<div id=\"message\" class=\"message-area\">");
    if let Some((kind, text)) = message {
        let (class, role) = match kind {
            MessageKind::Info => ("info", "status"),
            MessageKind::Error => ("error", "alert"),
        };
        let _ = write!(out, "<p class=\"message {class}\" role=\"{role}\">{}</p>", escape_html(text));
    }
    out.push_str("</div>\n");
}

fn render_upload_form(out: &mut String) {
    let accept: Vec<String> = UPLOAD_EXTENSIONS.iter().map(|e| format!(".{e}")).collect();
    out.push_str(
        &"<form id=\"upload-form\" class=\"upload\" method=\"post\" action=\"/\" enctype=\"multipart/form-data\">\n\
<div id=\"drop-zone\" class=\"drop-zone\">\n\
<label for=\"file\" class=\"drop-label\">Choose an image\
<span class=\"js-only\" hidden>, drop one here or paste it</span></label>\n\
<input type=\"file\" id=\"file\" name=\"file\" accept=\"ACCEPT,image/png,image/jpeg,image/gif\" \
aria-describedby=\"file-hint\">\n\
<p id=\"file-hint\" class=\"hint\">PNG, JPEG or GIF.</p>\n\
</div>\n\
<button type=\"submit\" id=\"upload-button\">Classify</button>\n\
</form>\n"
            .replace("ACCEPT", &accept.join(",")),
    );
}

fn render_result(out: &mut String, r: &PageResult) {
    let filename = escape_html(r.filename);
    let image = match r.image_url {
        Some(url) => format!("<img src=\"{}\" alt=\"The uploaded image\">", escape_html(url)),
        None => "<p class=\"not-kept\">The image was not kept on the server.</p>".to_owned(),
    };
    let _ = write!(
        out,
        "<h2 id=\"result-heading\">Result</h2>\n\
<figure class=\"uploaded\">{image}<figcaption class=\"filename\">{filename}</figcaption></figure>\n",
    );
    let Some(best) = r.top.first() else {
        out.push_str("<p class=\"prediction\">No prediction.</p>\n");
        return;
    };
    let _ = write!(
        out,
        "<p class=\"prediction\">Predicted class: <strong>{}</strong></p>\n\
<p class=\"score\">Score: {:.4}</p>\n",
        escape_html(&best.label),
        best.score
    );
    render_bars(out, r.top);
    let source = if r.cached { "from the cache" } else { "computed now" };
    let _ = writeln!(out, "<p class=\"timing\">Took {:.1} ms, {source}.</p>", r.elapsed_ms);
    render_feedback_form(out, r, &best.label, best.score);
}

/// The ranked classes as labelled `<meter>` bars (no inline widths needed).
fn render_bars(out: &mut String, top: &[ClassScore]) {
    out.push_str("<ol class=\"bars\" aria-label=\"Top classes\">\n");
    for (i, class) in top.iter().enumerate() {
        let label = escape_html(&class.label);
        let _ = writeln!(
            out,
            "<li class=\"bar\"><span class=\"bar-label\" id=\"bar-{i}\">{label}</span>\
<meter min=\"0\" max=\"1\" value=\"{score:.4}\" aria-labelledby=\"bar-{i}\">{score:.4}</meter>\
<span class=\"bar-score\">{score:.4}</span></li>",
            score = class.score
        );
    }
    out.push_str("</ol>\n");
}

/// The feedback form; without JavaScript its label field is visible at once.
fn render_feedback_form(out: &mut String, r: &PageResult, prediction: &str, score: f64) {
    let report = serde_json::json!({
        "sha256": r.sha256,
        "prediction": prediction,
        "score": score,
        "filename": r.filename,
    });
    let _ = write!(
        out,
        "<form id=\"feedback-form\" class=\"feedback\" method=\"post\" action=\"/feedback\">\n\
<input type=\"hidden\" name=\"report\" value=\"{}\">\n\
<div id=\"feedback-fields\" class=\"feedback-fields\">\n\
<label for=\"correct-label\">Correct label</label>\n\
<input type=\"text\" id=\"correct-label\" name=\"correct_label\" list=\"label-list\" \
autocomplete=\"off\" required maxlength=\"200\">\n\
<datalist id=\"label-list\"></datalist>\n\
</div>\n\
<button type=\"submit\" id=\"feedback-button\">Report incorrect answer</button>\n\
</form>\n",
        escape_html(&report.to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top() -> Vec<ClassScore> {
        vec![
            ClassScore { label: "Eskimo_dog".into(), index: 248, score: 0.6404 },
            ClassScore { label: "Siberian_husky".into(), index: 250, score: 0.21 },
        ]
    }

    fn result_page(filename: &str) -> String {
        let top = top();
        render(&PageView {
            model: "efficientnet-lite0",
            result: Some(PageResult {
                image_url: Some("/uploads/abc.jpg"),
                filename,
                sha256: "abc",
                top: &top,
                cached: true,
                elapsed_ms: 12.34,
            }),
            message: None,
        })
    }

    #[test]
    fn escapes_every_html_special_character() {
        assert_eq!(
            escape_html(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#x27;y&#x27;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_script_filename_is_shown_as_text() {
        let html = result_page("<script>alert(1)</script>.jpg");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;.jpg"));
        // The hidden report carries it too, JSON inside an escaped attribute.
        assert!(html.contains("&quot;filename&quot;:&quot;&lt;script&gt;alert(1)&lt;/script&gt;.jpg&quot;"));
    }

    #[test]
    fn the_result_page_shows_prediction_score_and_report_button() {
        let html = result_page("dog.jpeg");
        assert!(html.contains("Predicted class: <strong>Eskimo_dog</strong>"));
        assert!(html.contains("Score: 0.6404"));
        assert!(html.contains("Report incorrect answer"));
        assert!(html.contains("<form id=\"feedback-form\" class=\"feedback\" method=\"post\" action=\"/feedback\">"));
        assert!(html.contains("name=\"correct_label\""));
        assert!(html.contains("<datalist id=\"label-list\">"));
        assert!(html.contains("src=\"/uploads/abc.jpg\""));
        assert!(html.contains("Took 12.3 ms, from the cache."));
        assert!(html.contains("value=\"0.2100\""));
    }

    #[test]
    fn the_report_is_the_documented_json() {
        let html = result_page("dog.jpeg");
        let start = html.find("name=\"report\" value=\"").unwrap() + 21;
        let end = start + html[start..].find('"').unwrap();
        let json = html[start..end].replace("&quot;", "\"");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sha256": "abc", "prediction": "Eskimo_dog", "score": 0.6404, "filename": "dog.jpeg"})
        );
    }

    #[test]
    fn the_empty_page_has_the_plain_upload_form_and_a_message() {
        let html = render(&PageView {
            model: "m",
            result: None,
            message: Some((MessageKind::Error, "No file was uploaded.")),
        });
        assert!(html.contains("method=\"post\" action=\"/\" enctype=\"multipart/form-data\""));
        assert!(html.contains("<input type=\"file\" id=\"file\" name=\"file\""));
        assert!(html.contains("role=\"alert\">No file was uploaded.</p>"));
        assert!(!html.contains("Predicted class"));
    }

    #[test]
    fn the_html_obeys_the_content_security_policy() {
        let hostile = result_page("<b style=\"x\" onclick=\"y\">.jpg");
        let plain = render(&PageView { model: "m", result: None, message: None });
        for html in [hostile, plain] {
            assert!(!html.contains(" style=\""), "inline style attribute");
            assert!(!html.contains("<style"), "inline <style>");
            assert!(!has_event_handler_attribute(&html), "inline event handler");
            // The only script element is the external, deferred app.js.
            assert_eq!(html.matches("<script").count(), 1);
            assert!(html.contains("<script src=\"/static/app.js\" defer></script>"));
        }
    }

    /// Whether `html` has an attribute like ` onclick=`.
    fn has_event_handler_attribute(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].starts_with("=\"")
        })
    }

    #[test]
    fn assets_are_embedded_with_their_types() {
        let (ty, js) = asset("app.js").unwrap();
        assert_eq!(ty, "text/javascript; charset=utf-8");
        assert!(!js.is_empty());
        assert_eq!(asset("style.css").unwrap().0, "text/css; charset=utf-8");
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("").is_none());
    }
}
