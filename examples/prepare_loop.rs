//! `preprocess::prepare` alone over a folder of JPEGs, the default model's
//! preprocessing (centre crop 0.875, bicubic to 224x224), for profiling the
//! decode path without inference or HTTP:
//!
//!     cargo build --release --example prepare_loop
//!     valgrind --tool=callgrind target/release/examples/prepare_loop DIR 1
//!
//! Prints the best mean ms per photo over ROUNDS passes (default 3). Under
//! callgrind the instruction count is the figure to compare: it is stable on
//! a noisy machine, where wall-clock time is not.

use std::time::Instant;

use lens::model::ResizeSpec;
use lens::preprocess::prepare;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: prepare_loop DIR [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: usize = args.next().map_or(3, |s| s.parse().expect("ROUNDS is a number"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("a readable folder")
        .map(|entry| entry.expect("a folder entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "jpg" || e == "jpeg"))
        .collect();
    files.sort();
    let photos: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).expect("a readable photo")).collect();
    let spec = ResizeSpec::center_crop(224);
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        let failed = photos.iter().filter(|bytes| prepare(bytes, &spec, 40_000_000).is_err()).count();
        best = best.min(started.elapsed().as_secs_f64() * 1e3 / photos.len().max(1) as f64);
        assert_eq!(failed, 0, "every photo in {dir} prepares");
    }
    println!("{} photos, best mean {best:.3} ms per photo", photos.len());
}
