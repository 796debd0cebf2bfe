//! `lens feedback export`: the stored reports as CSV, JSON Lines or an
//! ImageFolder tree, from this machine's store or from Redis.

use anyhow::Context;

use crate::config::ExportArgs;
use crate::feedback::{ExportSummary, FeedbackStore};

pub fn run(args: &ExportArgs) -> anyhow::Result<ExportSummary> {
    let (summary, source) = match &args.redis {
        Some(url) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let summary = runtime.block_on(crate::redis::feedback::export(url, &args.dir, args.format, args.drain))?;
            (summary, "Redis")
        }
        None => {
            let store = FeedbackStore::open(&args.data_dir.join("feedback"))?;
            (store.export(&args.dir, args.format, &args.status)?, "the local store")
        }
    };
    println!("exported {} reports from {source} to {}", summary.written, args.dir.display());
    if summary.skipped > 0 {
        println!("skipped {} reports without an image or a usable label (or rejected)", summary.skipped);
    }
    Ok(summary)
}
