//! Decoding and resizing of untrusted image bytes into model-sized RGB8.
//!
//! This module owns everything between "bytes from a client" and "a
//! `height x width` RGB8 picture": format sniffing, hostile-input checks,
//! decoding, EXIF orientation, colour conversion, centre crop and resampling.
//! Normalisation into a tensor happens later, per batch.
//!
//! # Reference behaviour
//!
//! The output is meant to match `tools/reference_predict.py` (Pillow):
//! alpha composited on **white** (a transparent pixel becomes white, not the
//! colour hidden under it, nor black), EXIF orientation applied, centre square of
//! side `int(crop_fraction * min(w, h))` at `((w - side + 1) // 2, (h - side + 1) // 2)`,
//! then a resize with the spec's filter, computed as Pillow computes it
//! (`resample`), so a full-size decode gives Pillow's pixels byte for byte.
//!
//! # Hostile input
//!
//! Format comes from magic bytes ([`sniff_format`]), never from a filename.
//! Each decoder first reads only the header; an image of more than
//! `max_pixels` pixels is refused with [`ImageError::TooLarge`] before any pixel
//! buffer exists, so decompression bombs cost a few header bytes. Decoding then
//! runs under a memory budget (`image::Limits` for PNG/GIF/WebP/BMP; for JPEG
//! the output buffer is sized from the checked header, and progressive files
//! are limited in scans). [`decode_bytes`] tells a caller, from the header
//! alone, how much memory a decode will take. Our own code does not panic on any input;
//! the third-party decoders are additionally wrapped in `catch_unwind` as a
//! last-resort belt, because a panic in their internals (they contain asserts
//! and unwraps that fuzzers have reached in the past) must not take down a
//! worker. A caught panic is reported as [`ImageError::Corrupt`].
//!
//! # Speed
//!
//! JPEG is decoded by libjpeg-turbo, Pillow's own decoder. A JPEG much larger
//! than the crop is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (see
//! `geometry::Plan::dct_denominator` for the rule: the scaled crop must stay
//! at least twice the output on both axes, so the bicubic filter still does a
//! real reduction and the result stays within a fraction of a level of
//! Pillow's full-resolution path). The crop box is carried over with
//! fractional coordinates, so the geometry is unchanged. Only the box of the
//! scaled frame that covers the crop is decoded (`jpeg`: libjpeg-turbo skips
//! the rest), with pixels identical to a whole-frame decode. The crop is resized
//! in the stored orientation and only the small output is rotated; grayscale
//! is resized as one channel and widened at the end. Decoded pixels go into a
//! per-thread buffer that is reused from one image to the next (`scratch`).
//!
//! # Layout
//!
//! - `geometry`: crop box, orientation maps, DCT-scale rule (pure).
//! - `jpeg_header`: the JPEG marker walk (frame size, EXIF) before any decoding.
//! - `jpeg`: libjpeg-turbo (TurboJPEG's C API) with DCT-domain scaling and
//!   cropped decoding; CMYK/YCCK.
//! - `image_rs`: PNG, GIF, WebP, BMP through the `image` crate under limits.
//! - `pixels`: colour conversions (CMYK, alpha on white, 16-bit).
//! - `resize`: the crop as a view, then the resample.
//! - `resample`: Pillow's convolution resampling, bit for bit.
//! - `scratch`: the per-thread reusable pixel buffer.

mod geometry;
mod image_rs;
mod jpeg;
mod jpeg_header;
mod pixels;
mod resample;
mod resize;
mod scratch;

use std::panic::{AssertUnwindSafe, catch_unwind};

use image::metadata::Orientation;

use crate::model::ResizeSpec;
use geometry::Plan;
use image_rs::RasterSource;
use jpeg::JpegSource;
use pixels::{Channels, Pixels};
use resize::CropBox;

/// Why an upload could not be turned into model input. Every variant is the
/// client's fault (a 4xx), never the server's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("the file is empty; send the image's bytes as the request body or form field")]
    Empty,
    #[error(
        "the file is not a supported image (expected JPEG, PNG, GIF, WebP or BMP); \
         convert it to one of these formats"
    )]
    NotAnImage,
    #[error(
        "image is {width}x{height} pixels, over the limit of {max_pixels} pixels; \
         downscale it and retry"
    )]
    TooLarge { width: u32, height: u32, max_pixels: u64 },
    #[error(
        "image is {width}x{height} pixels in a file of only {bytes} bytes, more than a picture of that \
         size holds ({per_byte} pixels per byte at most, or any size up to {floor} pixels); re-encode it"
    )]
    TooDense { width: u32, height: u32, bytes: u64, per_byte: u64, floor: u64 },
    #[error(
        "decoding this image would need {needed_mib} MiB, more than the {budget_mib} MiB this server allows \
         for one image; downscale it or save it as an 8-bit JPEG or PNG"
    )]
    TooMuchMemory { needed_mib: u64, budget_mib: u64 },
    #[error("the image is corrupt or truncated ({0}); re-export the image or retry the upload")]
    Corrupt(String),
    #[error(
        "the image uses something this server cannot decode ({0}); \
         re-save it as a baseline JPEG or PNG"
    )]
    Unsupported(String),
}

