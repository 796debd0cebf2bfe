//! The offline subcommands: `lens predict` and `lens bench`. Each reads its
//! arguments from [`crate::config`] and runs the model directly, without the
//! HTTP service or the queue.

pub mod bench;
pub mod predict;
