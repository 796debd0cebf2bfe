//! `preprocess::prepare` (decode + EXIF + centre crop + bicubic to 224x224) on
//! real JPEGs and PNGs. Before criterion's own report, prints the median
//! ms/image of a quick plain loop, for a one-line comparison with Pillow
//! (tools/reference_predict.py's `load_rgb` + crop + resize).
//!
//! The "phone 4032x3024 jpeg" case is a 12 MP photo made at bench start from
//! dog.jpeg (upscaled, with per-pixel noise so it compresses like a sensor's
//! output, 4:2:0 at quality 90, EXIF orientation 6 as a phone held upright
//! writes it) and cached in target/; nothing megabyte-sized is committed.
//!
//! `cargo bench --bench preprocess -- --quick` for a fast run.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use lens::model::ResizeSpec;
use lens::preprocess::prepare;
use turbojpeg::{Compressor, Image, PixelFormat, Subsamp};

const MAX_PIXELS: u64 = 40_000_000;

const CASES: [(&str, &str); 4] = [
    ("grace_hopper 512x600 jpeg", "grace_hopper.jpg"),
    ("dog 729x486 jpeg", "dog.jpeg"),
    ("large 3000x2000 jpeg", "generated/large_3000x2000.jpg"),
    ("coffee 600x400 png", "coffee.png"),
];

fn load(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The 12 MP phone photo described in the module docs, made once.
fn phone_photo() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path: PathBuf = root.join("target/bench-phone-4032x3024.jpg");
    if let Ok(bytes) = std::fs::read(&path) {
        return bytes;
    }
    let dog = turbojpeg::decompress(&load("dog.jpeg"), PixelFormat::RGB).expect("dog.jpeg");
    let dog = image::RgbImage::from_raw(dog.width as u32, dog.height as u32, dog.pixels).expect("rgb");
    // Stored sideways (EXIF 6): 3024 wide, 4032 high in the file.
    let (w, h) = (3024u32, 4032u32);
    let upscaled = image::imageops::resize(&dog, w, h, image::imageops::FilterType::Triangle);
    let mut pixels = upscaled.into_raw();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for value in pixels.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state % 13) as i16 - 6;
        *value = (i16::from(*value) + noise).clamp(0, 255) as u8;
    }
    let mut compressor = Compressor::new().expect("compressor");
    compressor.set_quality(90).expect("quality");
    compressor.set_subsamp(Subsamp::Sub2x2).expect("subsampling");
    let image = Image {
        pixels: pixels.as_slice(),
        width: w as usize,
        pitch: 3 * w as usize,
        height: h as usize,
        format: PixelFormat::RGB,
    };
    let jpeg = compressor.compress_to_vec(image).expect("encode");
    let exif: &[u8] = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0";
    let length = u16::try_from(exif.len() + 2).expect("short").to_be_bytes();
    let bytes = [&jpeg[..2], &[0xFF, 0xE1], &length, exif, &jpeg[2..]].concat();
    std::fs::write(&path, &bytes).unwrap_or_else(|e| eprintln!("cannot cache {}: {e}", path.display()));
    bytes
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
    let spec = ResizeSpec::center_crop(224);
    let mut cases: Vec<(&str, Vec<u8>)> = CASES.iter().map(|&(label, file)| (label, load(file))).collect();
    cases.push(("phone 4032x3024 jpeg (exif 6)", phone_photo()));
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
