//! `preprocess::prepare` (decode + EXIF + centre crop + bicubic to 224x224) on
//! real JPEGs and PNGs. Before criterion's own report, prints the median
//! ms/image of a quick plain loop, for a one-line comparison with Pillow
//! (tools/reference_predict.py's `load_rgb` + crop + resize).
//!
//! `cargo bench --bench preprocess -- --quick` for a fast run.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use lens::model::{Interpolation, ResizeKind, ResizeSpec};
use lens::preprocess::prepare;

const MAX_PIXELS: u64 = 40_000_000;

const CASES: [(&str, &str); 4] = [
    ("grace_hopper 512x600 jpeg", "grace_hopper.jpg"),
    ("dog 729x486 jpeg", "dog.jpeg"),
    ("large 3000x2000 jpeg", "generated/large_3000x2000.jpg"),
    ("coffee 600x400 png", "coffee.png"),
];

fn spec() -> ResizeSpec {
    ResizeSpec {
        width: 224,
        height: 224,
        kind: ResizeKind::CenterCrop,
        crop_fraction: 0.875,
        interpolation: Interpolation::Bicubic,
    }
}

fn load(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn median_ms(bytes: &[u8], spec: &ResizeSpec, runs: usize) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let _ = black_box(prepare(black_box(bytes), spec, MAX_PIXELS));
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn bench_prepare(c: &mut Criterion) {
    let spec = spec();
    let cases: Vec<(&str, Vec<u8>)> = CASES.iter().map(|&(label, file)| (label, load(file))).collect();
    for (label, bytes) in &cases {
        prepare(bytes, &spec, MAX_PIXELS).expect("fixture prepares");
        println!("{label}: median {:.2} ms/image", median_ms(bytes, &spec, 41));
    }
    for (label, bytes) in &cases {
        c.bench_function(label, |b| b.iter(|| prepare(black_box(bytes), &spec, MAX_PIXELS)));
    }
}

criterion_group!(benches, bench_prepare);
criterion_main!(benches);
