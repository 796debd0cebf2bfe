//! Pure geometry of preprocessing: which source pixels to crop, how EXIF
//! orientation maps between the stored frame and the upright picture, and how
//! far a JPEG may be shrunk in the DCT domain.
//!
//! Everything is planned in the *stored* (raw, un-rotated) frame of the
//! decoded pixels: the crop box is chosen on the upright picture (that is what
//! the reference pipeline, Pillow's `exif_transpose` then `crop`, does) and
//! mapped back, the crop is resized to the output size *transposed if the
//! orientation swaps axes*, and only the small output is rotated. Rotating a
//! 224x224 output instead of a multi-megapixel input saves a full-image copy;
//! resampling commutes with flips and transposes (the filters are symmetric), so
//! the result is the same up to rounding.

use image::metadata::Orientation;

use crate::model::{ResizeKind, ResizeSpec};

/// How many decoded pixels per output pixel (per axis) DCT-domain scaling must
/// leave; see [`Plan::dct_denominator`].
pub(crate) const DCT_MIN_OVERSAMPLING: u32 = 2;

/// An axis-aligned box of whole pixels; never empty when built by this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

/// What to do with a decoded image of a known stored size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// Transform from the stored frame to the upright picture.
    pub orientation: Orientation,
    /// Source pixels to keep, in the stored frame at full resolution.
    pub region: Rect,
    /// Output size in the stored frame (the spec's size, transposed when the
    /// orientation swaps axes).
    pub out_width: u32,
    pub out_height: u32,
}

impl Plan {
    /// Plans the crop and output size for a stored `width x height` image.
    /// `width` and `height` must be non-zero (the caller rejects empty images).
    pub fn new(width: u32, height: u32, orientation: Orientation, spec: &ResizeSpec) -> Plan {
        let (up_w, up_h) = upright_size(width, height, orientation);
        let upright_region = match spec.kind {
            ResizeKind::CenterCrop => center_crop(up_w, up_h, spec.crop_fraction),
            ResizeKind::Squash => Rect { left: 0, top: 0, width: up_w, height: up_h },
        };
        let region = upright_rect_to_stored(upright_region, width, height, orientation);
        let (out_width, out_height) =
            if swaps_axes(orientation) { (spec.height, spec.width) } else { (spec.width, spec.height) };
        Plan { orientation, region, out_width, out_height }
    }

    /// The largest JPEG DCT-domain reduction (1, 2, 4 or 8) to decode at.
    ///
    /// Rule: the cropped region, scaled by `1/d`, must still be at least
    /// [`DCT_MIN_OVERSAMPLING`] times the output on both axes, so the bicubic
    /// filter still performs a real (>= 2:1) reduction afterwards. Pillow's
    /// `draft` rule is the same with a factor of 1; it was measured and
    /// rejected. The DCT scaler works block by block (an 8x8 block becomes 4x4,
    /// 2x2 or 1x1 with no filtering across block edges), and against Pillow's
    /// full-size decode + crop + BICUBIC (`tools/phone_photos.py`, libjpeg-turbo
    /// scaled IDCT in both): at factor 1, grace_hopper.jpg (crop 448 -> 224 at
    /// 1/2, no resampling left) is 1.52 levels off on average (max 43), and 12 MP
    /// phone photos (1/8) 0.55; at factor 2 they are 0.02 and 0.22 (1/4 for the
    /// phone photos). On 40 more phone photos (`tools/phone_photos.py measure
    /// --factors 1,1.25,1.5,2`) factors 1 and 1.25 (both 1/8) agreed on 39/40
    /// and were one photo less accurate than the reference; 1.5 and 2 (1/4)
    /// agreed on 40/40. On 400 distinct photos of 400-1280 px, top-1 agreement
    /// was 98.5%, 98.8%, 99.2% and 99.2% for factors 1, 1.25, 1.5 and 2; on all
    /// 2000 of them, Lens built with factor 1.5 agreed on 99.05% against 99.20%
    /// for 9% fewer prepare instructions. docs/models.md ("Decoding") has the
    /// table.
    pub fn dct_denominator(&self) -> u32 {
        [8, 4, 2]
            .into_iter()
            .find(|&d| {
                let min = |out: u32| out.saturating_mul(DCT_MIN_OVERSAMPLING);
                self.region.width / d >= min(self.out_width) && self.region.height / d >= min(self.out_height)
            })
            .unwrap_or(1)
    }
}

