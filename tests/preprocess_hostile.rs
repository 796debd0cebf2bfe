//! `lens::preprocess::prepare` on real fixtures, on every supported format and
//! colour type, against Pillow reference outputs, and on hostile input
//! (empty, not an image, truncated, decompression bombs, fuzzed bytes), where
//! each case must give its typed error and nothing may panic.
//!
//! Fixtures under `tests/fixtures/generated/` were written once by
//! `make_fixtures.py` there (Pillow); everything else is built in the test.

mod common;

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};
use lens::model::{ResizeKind, ResizeSpec};
use lens::preprocess::{Format, ImageError, Prepared, prepare, sniff_format};

const MAX_PIXELS: u64 = 40_000_000;

fn prepare_ok(bytes: &[u8], spec: &ResizeSpec) -> Prepared {
    let out = prepare(bytes, spec, MAX_PIXELS).expect("prepare");
    assert_eq!((out.width, out.height), (spec.width, spec.height));
    assert_eq!(out.rgb.len(), (spec.width * spec.height * 3) as usize);
    out
}

fn pixel(p: &Prepared, x: u32, y: u32) -> [u8; 3] {
    let i = ((y * p.width + x) * 3) as usize;
    [p.rgb[i], p.rgb[i + 1], p.rgb[i + 2]]
}

fn assert_near(actual: [u8; 3], expected: [u8; 3], tolerance: u8, what: &str) {
    let close = actual.iter().zip(expected).all(|(&a, e)| a.abs_diff(e) <= tolerance);
    assert!(close, "{what}: got {actual:?}, expected {expected:?} +- {tolerance}");
}

/// Mean and max absolute difference against a Pillow reference PNG.
fn diff_to_reference(out: &Prepared, reference: &str) -> (f64, u8) {
    let reference = image::load_from_memory(&common::fixture(reference)).expect("reference png").to_rgb8();
    assert_eq!(reference.dimensions(), (out.width, out.height));
    let diffs: Vec<u8> = out.rgb.iter().zip(reference.as_raw()).map(|(&a, &b)| a.abs_diff(b)).collect();
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    (mean, diffs.iter().copied().max().unwrap_or(0))
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).expect("encode");
    bytes.into_inner()
}

/// A simple deterministic generator (Knuth's MMIX LCG); no rand crate needed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------- real files

#[test]
fn real_fixtures_prepare_to_224() {
    for name in ["dog.jpeg", "grace_hopper.jpg", "coffee.png", "chelsea.png"] {
        let bytes = common::fixture(name);
        prepare_ok(&bytes, &ResizeSpec::center_crop(224));
        let squash = ResizeSpec { kind: ResizeKind::Squash, width: 300, height: 200, ..ResizeSpec::center_crop(224) };
        prepare_ok(&bytes, &squash);
    }
}

#[test]
fn jpeg_output_matches_pillow_reference() {
    for (name, reference) in
        [("dog.jpeg", "generated/dog.pillow224.png"), ("grace_hopper.jpg", "generated/grace_hopper.pillow224.png")]
    {
        let out = prepare_ok(&common::fixture(name), &ResizeSpec::center_crop(224));
        let (mean, max) = diff_to_reference(&out, reference);
        assert_eq!(max, 0, "{name}: mean {mean:.3}, max {max}");
    }
}

#[test]
fn dct_scaled_jpeg_decode_stays_close_to_pillow() {
    // dog.jpeg's 425px crop is decoded at 1/2 for a 64px output and at 1/4
    // for a 40px one (the scaled crop stays >= 2x the output). Measured:
    // mean 0.23 / max 6 and mean 0.50 / max 15 levels.
    for (size, reference) in [(64, "generated/dog.pillow64.png"), (40, "generated/dog.pillow40.png")] {
        let out = prepare_ok(&common::fixture("dog.jpeg"), &ResizeSpec::center_crop(size));
        let (mean, max) = diff_to_reference(&out, reference);
        assert!(mean < 1.0 && max <= 24, "{size}px: mean {mean:.3}, max {max}");
    }
}

#[test]
fn sniffing_ignores_names_and_reads_magic_bytes() {
    assert_eq!(sniff_format(&common::fixture("dog.jpeg")), Some(Format::Jpeg));
    assert_eq!(sniff_format(&common::fixture("coffee.png")), Some(Format::Png));
    assert_eq!(sniff_format(b"hello"), None);
}

// ------------------------------------------------------- formats and colours

