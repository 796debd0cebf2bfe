//! Feedback when API nodes share a Redis.
//!
//! Every API node keeps its own durable store (`--data-dir` on its own disk:
//! SQLite plus images, as in-process), and mirrors each report, with its
//! image, to the `lens:feedback` stream. Collecting feedback is then one
//! command against Redis, whichever node took each report:
//! `lens feedback export --redis URL DIR` (add `--drain` to remove what was
//! exported). The mirror is best-effort: a report taken while Redis was down
//! is only in that node's store, and `lens feedback export --data-dir` on
//! that node still finds it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;

use super::keys::{self, COMMAND_TIMEOUT};
use super::{clock, conn};
use crate::feedback::{CSV_HEADER, FeedbackRecord, ImageStore, csv_field, csv_row};

/// The stream keeps about this many reports (approximate trim).
const MAXLEN: usize = 100_000;
const PAGE: usize = 100;

/// Pushes this node's reports to `lens:feedback`.
pub struct FeedbackMirror {
    conn: ConnectionManager,
    node: String,
}

impl FeedbackMirror {
    pub fn new(client: &redis::Client) -> redis::RedisResult<Self> {
        Ok(FeedbackMirror { conn: conn::connect(client, COMMAND_TIMEOUT)?, node: clock::unique_id("api") })
    }

    /// Mirrors report `id` of this node's store; `image` is the stored file
    /// (`<sha256>.<ext>`) and its bytes. Failures are logged, not returned:
    /// the report is already durable in the local store.
    pub async fn push(&self, id: i64, record: &FeedbackRecord, image: Option<(String, Vec<u8>)>) {
        let Ok(json) = serde_json::to_string(record) else { return };
        let mut cmd = redis::cmd("XADD");
        cmd.arg(keys::FEEDBACK).arg("MAXLEN").arg("~").arg(MAXLEN).arg("*");
        cmd.arg("node")
            .arg(&self.node)
            .arg("id")
            .arg(id)
            .arg("created_ms")
            .arg(clock::now_ms())
            .arg("record")
            .arg(json);
        if let Some((name, bytes)) = image {
            cmd.arg("image_file").arg(name).arg("image").arg(bytes);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, cmd.exec_async(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(id, error = %e, "feedback kept locally only: cannot mirror it to Redis"),
            Err(_) => tracing::warn!(id, "feedback kept locally only: Redis did not answer"),
        }
    }
}

/// Writes every report in `lens:feedback` to `out/feedback.csv` and its
/// images to `out/images/`; with `drain`, then deletes them from Redis.
/// Returns the number of reports.
pub async fn export(url: &str, out: &Path, drain: bool) -> anyhow::Result<usize> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    // rediss:// URLs verify against the system's trust store here.
    let password = std::env::var(conn::PASSWORD_ENV).ok();
    let client = conn::client(url, &conn::TlsFiles::default(), password.as_deref())?;
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.context("connecting to Redis")?;
    let images = ImageStore::open(&out.join("images"))?;
    let mut csv = format!("node,{CSV_HEADER}\n");
    let mut exported = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys::FEEDBACK)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut conn)
            .await?;
        let Some(last) = page.ids.last() else { break };
        start = format!("({}", last.id);
        for entry in &page.ids {
            exported.push(entry.id.clone());
            let Some(mut record) =
                entry.get::<String>("record").and_then(|j| serde_json::from_str::<FeedbackRecord>(&j).ok())
            else {
                tracing::warn!(entry = %entry.id, "skipping a malformed feedback entry");
                continue;
            };
            record.image_file = match (entry.get::<String>("image_file"), entry.get::<Vec<u8>>("image")) {
                (Some(name), Some(bytes)) => {
                    let ext = name.rsplit('.').next().unwrap_or("jpg").to_owned();
                    Some(images.put(&bytes, &ext)?)
                }
                _ => None,
            };
            let created = entry.get::<u64>("created_ms").map_or(0.0, |ms| ms as f64 / 1000.0);
            let id = entry.get::<i64>("id").unwrap_or_default();
            let node = csv_field(&entry.get::<String>("node").unwrap_or_default());
            let row = format!("{node},{}", csv_row(id, created, &record));
            csv.push_str(&row);
            csv.push('\n');
        }
    }
    let path = out.join("feedback.csv");
    std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))?;
    if drain {
        for ids in exported.chunks(PAGE) {
            redis::cmd("XDEL").arg(keys::FEEDBACK).arg(ids).exec_async(&mut conn).await?;
        }
    }
    Ok(exported.len())
}
