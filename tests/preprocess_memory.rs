//! A DCT-scaled decode of a 12 MP phone photo never allocates the full-size
//! RGB image. A counting global allocator records the peak of live Rust heap
//! bytes while `prepare` runs (libjpeg-turbo's own working memory is C heap:
//! for a baseline JPEG it streams a few rows of blocks at a time).
//! One test in its own binary, so no other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use lens::model::ResizeSpec;
use lens::preprocess::prepare;
use turbojpeg::{Compressor, Image, PixelFormat, Subsamp};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A 4032x3024 photo-like JPEG (smooth gradients plus texture), 4:2:0, q90.
fn phone_jpeg() -> Vec<u8> {
    let (w, h) = (4032usize, 3024usize);
    let mut pixels = vec![0u8; w * h * 3];
    for (i, px) in pixels.chunks_exact_mut(3).enumerate() {
        let (x, y) = (i % w, i / w);
        let texture = ((x * 7 + y * 13) ^ (x * y / 97)) as u8 & 31;
        px.copy_from_slice(&[(x * 255 / w) as u8 ^ texture, (y * 255 / h) as u8, texture * 8]);
    }
    let mut compressor = Compressor::new().unwrap();
    compressor.set_quality(90).unwrap();
    compressor.set_subsamp(Subsamp::Sub2x2).unwrap();
    let image = Image { pixels: pixels.as_slice(), width: w, pitch: w * 3, height: h, format: PixelFormat::RGB };
    compressor.compress_to_vec(image).unwrap()
}

#[test]
fn scaled_decode_of_a_12_mp_photo_never_allocates_the_full_size_image() {
    let jpeg = phone_jpeg();
    let spec = ResizeSpec::center_crop(224);
    let full_rgb = 4032 * 3024 * 3;
    for round in 0..2 {
        let before = LIVE.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let out = prepare(&jpeg, &spec, 40_000_000).unwrap();
        let peak = PEAK.load(Ordering::SeqCst) - before;
        println!(
            "round {round}: peak Rust heap during prepare {peak} bytes ({:.1}% of full-size RGB)",
            100.0 * peak as f64 / full_rgb as f64
        );
        assert_eq!(out.rgb.len(), 224 * 224 * 3);
        assert!(peak < full_rgb / 8, "round {round}: peak {peak} bytes");
    }
}