/// Whether `orientation` swaps width and height (EXIF values 5 to 8).
pub(crate) fn swaps_axes(orientation: Orientation) -> bool {
    use Orientation::*;
    matches!(orientation, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
}

/// Size of the upright picture for a stored `width x height` frame.
pub(crate) fn upright_size(width: u32, height: u32, orientation: Orientation) -> (u32, u32) {
    if swaps_axes(orientation) { (height, width) } else { (width, height) }
}

/// The reference centre crop: a square of side `int(fraction * min(w, h))`,
/// placed at `((w - side + 1) // 2, (h - side + 1) // 2)`, as the model's
/// training crop (timm and torchvision's `CenterCrop`) places it: an odd
/// margin puts the extra pixel before the crop, not after.
pub(crate) fn center_crop(width: u32, height: u32, fraction: f32) -> Rect {
    let short = width.min(height);
    // `fraction` was written in decimal in model.toml and Python reads that
    // decimal as an f64; recover the same f64 (not the f32's exact binary
    // value) so the floor agrees with Python's `int(fraction * min(w, h))`.
    let fraction = fraction.to_string().parse::<f64>().unwrap_or(f64::from(fraction));
    let side = (fraction * f64::from(short)).floor();
    // Saturating float->int cast, then clamp into 1..=short.
    let side = (side as u32).clamp(1, short.max(1));
    Rect { left: (width - side).div_ceil(2), top: (height - side).div_ceil(2), width: side, height: side }
}

/// Maps a pixel of the stored `width x height` frame to the upright picture.
pub(crate) fn stored_to_upright(x: u32, y: u32, width: u32, height: u32, orientation: Orientation) -> (u32, u32) {
    use Orientation::*;
    let (right, bottom) = (width - 1 - x, height - 1 - y);
    match orientation {
        NoTransforms => (x, y),
        FlipHorizontal => (right, y),
        Rotate180 => (right, bottom),
        FlipVertical => (x, bottom),
        Rotate90FlipH => (y, x),
        Rotate90 => (bottom, x),
        Rotate270FlipH => (bottom, right),
        Rotate270 => (y, right),
    }
}

/// Maps a pixel of the upright picture back to the stored `width x height`
/// frame: the inverse of [`stored_to_upright`].
pub(crate) fn upright_to_stored(x: u32, y: u32, width: u32, height: u32, orientation: Orientation) -> (u32, u32) {
    use Orientation::*;
    match orientation {
        NoTransforms => (x, y),
        FlipHorizontal => (width - 1 - x, y),
        Rotate180 => (width - 1 - x, height - 1 - y),
        FlipVertical => (x, height - 1 - y),
        Rotate90FlipH => (y, x),
        Rotate90 => (y, height - 1 - x),
        Rotate270FlipH => (width - 1 - y, height - 1 - x),
        Rotate270 => (width - 1 - y, x),
    }
}

/// Maps a non-empty box of the upright picture to the stored frame.
pub(crate) fn upright_rect_to_stored(rect: Rect, width: u32, height: u32, orientation: Orientation) -> Rect {
    let corner_a = upright_to_stored(rect.left, rect.top, width, height, orientation);
    let corner_b =
        upright_to_stored(rect.left + rect.width - 1, rect.top + rect.height - 1, width, height, orientation);
    let (left, right) = (corner_a.0.min(corner_b.0), corner_a.0.max(corner_b.0));
    let (top, bottom) = (corner_a.1.min(corner_b.1), corner_a.1.max(corner_b.1));
    Rect { left, top, width: right - left + 1, height: bottom - top + 1 }
}

/// Rotates/flips a packed `width x height` image with `channels` bytes per
/// pixel from the stored frame to the upright picture. Returns the new pixels
/// and size; `NoTransforms` returns the input untouched.
pub(crate) fn orient_pixels(
    pixels: Vec<u8>,
    width: u32,
    height: u32,
    channels: usize,
    orientation: Orientation,
) -> (Vec<u8>, u32, u32) {
    if orientation == Orientation::NoTransforms || width == 0 || height == 0 {
        return (pixels, width, height);
    }
    let (up_w, up_h) = upright_size(width, height, orientation);
    // Sized from the dimensions, so every target index below is in bounds.
    let mut out = vec![0u8; up_w as usize * up_h as usize * channels];
    for (y, row) in (0..height).zip(pixels.chunks_exact(width as usize * channels)) {
        for (x, pixel) in (0..width).zip(row.chunks_exact(channels)) {
            let (ux, uy) = stored_to_upright(x, y, width, height, orientation);
            let at = (uy as usize * up_w as usize + ux as usize) * channels;
            out[at..at + channels].copy_from_slice(pixel);
        }
    }
    (out, up_w, up_h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Interpolation;
    use Orientation::*;

    const ALL: [Orientation; 8] =
        [NoTransforms, FlipHorizontal, Rotate180, FlipVertical, Rotate90FlipH, Rotate90, Rotate270FlipH, Rotate270];

    fn spec(kind: ResizeKind, width: u32, height: u32) -> ResizeSpec {
        ResizeSpec { width, height, kind, crop_fraction: 0.875, interpolation: Interpolation::Bicubic }
    }

    #[test]
    fn center_crop_matches_python_int_and_the_training_offset() {
        // int(0.875 * 486) = 425; (729 - 425 + 1) // 2 = 152; (486 - 425 + 1) // 2 = 31
        assert_eq!(center_crop(729, 486, 0.875), Rect { left: 152, top: 31, width: 425, height: 425 });
        // int(0.875 * 512) = 448; (600 - 448) // 2 = 76
        assert_eq!(center_crop(512, 600, 0.875), Rect { left: 32, top: 76, width: 448, height: 448 });
        // 224/256 of 256 is exactly 224.
        assert_eq!(center_crop(256, 256, 0.875).width, 224);
        // Python: int(0.9 * 480) == 432 (the f32 0.9 times 480 is 431.99998...).
        assert_eq!(center_crop(480, 640, 0.9).width, 432);
        assert_eq!(center_crop(1, 1, 0.875), Rect { left: 0, top: 0, width: 1, height: 1 });
        assert_eq!(center_crop(7, 3, 1.0), Rect { left: 2, top: 0, width: 3, height: 3 });
    }

    #[test]
    fn upright_and_stored_maps_are_inverse_bijections() {
        let (w, h) = (5, 3);
        for o in ALL {
            let (uw, uh) = upright_size(w, h, o);
            let mut seen = vec![false; (w * h) as usize];
            for y in 0..h {
                for x in 0..w {
                    let (ux, uy) = stored_to_upright(x, y, w, h, o);
                    assert!(ux < uw && uy < uh, "{o:?}");
                    assert!(!std::mem::replace(&mut seen[(uy * uw + ux) as usize], true));
                    assert_eq!(upright_to_stored(ux, uy, w, h, o), (x, y), "{o:?}");
                }
            }
        }
    }

    /// A 3x2 image with pixel values 1..=6:
    /// ```text
    /// 1 2 3
    /// 4 5 6
    /// ```
    #[test]
    fn orient_pixels_applies_each_exif_orientation() {
        let stored = vec![1, 2, 3, 4, 5, 6];
        let expected: [(Orientation, u32, &[u8]); 8] = [
            (NoTransforms, 3, &[1, 2, 3, 4, 5, 6]),
            (FlipHorizontal, 3, &[3, 2, 1, 6, 5, 4]),
            (Rotate180, 3, &[6, 5, 4, 3, 2, 1]),
            (FlipVertical, 3, &[4, 5, 6, 1, 2, 3]),
            (Rotate90FlipH, 2, &[1, 4, 2, 5, 3, 6]),  // EXIF 5: transpose
            (Rotate90, 2, &[4, 1, 5, 2, 6, 3]),       // EXIF 6: 90 degrees clockwise
            (Rotate270FlipH, 2, &[6, 3, 5, 2, 4, 1]), // EXIF 7: transverse
            (Rotate270, 2, &[3, 6, 2, 5, 1, 4]),      // EXIF 8: 90 degrees counter-clockwise
        ];
        for (o, width, pixels) in expected {
            let (out, w, h) = orient_pixels(stored.clone(), 3, 2, 1, o);
            assert_eq!((out.as_slice(), w, h), (pixels, width, 6 / width), "{o:?}");
        }
    }

    #[test]
    fn orient_pixels_moves_whole_multichannel_pixels() {
        let stored = vec![1, 10, 2, 20];
        let (out, w, h) = orient_pixels(stored, 2, 1, 2, Rotate90);
        assert_eq!((out, w, h), (vec![1, 10, 2, 20], 1, 2));
    }

    #[test]
    fn cropping_upright_equals_orienting_a_stored_crop() {
        let (w, h) = (7, 4);
        let stored: Vec<u8> = (0..w * h).map(|v| v as u8).collect();
        for o in ALL {
            let (upright, uw, _) = orient_pixels(stored.clone(), w, h, 1, o);
            let r = Rect { left: 1, top: 1, width: 2, height: 3 };
            let stored_r = upright_rect_to_stored(r, w, h, o);
            let stored_crop = crop(&stored, w, stored_r);
            let (oriented_crop, cw, _) = orient_pixels(stored_crop, stored_r.width, stored_r.height, 1, o);
            assert_eq!(cw, r.width, "{o:?}");
            assert_eq!(oriented_crop, crop(&upright, uw, r), "{o:?}");
        }
    }

    fn crop(pixels: &[u8], width: u32, r: Rect) -> Vec<u8> {
        (r.top..r.top + r.height)
            .flat_map(|y| (r.left..r.left + r.width).map(move |x| pixels[(y * width + x) as usize]))
            .collect()
    }

    #[test]
    fn plan_transposes_output_and_crop_for_rotated_images() {
        let plan = Plan::new(600, 512, Rotate90, &spec(ResizeKind::CenterCrop, 224, 100));
        // Upright 512x600: crop (32, 76) side 448 -> stored x from 76, y from 512-1-(32+447).
        assert_eq!(plan.region, Rect { left: 76, top: 32, width: 448, height: 448 });
        assert_eq!((plan.out_width, plan.out_height), (100, 224));
        let squash = Plan::new(600, 512, Rotate90, &spec(ResizeKind::Squash, 10, 20));
        assert_eq!(squash.region, Rect { left: 0, top: 0, width: 600, height: 512 });
    }

    #[test]
    fn dct_denominator_keeps_twice_the_output_size() {
        let s = spec(ResizeKind::CenterCrop, 224, 224);
        // grace_hopper 512x600: crop 448 would be 224 at 1/2, only 1x the output.
        assert_eq!(Plan::new(512, 600, NoTransforms, &s).dct_denominator(), 1);
        // 3000x2000: crop 1750 -> 875 at 1/2, 437 (< 448) at 1/4.
        assert_eq!(Plan::new(3000, 2000, NoTransforms, &s).dct_denominator(), 2);
        assert_eq!(Plan::new(4000, 4000, NoTransforms, &s).dct_denominator(), 4);
        assert_eq!(Plan::new(8000, 8000, NoTransforms, &s).dct_denominator(), 8);
        // A 12 MP phone photo, stored sideways: crop 2646 -> 661 at 1/4, 330 (< 448) at 1/8.
        assert_eq!(Plan::new(4032, 3024, Rotate90, &s).dct_denominator(), 4);
        assert_eq!(Plan::new(3024, 4032, NoTransforms, &s).dct_denominator(), 4);
        // Just at and just under the limit: 1792 / 4 = 448 keeps 1/4, 1791 does not.
        assert_eq!(Plan::new(2048, 2048, NoTransforms, &spec(ResizeKind::CenterCrop, 224, 224)).dct_denominator(), 4);
        let exact = ResizeSpec { crop_fraction: 1.0, ..s };
        assert_eq!(Plan::new(1792, 1792, NoTransforms, &exact).dct_denominator(), 4);
        assert_eq!(Plan::new(1791, 1791, NoTransforms, &exact).dct_denominator(), 2);
        // Both axes count: a squash of a wide strip is limited by its height.
        let squash = spec(ResizeKind::Squash, 224, 224);
        assert_eq!(Plan::new(8000, 900, NoTransforms, &squash).dct_denominator(), 2);
    }
}