fn halves(width: u32, height: u32, left: [u8; 3], right: [u8; 3]) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(width, height, |x, _| Rgb(if x < width / 2 { left } else { right })))
}

#[test]
fn gif_bmp_webp_and_png_decode() {
    let (red, blue) = ([220, 20, 20], [20, 20, 220]);
    let squash = ResizeSpec { kind: ResizeKind::Squash, width: 32, height: 16, ..ResizeSpec::center_crop(32) };
    for format in [ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::WebP, ImageFormat::Png] {
        let bytes = encode(halves(64, 40, red, blue), format);
        let out = prepare_ok(&bytes, &squash);
        // GIF quantises to a palette; the others are lossless here.
        assert_near(pixel(&out, 2, 8), red, 6, &format!("{format:?} left"));
        assert_near(pixel(&out, 29, 8), blue, 6, &format!("{format:?} right"));
    }
}

#[test]
fn grayscale_and_cmyk_jpegs_match_pillow() {
    for name in ["gray", "cmyk_adobe", "cmyk_plain"] {
        let out = prepare_ok(&common::fixture(&format!("generated/{name}.jpg")), &ResizeSpec::center_crop(32));
        let (mean, max) = diff_to_reference(&out, &format!("generated/{name}.pillow32.png"));
        assert!(mean < 1.5 && max <= 12, "{name}: mean {mean:.3}, max {max}");
        if name == "gray" {
            assert!(out.rgb.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        }
    }
}

#[test]
fn sixteen_bit_pngs_are_narrowed() {
    let rgb16 = ImageBuffer::from_pixel(20, 20, Rgb([65535u16, 32896, 0]));
    let out = prepare_ok(&encode(DynamicImage::ImageRgb16(rgb16), ImageFormat::Png), &ResizeSpec::center_crop(8));
    assert_near(pixel(&out, 4, 4), [255, 128, 0], 0, "rgb16");

    let gray16 = ImageBuffer::from_pixel(20, 20, Luma([257u16 * 100]));
    let out = prepare_ok(&encode(DynamicImage::ImageLuma16(gray16), ImageFormat::Png), &ResizeSpec::center_crop(8));
    assert_near(pixel(&out, 4, 4), [100, 100, 100], 0, "gray16");
}

#[test]
fn transparent_pixels_are_composited_on_white() {
    // Left half opaque red; right half fully transparent but hiding black.
    let rgba = ImageBuffer::from_fn(64, 64, |x, _| if x < 32 { Rgba([255u8, 0, 0, 255]) } else { Rgba([0, 0, 0, 0]) });
    let squash = ResizeSpec { kind: ResizeKind::Squash, ..ResizeSpec::center_crop(16) };
    let out = prepare_ok(&encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png), &squash);
    assert_near(pixel(&out, 2, 8), [255, 0, 0], 0, "opaque");
    assert_near(pixel(&out, 13, 8), [255, 255, 255], 0, "transparent");

    let half = ImageBuffer::from_pixel(8, 8, Rgba([0u8, 0, 0, 128]));
    let out = prepare_ok(&encode(DynamicImage::ImageRgba8(half), ImageFormat::Png), &ResizeSpec::center_crop(4));
    assert_near(pixel(&out, 1, 1), [127, 127, 127], 1, "half transparent black");
}

// ------------------------------------------------------------------- EXIF

/// An APP1 segment holding a big-endian TIFF header whose IFD0 has only
/// the Orientation tag.
fn exif_app1(orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]); // tag, SHORT, count 1
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, next IFD = none
    let payload = [b"Exif\0\0".as_slice(), &tiff].concat();
    let length = u16::try_from(payload.len() + 2).expect("short segment");
    [&[0xFF, 0xE1][..], &length.to_be_bytes(), &payload].concat()
}

fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    [&jpeg[..2], &exif_app1(orientation), &jpeg[2..]].concat()
}

