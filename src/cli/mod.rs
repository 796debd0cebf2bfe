//! The offline subcommands: `lens predict`, `lens eval`, `lens bench`,
//! `lens quantize` and `lens feedback export`. Each reads its arguments from [`crate::config`]
//! and runs the model (or the feedback store) directly, without the HTTP
//! service or the queue.

pub mod bench;
pub mod eval;
pub mod export;
pub mod predict;
pub mod progress;
pub mod quantize;
