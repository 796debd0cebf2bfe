//! Crop and resample with `fast_image_resize` (SIMD convolution modelled on
//! Pillow's, so bicubic here is Pillow's `BICUBIC`: Catmull-Rom with the
//! support widened by the downscale factor).
//!
//! Pillow's reference crops *then* resizes, so its filter never sees pixels
//! outside the crop. `fast_image_resize`'s own crop option lets the filter read
//! past the box, so the crop is done as a view first. When the JPEG was shrunk
//! in the DCT domain the box has fractional edges; the view is then the
//! enclosing whole-pixel box and the fractional remainder goes to the resizer,
//! which reads at most one extra pixel on each side.
//!
//! Each thread keeps one `Resizer`: it holds the image between the two
//! convolution passes, so a stream of photos resamples without allocating and
//! zeroing that buffer each time. A resample whose in-between image would be
//! larger than [`scratch::KEEP_AT_MOST`] uses a resizer of its own, so one
//! huge upload does not pin its memory on a thread.

use std::cell::RefCell;

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::pixels::{Channels, Pixels};
use super::{ImageError, scratch};
use crate::model::Interpolation;

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// A crop box in decoded-pixel units; may have fractional edges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CropBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

fn algorithm(interpolation: Interpolation) -> ResizeAlg {
    match interpolation {
        Interpolation::Nearest => ResizeAlg::Nearest,
        Interpolation::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Interpolation::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
        Interpolation::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
    }
}

fn pixel_type(channels: Channels) -> PixelType {
    match channels {
        Channels::Gray => PixelType::U8,
        Channels::Rgb => PixelType::U8x3,
    }
}

/// A resizer failure means the decoder handed back a buffer that does not
/// match its own header; report it as a bad file rather than panic.
fn resize_error(e: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(format!("decoded pixels are inconsistent with the header ({e})"))
}

/// Crops `src` to `crop` and resamples it to `out_width x out_height`.
pub(crate) fn crop_resize(
    src: &Pixels,
    crop: CropBox,
    out_width: u32,
    out_height: u32,
    interpolation: Interpolation,
) -> Result<Pixels, ImageError> {
    let pixel_type = pixel_type(src.channels);
    let whole = ImageRef::new(src.width, src.height, &src.data, pixel_type).map_err(resize_error)?;

    // Enclosing whole-pixel box, clamped to the image.
    let left = crop.left.floor().max(0.0) as u32;
    let top = crop.top.floor().max(0.0) as u32;
    let right = ((crop.left + crop.width).ceil() as u32).clamp(left + 1, src.width.max(left + 1));
    let bottom = ((crop.top + crop.height).ceil() as u32).clamp(top + 1, src.height.max(top + 1));
    let view = CroppedImage::new(&whole, left, top, right - left, bottom - top).map_err(resize_error)?;

    let inner_width = crop.width.min(f64::from(right - left));
    let inner_height = crop.height.min(f64::from(bottom - top));
    let options = ResizeOptions::new().resize_alg(algorithm(interpolation)).crop(
        crop.left - f64::from(left),
        crop.top - f64::from(top),
        inner_width,
        inner_height,
    );

    let mut dst = Image::new(out_width, out_height, pixel_type);
    // The in-between image is at most the view's width by the output's
    // height (vertical pass first, as `fast_image_resize` does for u8), or
    // the other way round.
    let between = (u64::from(right - left) * u64::from(out_height)).max(u64::from(out_width) * u64::from(bottom - top));
    let keep = between.saturating_mul(src.channels.count() as u64) <= scratch::KEEP_AT_MOST as u64;
    let resized = if keep {
        RESIZER.with_borrow_mut(|resizer| resizer.resize(&view, &mut dst, &options))
    } else {
        Resizer::new().resize(&view, &mut dst, &options)
    };
    resized.map_err(resize_error)?;
    Ok(Pixels { width: out_width, height: out_height, channels: src.channels, data: dst.into_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> Pixels {
        let data = (0..height).flat_map(|y| (0..width).map(move |x| (x * 10 + y) as u8)).collect();
        Pixels { width, height, channels: Channels::Gray, data }
    }

    #[test]
    fn same_size_whole_pixel_crop_is_an_exact_copy() {
        let src = gradient(8, 6);
        let crop = CropBox { left: 2.0, top: 1.0, width: 4.0, height: 3.0 };
        let out = crop_resize(&src, crop, 4, 3, Interpolation::Bicubic).unwrap();
        let expected: Vec<u8> = (1..4).flat_map(|y| (2..6).map(move |x| (x * 10 + y) as u8)).collect();
        assert_eq!(out.data, expected);
    }

    #[test]
    fn hard_crop_does_not_see_pixels_outside_the_box() {
        // A white image with a black border: cropping the white interior and
        // resizing must stay pure white (Pillow's crop-then-resize).
        let (w, h) = (10u32, 10u32);
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| if x == 0 || y == 0 || x == 9 || y == 9 { 0 } else { 255 }))
            .collect();
        let src = Pixels { width: w, height: h, channels: Channels::Gray, data };
        let crop = CropBox { left: 1.0, top: 1.0, width: 8.0, height: 8.0 };
        let out = crop_resize(&src, crop, 3, 3, Interpolation::Lanczos3).unwrap();
        assert!(out.data.iter().all(|&v| v == 255), "{:?}", out.data);
    }
}