#[test]
fn exif_orientation_is_applied_for_all_eight_values() {
    // quadrants.jpg (64x48): top-left red, top-right green, bottom-left blue,
    // bottom-right yellow. Expected upright quadrants, in TL, TR, BL, BR order.
    let (r, g, b, y) = ([255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]);
    let expected = [
        (1, [r, g, b, y]),
        (2, [g, r, y, b]),
        (3, [y, b, g, r]),
        (4, [b, y, r, g]),
        (5, [r, b, g, y]),
        (6, [b, r, y, g]), // 90 degrees clockwise: the left half ends up on top
        (7, [y, g, b, r]),
        (8, [g, y, r, b]),
    ];
    let quadrants = common::fixture("generated/quadrants.jpg");
    for (orientation, [tl, tr, bl, br]) in expected {
        let out = prepare_ok(&with_orientation(&quadrants, orientation), &ResizeSpec::center_crop(64));
        let what = format!("orientation {orientation}");
        assert_near(pixel(&out, 12, 12), tl, 40, &what);
        assert_near(pixel(&out, 52, 12), tr, 40, &what);
        assert_near(pixel(&out, 12, 52), bl, 40, &what);
        assert_near(pixel(&out, 52, 52), br, 40, &what);
    }
}

#[test]
fn png_exif_orientation_is_applied() {
    // Left half red, right half blue; orientation 6 puts the left half on top.
    let png = encode(halves(40, 40, [255, 0, 0], [0, 0, 255]), ImageFormat::Png);
    let tiff = &exif_app1(6)[10..]; // APP1 minus marker, length and "Exif\0\0"
    let after_ihdr = 8 + 25;
    let png = [&png[..after_ihdr], &png_chunk(b"eXIf", tiff), &png[after_ihdr..]].concat();
    let out = prepare_ok(&png, &ResizeSpec::center_crop(32));
    assert_near(pixel(&out, 16, 4), [255, 0, 0], 0, "top");
    assert_near(pixel(&out, 16, 28), [0, 0, 255], 0, "bottom");
}

#[test]
fn exif_rotation_swaps_a_non_square_output() {
    // dog.jpeg is landscape; with orientation 6 the upright picture is portrait.
    let rotated = with_orientation(&common::fixture("dog.jpeg"), 6);
    let squash = ResizeSpec { kind: ResizeKind::Squash, width: 30, height: 50, ..ResizeSpec::center_crop(1) };
    let out = prepare_ok(&rotated, &squash);
    let plain = prepare_ok(&common::fixture("dog.jpeg"), &ResizeSpec { width: 50, height: 30, ..squash });
    // Upright (x, y) of the rotated output is stored (y, 29 - x) of the plain
    // one, up to rounding: Pillow resamples the upright picture horizontally
    // first, which is the stored frame's vertical pass, so the two outputs
    // round in a different order.
    for (x, y) in [(0, 0), (29, 0), (7, 41), (29, 49)] {
        assert_near(pixel(&out, x, y), pixel(&plain, y, 29 - x), 2, &format!("at {x},{y}"));
    }
}

// ---------------------------------------------------------------- hostile

#[test]
fn empty_input_is_empty() {
    assert_eq!(prepare(b"", &ResizeSpec::center_crop(224), MAX_PIXELS), Err(ImageError::Empty));
}

#[test]
fn random_bytes_and_text_are_not_images() {
    let mut lcg = Lcg(7);
    let random: Vec<u8> = (0..4096).map(|_| lcg.next() as u8).collect();
    assert_eq!(sniff_format(&random), None);
    assert_eq!(prepare(&random, &ResizeSpec::center_crop(224), MAX_PIXELS), Err(ImageError::NotAnImage));
    let text = b"BM is how this text file starts, but it is not a bitmap.\n".repeat(20);
    assert_eq!(prepare(&text, &ResizeSpec::center_crop(224), MAX_PIXELS), Err(ImageError::NotAnImage));
}

#[test]
fn truncated_jpeg_is_corrupt() {
    let dog = common::fixture("dog.jpeg");
    for cut in [dog.len() / 2, dog.len() - 100, 300, 4] {
        let result = prepare(&dog[..cut], &ResizeSpec::center_crop(224), MAX_PIXELS);
        assert!(matches!(result, Err(ImageError::Corrupt(_))), "cut at {cut}: {result:?}");
    }
}

#[test]
fn truncated_png_is_corrupt() {
    let png = common::fixture("chelsea.png");
    let result = prepare(&png[..png.len() / 2], &ResizeSpec::center_crop(224), MAX_PIXELS);
    assert!(matches!(result, Err(ImageError::Corrupt(_))), "{result:?}");
}

#[test]
fn real_image_over_the_pixel_limit_is_too_large() {
    let result = prepare(&common::fixture("dog.jpeg"), &ResizeSpec::center_crop(224), 729 * 486 - 1);
    assert_eq!(result, Err(ImageError::TooLarge { width: 729, height: 486, max_pixels: 729 * 486 - 1 }));
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let length = u32::try_from(data.len()).expect("small chunk");
    let body = [kind.as_slice(), data].concat();
    [&length.to_be_bytes()[..], &body, &crc32(&body).to_be_bytes()].concat()
}

