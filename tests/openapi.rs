//! The API reference a running server publishes at `/openapi.json` is a
//! valid OpenAPI document, checked by `openapi-spec-validator` (PyPI, in
//! requirements-dev.txt) from the project's venv, and declares each parameter
//! where it really lives.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Server, root};
use serde_json::Value;

/// Runs the validator on `doc`; Ok, or the validator's complaint.
fn validate(doc: &Value, dir: &Path) -> Result<(), String> {
    let file = dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let out = Command::new(root().join(".venv/bin/python"))
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("the project venv (make test installs requirements-dev.txt) has openapi-spec-validator");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(()) } else { Err(text) }
}

/// The parameters of one operation, as (name, in, required).
fn parameters(doc: &Value, path: &str, method: &str) -> Vec<(String, String, bool)> {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    op["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let required = p["required"].as_bool().unwrap_or(false);
                    (p["name"].as_str().unwrap().to_owned(), p["in"].as_str().unwrap().to_owned(), required)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_passes_the_openapi_validator() {
    let server = Server::start(&[]).await;
    let resp = reqwest::get(format!("{}/openapi.json", server.url)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    server.stop().await;
    let tmp = tempfile::tempdir().unwrap();

    validate(&doc, tmp.path()).unwrap_or_else(|e| panic!("/openapi.json is not a valid OpenAPI document:\n{e}"));

    // `top_k` is an optional query parameter of POST /predict.
    assert_eq!(parameters(&doc, "/predict", "post"), vec![("top_k".to_owned(), "query".to_owned(), false)]);

    // Every `{name}` of every path is a required path parameter of each of
    // its operations, and no path parameter is declared that the path lacks.
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 20, "only {} paths documented", paths.len());
    for (path, item) in paths {
        let mut in_template: Vec<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
        in_template.sort();
        for method in item.as_object().unwrap().keys() {
            let params = parameters(&doc, path, method);
            let mut declared: Vec<&str> =
                params.iter().filter(|(_, at, _)| at == "path").map(|(n, _, _)| n.as_str()).collect();
            declared.sort();
            assert_eq!(declared, in_template, "{method} {path}: path parameters");
            assert!(params.iter().filter(|(_, at, _)| at == "path").all(|(_, _, req)| *req), "{method} {path}");
        }
    }

    // The validator does reject what this document used to declare: `top_k`
    // as a required path parameter of a path without `{top_k}`.
    let mut broken = doc.clone();
    broken["paths"]["/predict"]["post"]["parameters"][0]["in"] = "path".into();
    broken["paths"]["/predict"]["post"]["parameters"][0]["required"] = true.into();
    assert!(validate(&broken, tmp.path()).is_err(), "the validator accepted a path parameter missing from its path");
}