/// An image brought to the model's input geometry: `height x width` RGB8,
/// row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Extensions an upload to `/predict` or the page may have: the original
/// service's four.
pub const UPLOAD_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "gif"];

/// Extensions of every format the decoder reads ([`Format`]); stored images
/// carry one of these.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "gif", "webp", "bmp"];

/// An image container format recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Gif,
    WebP,
    Bmp,
}

impl Format {
    /// The format's registered media type.
    pub fn mime_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Gif => "image/gif",
            Format::WebP => "image/webp",
            Format::Bmp => "image/bmp",
        }
    }
}

/// Recognises a supported format from the first bytes of a file.
pub fn sniff_format(bytes: &[u8]) -> Option<Format> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    // BMP's two-byte "BM" is also how plenty of text starts: require a known
    // DIB header size (BITMAPCOREHEADER .. BITMAPV5HEADER) as well.
    let bmp_dib_size = bytes.get(14..18).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some(Format::Jpeg),
        _ if bytes.starts_with(PNG) => Some(Format::Png),
        _ if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") => Some(Format::Gif),
        _ if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") => Some(Format::WebP),
        _ if bytes.starts_with(b"BM") && matches!(bmp_dib_size, Some(12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)) => {
            Some(Format::Bmp)
        }
        _ => None,
    }
}

/// Decodes `bytes`, applies EXIF orientation, and crops/resizes per `spec`.
pub fn prepare(bytes: &[u8], spec: &ResizeSpec, max_pixels: u64) -> Result<Prepared, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = sniff_format(bytes).ok_or(ImageError::NotAnImage)?;
    let source = shielded(|| Source::open(bytes, format, max_pixels))?;
    let Header { width, height, orientation } = source.header();
    check_size(width, height, max_pixels, bytes.len())?;

    let plan = Plan::new(width, height, orientation, spec);
    let decoded = shielded(|| source.decode(plan.dct_denominator(), plan.region))?;
    let prepared = finish(&decoded, &plan, spec);
    scratch::recycle(decoded.pixels.data);
    prepared
}

/// The checks [`prepare`] makes before it decodes anything (format, header,
/// pixel count, pixel density), and if they pass, the peak bytes decoding
/// `bytes` for `spec` needs: decoded pixels, the decoder's whole-image
/// buffers and conversion copies, not the input. Reads the header alone
/// (microseconds), so a request can be checked whole, and a decode bounded
/// by memory, before any decode starts.
pub fn inspect(bytes: &[u8], spec: &ResizeSpec, max_pixels: u64) -> Result<u64, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = sniff_format(bytes).ok_or(ImageError::NotAnImage)?;
    let source = shielded(|| Source::open(bytes, format, max_pixels))?;
    let Header { width, height, orientation } = source.header();
    check_size(width, height, max_pixels, bytes.len())?;
    Ok(source.decode_bytes(Plan::new(width, height, orientation, spec).dct_denominator()))
}

/// [`inspect`]'s byte count, or `None` where it refuses the file.
pub fn decode_bytes(bytes: &[u8], spec: &ResizeSpec, max_pixels: u64) -> Option<u64> {
    inspect(bytes, spec, max_pixels).ok()
}

/// Crops, resizes and orients a decoded image per `plan`.
fn finish(decoded: &Decoded, plan: &Plan, spec: &ResizeSpec) -> Result<Prepared, ImageError> {
    let scale = f64::from(decoded.denominator);
    let region = plan.region;
    let (origin_x, origin_y) = decoded.origin;
    let crop = CropBox {
        left: f64::from(region.left) / scale - f64::from(origin_x),
        top: f64::from(region.top) / scale - f64::from(origin_y),
        width: f64::from(region.width) / scale,
        height: f64::from(region.height) / scale,
    };
    let vertical_first = geometry::swaps_axes(plan.orientation);
    let resized = resize::crop_resize(
        &decoded.pixels,
        crop,
        plan.out_width,
        plan.out_height,
        spec.interpolation,
        vertical_first,
    )?;
    let Pixels { width, height, data, .. } = resized.into_rgb();
    let (rgb, width, height) = geometry::orient_pixels(data, width, height, Channels::Rgb.count(), plan.orientation);
    Ok(Prepared { width, height, rgb })
}