/// A PNG that declares `width x height` RGB8 and carries one tiny IDAT.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let ihdr = [&width.to_be_bytes()[..], &height.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    let idat = [0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]; // zlib of one 0 byte
    [b"\x89PNG\r\n\x1a\n".as_slice(), &png_chunk(b"IHDR", &ihdr), &png_chunk(b"IDAT", &idat), &png_chunk(b"IEND", &[])]
        .concat()
}

/// A JPEG that is only SOI and a baseline frame header for `width x height`.
fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut sof = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8];
    sof.extend_from_slice(&height.to_be_bytes());
    sof.extend_from_slice(&width.to_be_bytes());
    sof.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    sof
}

fn assert_quick_too_large(bytes: &[u8], width: u32, height: u32) {
    let started = Instant::now();
    let result = prepare(bytes, &ResizeSpec::center_crop(224), MAX_PIXELS);
    assert_eq!(result, Err(ImageError::TooLarge { width, height, max_pixels: MAX_PIXELS }));
    assert!(started.elapsed() < Duration::from_millis(200), "took {:?}", started.elapsed());
}

#[test]
fn png_bomb_is_rejected_from_its_header() {
    assert_quick_too_large(&png_declaring(100_000, 100_000), 100_000, 100_000);
}

#[test]
fn jpeg_bomb_is_rejected_from_its_header() {
    assert_quick_too_large(&jpeg_declaring(60_000, 60_000), 60_000, 60_000);
}

#[test]
fn gif_bomb_is_rejected_from_its_header() {
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0]); // 65535x65535, no palette
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    assert_quick_too_large(&gif, 65_535, 65_535);
}

#[test]
fn zero_sized_images_are_corrupt() {
    for bytes in [jpeg_declaring(0, 10), png_declaring(0, 10), png_declaring(10, 0)] {
        let result = prepare(&bytes, &ResizeSpec::center_crop(224), MAX_PIXELS);
        assert!(matches!(result, Err(ImageError::Corrupt(_))), "{result:?}");
    }
    // A JPEG height of 0 means "given later by a DNL marker", which the decoder
    // does not support: still an error, with that explanation.
    let result = prepare(&jpeg_declaring(10, 0), &ResizeSpec::center_crop(224), MAX_PIXELS);
    assert!(matches!(result, Err(ImageError::Unsupported(_))), "{result:?}");
}

#[test]
fn header_only_jpeg_is_corrupt() {
    let result = prepare(&jpeg_declaring(64, 64), &ResizeSpec::center_crop(224), MAX_PIXELS);
    assert!(matches!(result, Err(ImageError::Corrupt(_))), "{result:?}");
}

#[test]
fn error_messages_say_what_to_do() {
    let too_large = ImageError::TooLarge { width: 9, height: 9, max_pixels: 80 }.to_string();
    assert!(too_large.contains("9x9") && too_large.contains("downscale"), "{too_large}");
    assert!(ImageError::NotAnImage.to_string().contains("JPEG, PNG, GIF, WebP or BMP"));
}

/// Flips bytes in and truncates `original` at pseudo-random places; `prepare`
/// must return (anything) without panicking.
fn fuzz(original: &[u8], seed: u64, rounds: usize) {
    let mut lcg = Lcg(seed);
    let spec = ResizeSpec::center_crop(64);
    for round in 0..rounds {
        let mut bytes = original.to_vec();
        for _ in 0..1 + lcg.below(8) {
            let at = lcg.below(bytes.len());
            bytes[at] ^= 1 << lcg.below(8);
        }
        if round % 2 == 1 {
            bytes.truncate(1 + lcg.below(bytes.len()));
        }
        let _ = prepare(&bytes, &spec, MAX_PIXELS);
    }
}

#[test]
fn fuzzed_jpeg_never_panics() {
    fuzz(&common::fixture("dog.jpeg"), 1, 200);
}

#[test]
fn fuzzed_png_gif_webp_bmp_never_panic() {
    let small = halves(40, 30, [200, 30, 30], [30, 30, 200]);
    for (seed, format) in
        [ImageFormat::Png, ImageFormat::Gif, ImageFormat::WebP, ImageFormat::Bmp].into_iter().enumerate()
    {
        fuzz(&encode(small.clone(), format), seed as u64 + 10, 100);
    }
}
