//! The libjpeg-turbo path of `lens::preprocess::prepare` against Pillow: the
//! test photos byte for byte Pillow's 224x224 model input, every JPEG
//! colour type (gray, CMYK, progressive), and EXIF orientation on DCT-scaled
//! decodes. References are Pillow 13 outputs written by
//! `tests/fixtures/generated/make_fixtures.py`.

mod common;

use lens::model::ResizeSpec;
use lens::preprocess::{Prepared, decode_bytes, prepare};

const MAX_PIXELS: u64 = 40_000_000;

/// Mean and max absolute difference against a Pillow reference PNG.
fn diff_to_pillow(out: &Prepared, reference: &str) -> (f64, u8) {
    let reference = image::load_from_memory(&common::fixture(reference)).expect("reference png").to_rgb8();
    assert_eq!(reference.dimensions(), (out.width, out.height));
    let diffs: Vec<u8> = out.rgb.iter().zip(reference.as_raw()).map(|(&a, &b)| a.abs_diff(b)).collect();
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    (mean, diffs.iter().copied().max().unwrap_or(0))
}

/// None of the test photos is large enough to be shrunk in the DCT domain,
/// so each is decoded, cropped and resampled exactly as Pillow does.
#[test]
fn test_photos_are_pillows_model_input_byte_for_byte() {
    for stem in ["dog", "grace_hopper", "coffee", "chelsea"] {
        let name = ["dog.jpeg", "grace_hopper.jpg", "coffee.png", "chelsea.png"]
            .into_iter()
            .find(|n| n.starts_with(stem))
            .unwrap();
        let out = prepare(&common::fixture(name), &ResizeSpec::center_crop(224), MAX_PIXELS).unwrap();
        let (mean, max) = diff_to_pillow(&out, &format!("generated/{stem}.pillow224.png"));
        assert_eq!(max, 0, "{name}: mean {mean:.3}, max {max}");
    }
}

#[test]
fn gray_cmyk_and_progressive_jpegs_decode_like_pillow() {
    for name in ["gray", "cmyk_adobe", "cmyk_plain", "progressive"] {
        let out = prepare(&common::fixture(&format!("generated/{name}.jpg")), &ResizeSpec::center_crop(32), MAX_PIXELS)
            .unwrap();
        let (mean, max) = diff_to_pillow(&out, &format!("generated/{name}.pillow32.png"));
        println!("{name}: mean |diff| {mean:.3}, max {max}");
        assert!(mean < 0.5 && max <= 4, "{name}: mean {mean:.3}, max {max}");
        if name == "gray" {
            assert!(out.rgb.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        }
    }
}

/// `jpeg` with an APP1 EXIF segment carrying `orientation` right after SOI.
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0; 6]);
    let length = u16::try_from(tiff.len() + 2).unwrap();
    [&jpeg[..2], &[0xFF, 0xE1], &length.to_be_bytes(), &tiff, &jpeg[2..]].concat()
}

/// Where the upright output pixel (x, y) of a `size`-square comes from in the
/// stored-frame output, for each EXIF orientation.
fn stored_of_upright(orientation: u16, x: u32, y: u32, size: u32) -> (u32, u32) {
    let last = size - 1;
    match orientation {
        1 => (x, y),
        2 => (last - x, y),
        3 => (last - x, last - y),
        4 => (x, last - y),
        5 => (y, x),
        6 => (y, last - x),
        7 => (last - y, last - x),
        _ => (last - y, x),
    }
}

#[test]
fn exif_orientation_is_applied_on_dct_scaled_decodes() {
    // 3000x2000 with a 224 output is decoded at a reduced scale: the decode
    // needs a fraction of the full-size RGB buffer.
    let large = common::fixture("generated/large_3000x2000.jpg");
    let full_rgb = 3000 * 2000 * 3;
    let needed = decode_bytes(&large, &ResizeSpec::center_crop(224), MAX_PIXELS).unwrap();
    assert_eq!(
        decode_bytes(&large, &ResizeSpec::center_crop(224), 3000 * 2000 - 1),
        None,
        "over max_pixels: refused, nothing to reserve"
    );
    assert!(needed <= full_rgb / 4, "decode needs {needed} bytes");

    let size = 224;
    let plain = prepare(&large, &ResizeSpec::center_crop(size), MAX_PIXELS).unwrap();
    for orientation in 1..=8u16 {
        let rotated = with_orientation(&large, orientation);
        assert_eq!(decode_bytes(&rotated, &ResizeSpec::center_crop(size), MAX_PIXELS), Some(needed));
        let out = prepare(&rotated, &ResizeSpec::center_crop(size), MAX_PIXELS).unwrap();
        for (x, y) in [(0, 0), (223, 0), (17, 150), (223, 223), (100, 7)] {
            let (sx, sy) = stored_of_upright(orientation, x, y, size);
            let at = |p: &Prepared, x: u32, y: u32| {
                let i = ((y * size + x) * 3) as usize;
                p.rgb[i..i + 3].to_vec()
            };
            // Exact for flips; within a level where the axes swap (the
            // picture's first pass is then the stored frame's vertical one,
            // so rounding happens in the other order, as in Pillow).
            let (a, b) = (at(&out, x, y), at(&plain, sx, sy));
            let off = a.iter().zip(&b).map(|(p, q)| p.abs_diff(*q)).max().unwrap_or(0);
            let allowed = if orientation >= 5 { 1 } else { 0 };
            assert!(off <= allowed, "orientation {orientation} at ({x}, {y}): {a:?} against {b:?}");
        }
    }
}