/// Refuses empty images, images over the pixel budget, and images that
/// declare more pixels than a file of `file_bytes` holds for a real picture
/// ([`crate::cost::allowed_pixels`]).
fn check_size(width: u32, height: u32, max_pixels: u64, file_bytes: usize) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!("the header declares a {width}x{height} image")));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ImageError::TooLarge { width, height, max_pixels });
    }
    if pixels > crate::cost::allowed_pixels(file_bytes, max_pixels) {
        return Err(ImageError::TooDense {
            width,
            height,
            bytes: file_bytes as u64,
            per_byte: crate::cost::MAX_PIXELS_PER_BYTE,
            floor: crate::cost::PIXEL_FLOOR,
        });
    }
    Ok(())
}

/// What a decoder learns from the header alone, in the stored frame.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Header {
    width: u32,
    height: u32,
    orientation: Orientation,
}

/// Decoded pixels, possibly reduced by `denominator` relative to the header,
/// and possibly only a box of the frame whose top-left corner is `origin` (in
/// the reduced frame's pixels).
struct Decoded {
    pixels: Pixels,
    denominator: u32,
    origin: (u32, u32),
}

/// A file whose header has been read by the decoder for its format.
enum Source<'a> {
    Jpeg(JpegSource<'a>),
    Raster(RasterSource<'a>),
}

impl<'a> Source<'a> {
    fn open(bytes: &'a [u8], format: Format, max_pixels: u64) -> Result<Self, ImageError> {
        Ok(match format {
            Format::Jpeg => Source::Jpeg(JpegSource::open(bytes)?),
            _ => Source::Raster(RasterSource::open(bytes, format, max_pixels)?),
        })
    }

    fn header(&self) -> Header {
        match self {
            Source::Jpeg(jpeg) => jpeg.header(),
            Source::Raster(raster) => raster.header(),
        }
    }

    /// Bytes [`Source::decode`] will need at `denominator`.
    fn decode_bytes(&self, denominator: u32) -> u64 {
        match self {
            Source::Jpeg(jpeg) => jpeg.decode_bytes(denominator),
            Source::Raster(raster) => raster.decode_bytes(),
        }
    }

    /// Decodes; only JPEG honours `denominator` and decodes just the part
    /// that covers `region` (others decode the whole frame at full size).
    fn decode(self, denominator: u32, region: geometry::Rect) -> Result<Decoded, ImageError> {
        match self {
            Source::Jpeg(jpeg) => jpeg.decode(denominator, Some(region)),
            Source::Raster(raster) => raster.decode(),
        }
    }
}

/// The error for data that ends early.
fn truncated() -> ImageError {
    ImageError::Corrupt("the file ends before the image data does".into())
}

/// Runs a third-party decoder call, turning a panic inside it into
/// [`ImageError::Corrupt`]. A last-resort belt (see the module docs), not the
/// way errors are handled: everything the closure touches is dropped on
/// unwind and only the read-only input is shared, so nothing half-updated is
/// observed afterwards (hence `AssertUnwindSafe`).
fn shielded<T>(decoder_call: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    catch_unwind(AssertUnwindSafe(decoder_call))
        .unwrap_or_else(|_| Err(ImageError::Corrupt("the decoder could not make sense of this file".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats_by_magic_bytes() {
        assert_eq!(sniff_format(b"\xFF\xD8\xFF\xE0rest"), Some(Format::Jpeg));
        assert_eq!(sniff_format(b"\x89PNG\r\n\x1a\n...."), Some(Format::Png));
        assert_eq!(sniff_format(b"GIF89a...."), Some(Format::Gif));
        assert_eq!(sniff_format(b"RIFF\0\0\0\0WEBPVP8 "), Some(Format::WebP));
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&[0; 12]);
        bmp.extend_from_slice(&40u32.to_le_bytes());
        assert_eq!(sniff_format(&bmp), Some(Format::Bmp));
        assert_eq!(sniff_format(b"BMW is a car brand, not a bitmap."), None);
        assert_eq!(sniff_format(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(sniff_format(b"\xFF\xD8"), None);
        assert_eq!(sniff_format(b""), None);
    }

    /// The model input from a whole-frame decode at the plan's scale, for
    /// comparison with [`prepare`]'s cropped decode.
    fn prepare_from_whole_frame(bytes: &[u8], spec: &ResizeSpec) -> Prepared {
        let source = JpegSource::open(bytes).unwrap();
        let Header { width, height, orientation } = source.header();
        let plan = Plan::new(width, height, orientation, spec);
        let decoded = source.decode(plan.dct_denominator(), None).unwrap();
        finish(&decoded, &plan, spec).unwrap()
    }

    /// A 643x481 picture with smooth gradients and fine detail, as a JPEG
    /// with `subsamp` chroma subsampling.
    fn synthetic_jpeg(subsamp: turbojpeg::Subsamp) -> Vec<u8> {
        let (w, h) = (643usize, 481usize);
        let pixels: Vec<u8> = (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| [(x * 255 / w) as u8, ((x ^ y) * 7) as u8, ((x * y / 97) % 256) as u8])
            })
            .collect();
        let image = turbojpeg::Image {
            pixels: pixels.as_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        turbojpeg::compress(image, 90, subsamp).unwrap().to_vec()
    }

    #[test]
    fn cropped_jpeg_decodes_give_exactly_the_whole_frame_result() {
        use turbojpeg::Subsamp;
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut jpegs: Vec<(String, Vec<u8>)> = [
            "dog.jpeg",
            "grace_hopper.jpg",
            "generated/gray.jpg",
            "generated/progressive.jpg",
            "generated/cmyk_adobe.jpg",
            "generated/large_3000x2000.jpg",
        ]
        .iter()
        .map(|name| (name.to_string(), std::fs::read(fixtures.join(name)).unwrap()))
        .collect();
        for subsamp in
            [Subsamp::None, Subsamp::Sub2x1, Subsamp::Sub2x2, Subsamp::Sub1x2, Subsamp::Sub4x1, Subsamp::Gray]
        {
            jpegs.push((format!("synthetic {subsamp:?}"), synthetic_jpeg(subsamp)));
        }
        for (name, bytes) in &jpegs {
            // Output sizes that make the rule pick each of 1/1, 1/2, 1/4 and 1/8 somewhere.
            for size in [224, 120, 60, 24] {
                let spec = ResizeSpec::center_crop(size);
                let cropped = prepare(bytes, &spec, 40_000_000).unwrap();
                assert_eq!(cropped, prepare_from_whole_frame(bytes, &spec), "{name} at {size}x{size}");
            }
        }

        // And the crop is real: the 3000x2000 photo's centre crop at full
        // scale decodes a box, not the frame.
        let (_, large) = &jpegs[5];
        let source = JpegSource::open(large).unwrap();
        let region = geometry::Rect { left: 500, top: 0, width: 2000, height: 2000 };
        let decoded = source.decode(1, Some(region)).unwrap();
        assert!(decoded.pixels.width < 3000 && decoded.pixels.width >= 2000, "{}", decoded.pixels.width);
        assert_eq!(decoded.origin.0 % 16, 0, "the left edge is aligned to the iMCU");
    }

    #[test]
    fn a_decode_never_shows_the_previous_photo() {
        // The per-thread pixel buffer is reused without zeroing, so every byte
        // of a decode must be the decoder's own: after a white photo has
        // filled the buffer, each photo decodes exactly as on a fresh thread.
        let (w, h) = (1400usize, 1000usize);
        let white = vec![255u8; w * h * 3];
        let image = turbojpeg::Image {
            pixels: white.as_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        let white = turbojpeg::compress(image, 90, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec();
        let spec = ResizeSpec::center_crop(224);
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in ["dog.jpeg", "generated/gray.jpg", "generated/progressive.jpg", "generated/cmyk_adobe.jpg"] {
            let bytes = std::fs::read(fixtures.join(name)).unwrap();
            let whole = |bytes: &[u8]| JpegSource::open(bytes).unwrap().decode(1, None).unwrap().pixels;
            let fresh = std::thread::scope(|s| s.spawn(|| whole(&bytes)).join().unwrap());
            let white_prepared = prepare(&white, &spec, 40_000_000).unwrap();
            assert!(white_prepared.rgb.iter().all(|&v| v >= 250), "the white photo decodes white");
            assert_eq!(whole(&bytes), fresh, "{name}");
        }
    }

    #[test]
    fn size_check_rejects_zero_oversized_and_too_dense() {
        assert!(matches!(check_size(0, 10, 100, 1000), Err(ImageError::Corrupt(_))));
        assert_eq!(check_size(11, 10, 100, 1000), Err(ImageError::TooLarge { width: 11, height: 10, max_pixels: 100 }));
        assert_eq!(check_size(10, 10, 100, 1000), Ok(()));
        assert_eq!(check_size(u32::MAX, u32::MAX, u64::MAX, usize::MAX), Ok(()));
        // Up to the floor any file may declare any size; past it, pixels
        // must come with bytes.
        assert_eq!(check_size(1024, 1024, u64::MAX, 35), Ok(()));
        assert!(matches!(check_size(6320, 6320, 40_000_000, 35), Err(ImageError::TooDense { .. })));
        let photo_bytes = (4032 * 3024 / crate::cost::MAX_PIXELS_PER_BYTE) as usize;
        assert_eq!(check_size(4032, 3024, 40_000_000, photo_bytes), Ok(()));
    }
}
