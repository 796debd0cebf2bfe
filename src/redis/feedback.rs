//! Feedback when API nodes share a Redis.
//!
//! Every API node keeps its own durable store (`--data-dir` on its own disk:
//! SQLite plus images, as in-process), and mirrors each report, with its
//! image, to the `lens:feedback` stream. Collecting feedback is then one
//! command against Redis, whichever node took each report:
//! `lens feedback export --redis URL DIR` in any export format (add
//! `--drain` to remove what was exported). Review decisions live in each
//! node's own store, so every report read from Redis is pending. The mirror is best-effort: a report taken while Redis was down
//! is only in that node's store, and `lens feedback export --data-dir` on
//! that node still finds it.

use std::path::Path;
use std::time::Duration;

use super::conn::Conn;
use anyhow::Context;
use redis::streams::StreamRangeReply;

use super::keys::{self, COMMAND_TIMEOUT};
use super::{clock, conn};
use crate::feedback::{ExportFormat, ExportSummary, Exporter, FeedbackRecord, ImageSource, Report};

/// The stream keeps about this many reports (approximate trim).
const MAXLEN: usize = 100_000;
const PAGE: usize = 100;

/// Pushes this node's reports to `lens:feedback`.
pub struct FeedbackMirror {
    conn: Conn,
    node: String,
}

impl FeedbackMirror {
    pub fn new(client: &conn::Redis) -> redis::RedisResult<Self> {
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

/// Writes every report in `lens:feedback` to `out` in `format` (see
/// [`crate::feedback::export`]); with `drain`, then deletes them from Redis.
pub async fn export(url: &str, out: &Path, format: ExportFormat, drain: bool) -> anyhow::Result<ExportSummary> {
    // rediss:// URLs verify against the system's trust store here.
    let password = std::env::var(conn::PASSWORD_ENV).ok();
    let redis = conn::client(url, &conn::TlsFiles::default(), password.as_deref())?;
    redis.check().await.context("asking the Redis Sentinels for the primary")?;
    let mut conn = conn::connect(&redis, Duration::from_secs(30)).context("connecting to Redis")?;
    let mut exporter = Exporter::create(out, format, true)?;
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
            let Some(record) =
                entry.get::<String>("record").and_then(|j| serde_json::from_str::<FeedbackRecord>(&j).ok())
            else {
                tracing::warn!(entry = %entry.id, "skipping a malformed feedback entry");
                continue;
            };
            let image = entry.get::<String>("image_file").zip(entry.get::<Vec<u8>>("image"));
            let report = Report {
                id: entry.get::<i64>("id").unwrap_or_default(),
                created_at: entry.get::<u64>("created_ms").map_or(0.0, |ms| ms as f64 / 1000.0),
                record,
                review: None,
            };
            let node = entry.get::<String>("node").unwrap_or_default();
            let source = image.as_ref().map(|(name, bytes)| ImageSource::Bytes(bytes, name));
            exporter.add(Some(&node), &report, source)?;
        }
    }
    let summary = exporter.finish()?;
    if drain {
        for ids in exported.chunks(PAGE) {
            redis::cmd("XDEL").arg(keys::FEEDBACK).arg(ids).exec_async(&mut conn).await?;
        }
    }
    Ok(summary)
}
