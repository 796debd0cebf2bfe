//! Crop, then resample as Pillow does ([`resample`]); nearest-neighbour
//! goes to `fast_image_resize`.
//!
//! Pillow's reference crops *then* resizes, so its filter never sees pixels
//! outside the crop: the crop is a view of whole pixels. When the JPEG was
//! shrunk in the DCT domain the box has fractional edges; the view is then
//! the enclosing whole-pixel box and the fractional remainder is the box the
//! resampler reads inside it (Pillow's `box`), at most one extra pixel on
//! each side.

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::ImageError;
use super::pixels::{Channels, Pixels};
use super::resample::{self, Filter, Source};
use crate::model::Interpolation;

/// A crop box in decoded-pixel units; may have fractional edges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CropBox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
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
/// `vertical_first` is for a stored frame whose axes the EXIF orientation
/// swaps: the picture's horizontal pass is then the frame's vertical one.
pub(crate) fn crop_resize(
    src: &Pixels,
    crop: CropBox,
    out_width: u32,
    out_height: u32,
    interpolation: Interpolation,
    vertical_first: bool,
) -> Result<Pixels, ImageError> {
    if src.data.len() != src.width as usize * src.height as usize * src.channels.count() {
        return Err(resize_error(format!("{} bytes for {}x{}", src.data.len(), src.width, src.height)));
    }
    // Enclosing whole-pixel box, clamped to the image.
    let left = crop.left.floor().max(0.0) as u32;
    let top = crop.top.floor().max(0.0) as u32;
    let right = ((crop.left + crop.width).ceil() as u32).clamp(left + 1, src.width.max(left + 1));
    let bottom = ((crop.top + crop.height).ceil() as u32).clamp(top + 1, src.height.max(top + 1));
    if right > src.width || bottom > src.height {
        return Err(resize_error(format!("crop outside the {}x{} image", src.width, src.height)));
    }
    let inner_width = crop.width.min(f64::from(right - left));
    let inner_height = crop.height.min(f64::from(bottom - top));
    let (x0, y0) = (crop.left - f64::from(left), crop.top - f64::from(top));
    let source = Source {
        pixels: src,
        left,
        top,
        width: right - left,
        height: bottom - top,
        inner: [x0 as f32, y0 as f32, (x0 + inner_width) as f32, (y0 + inner_height) as f32],
    };
    let filter = match interpolation {
        Interpolation::Nearest => return nearest(&source, out_width, out_height),
        Interpolation::Bilinear => Filter::Bilinear,
        Interpolation::Bicubic => Filter::Bicubic,
        Interpolation::Lanczos3 => Filter::Lanczos3,
    };
    Ok(resample::resample(&source, out_width, out_height, filter, vertical_first))
}

/// Nearest-neighbour resampling of `source`'s box with `fast_image_resize`.
fn nearest(source: &Source, out_width: u32, out_height: u32) -> Result<Pixels, ImageError> {
    let src = source.pixels;
    let pixel_type = pixel_type(src.channels);
    let whole = ImageRef::new(src.width, src.height, &src.data, pixel_type).map_err(resize_error)?;
    let view = CroppedImage::new(&whole, source.left, source.top, source.width, source.height).map_err(resize_error)?;
    let [x0, y0, x1, y1] = source.inner.map(f64::from);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Nearest).crop(x0, y0, x1 - x0, y1 - y0);
    let mut dst = Image::new(out_width, out_height, pixel_type);
    Resizer::new().resize(&view, &mut dst, &options).map_err(resize_error)?;
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
    fn same_size_whole_pixel_crop_is_an_exact_copy_and_nearest_picks_whole_pixels() {
        let src = gradient(8, 6);
        let crop = CropBox { left: 2.0, top: 1.0, width: 4.0, height: 3.0 };
        let expected: Vec<u8> = (1..4).flat_map(|y| (2..6).map(move |x| (x * 10 + y) as u8)).collect();
        for interpolation in [Interpolation::Bicubic, Interpolation::Nearest] {
            let out = crop_resize(&src, crop, 4, 3, interpolation, false).unwrap();
            assert_eq!(out.data, expected, "{interpolation:?}");
        }
        let half = crop_resize(&src, crop, 2, 1, Interpolation::Nearest, false).unwrap();
        assert!(half.data.iter().all(|v| expected.contains(v)), "{:?}", half.data);
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
        let out = crop_resize(&src, crop, 3, 3, Interpolation::Lanczos3, false).unwrap();
        assert!(out.data.iter().all(|&v| v == 255), "{:?}", out.data);
    }
}
