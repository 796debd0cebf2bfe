//! Pillow's convolution resampling (`Image.resize` with `BILINEAR`,
//! `BICUBIC` or `LANCZOS`), computed the way Pillow computes it, so that the
//! model sees the pixels of the reference pipeline it was trained and checked
//! with, not pixels that differ by a level here and there.
//!
//! What "the way Pillow computes it" means (`libImaging/Resample.c`):
//! - one filter per axis, widened by the downscale factor; each output
//!   pixel's taps and weights are found in f64 from its centre
//!   `in0 + (x + 0.5) * scale`, normalised to sum 1, then rounded to 22-bit
//!   fixed point;
//! - two passes, horizontal first, each accumulating in i32 from a rounding
//!   bias and clipping to 0..=255, so the in-between image is 8-bit: the
//!   order matters, because a sharp edge overshoots and is clipped in the
//!   first pass;
//! - only the rows the vertical pass reads are resampled horizontally, and a
//!   pass whose axis keeps its size and box is skipped.
//!
//! A general-purpose resizer (`fast_image_resize`, which Lens used before)
//! approximates the same filter with 16-bit weights and the other pass order:
//! on 2604 real photos its output was 0.2 levels off on average (up to 11 at
//! edges), and that alone flipped the top-1 of 2.0% of them. This module
//! matches Pillow exactly (unit tests against Pillow's own output in
//! `tests/fixtures/generated`).
//!
//! Lens resamples in the JPEG's stored frame and rotates the small output
//! afterwards; when the EXIF orientation swaps the axes, the stored frame's
//! vertical pass is the picture's horizontal one, so it goes first.

use std::cell::RefCell;

use super::pixels::Pixels;
use super::scratch;

/// Fixed-point bits of a weight: 8 bits of result and 2 of headroom for
/// filters with negative lobes in an i32 (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

thread_local! {
    /// The in-between image of the two passes, kept per thread like the
    /// decode buffer (`scratch`), so a stream of photos does not allocate it.
    static BETWEEN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A resampling filter: Pillow's kernel and its support at scale 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    Bilinear,
    Bicubic,
    Lanczos3,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos3 => 3.0,
        }
    }

    /// The kernel, written as Pillow writes it so that the f64 operations
    /// (and so the weights' last bits) are the same.
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos3 => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// One axis's taps: for each output pixel, the first input pixel and the
/// number of them it reads, and `ksize` fixed-point weights (zero past
/// the count).
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

impl Taps {
    /// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for an axis
    /// of `in_size` pixels whose box `in0..in1` becomes `out_size` pixels.
    /// `in0` and `in1` are f32, as Pillow's box is.
    fn new(in_size: usize, in0: f32, in1: f32, out_size: usize, filter: Filter) -> Taps {
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut taps =
            Taps { ksize, first: vec![0; out_size], count: vec![0; out_size], weights: vec![0; out_size * ksize] };
        let mut k = vec![0f64; ksize];
        let ss = 1.0 / filter_scale;
        for x in 0..out_size {
            let center = f64::from(in0) + (x as f64 + 0.5) * scale;
            // C's int conversion truncates toward zero, as `as` does.
            let min = ((center - support + 0.5) as i64).max(0);
            let max = ((center + support + 0.5) as i64).min(in_size as i64);
            let count = (max - min).clamp(0, ksize as i64) as usize;
            let mut total = 0.0;
            for (i, w) in k.iter_mut().enumerate().take(count) {
                *w = filter.weight(((i as i64 + min) as f64 - center + 0.5) * ss);
                total += *w;
            }
            let row = &mut taps.weights[x * ksize..][..ksize];
            for (fixed, &w) in row.iter_mut().zip(&k[..count]) {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *fixed = if w < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
            }
            taps.first[x] = min as usize;
            taps.count[x] = count;
        }
        taps
    }

    /// Whether this axis can be skipped: same size, box the whole axis.
    fn is_identity(in_size: usize, in0: f32, in1: f32, out_size: usize) -> bool {
        out_size == in_size && in0 == 0.0 && in1 == out_size as f32
    }

    /// First input pixel read by any output, and one past the last.
    fn span(&self) -> (usize, usize) {
        let last = self.first.len() - 1;
        (self.first[0], self.first[last] + self.count[last])
    }

    fn weights(&self, x: usize) -> &[i32] {
        &self.weights[x * self.ksize..][..self.count[x]]
    }
}

fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A packed image borrowed as rows of `width * C` bytes, `stride` apart.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [u8],
    stride: usize,
    width: usize,
    height: usize,
}

impl View<'_> {
    fn row(&self, y: usize, channels: usize) -> &[u8] {
        &self.data[y * self.stride..][..self.width * channels]
    }
}

/// The horizontal pass over rows `rows` of `src`, into `out`
/// (`taps.first.len()` pixels wide, one row per source row; sized so).
fn horizontal<const C: usize>(src: View, rows: std::ops::Range<usize>, taps: &Taps, out: &mut [u8]) {
    let out_width = taps.first.len();
    for (y, out_row) in rows.zip(out.chunks_exact_mut(out_width * C)) {
        let row = src.row(y, C);
        for (x, pixel) in out_row.chunks_exact_mut(C).enumerate() {
            let input = &row[taps.first[x] * C..];
            let mut sum = [HALF; C];
            for (source, &w) in input.chunks_exact(C).zip(taps.weights(x)) {
                for c in 0..C {
                    sum[c] = sum[c].wrapping_add(i32::from(source[c]).wrapping_mul(w));
                }
            }
            for c in 0..C {
                pixel[c] = clip8(sum[c]);
            }
        }
    }
}

/// The vertical pass (vectorised as it is: each row is a run of lanes):
/// `out` gets `taps.first.len()` rows of `src`'s width,
/// row `y` read from `src` rows `taps.first[y] - offset ..`.
#[inline(always)]
fn vertical(src: View, channels: usize, taps: &Taps, offset: usize, out: &mut [u8]) {
    let row_len = src.width * channels;
    let mut sums = vec![0i32; row_len];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        sums.fill(HALF);
        for (i, &w) in taps.weights(y).iter().enumerate() {
            let row = src.row(taps.first[y] - offset + i, channels);
            for (sum, &v) in sums.iter_mut().zip(row) {
                *sum = sum.wrapping_add(i32::from(v).wrapping_mul(w));
            }
        }
        for (o, &sum) in out_row.iter_mut().zip(&sums) {
            *o = clip8(sum);
        }
    }
}

/// A crop of a decoded image, in whole pixels, with the box to resample
/// inside it (fractional when the JPEG was shrunk in the DCT domain).
pub(crate) struct Source<'a> {
    pub pixels: &'a Pixels,
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
    /// The box inside the crop: `(x0, y0, x1, y1)`, as Pillow's `box`.
    pub inner: [f32; 4],
}

/// Resamples `source`'s box to `out_width x out_height` with `filter`.
/// `vertical_first` runs the vertical pass first (for a stored frame whose
/// axes the EXIF orientation swaps). Sizes must be non-zero and the crop
/// inside the image (the caller's plan guarantees both).
pub(crate) fn resample(
    source: &Source,
    out_width: u32,
    out_height: u32,
    filter: Filter,
    vertical_first: bool,
) -> Pixels {
    let src = source.pixels;
    let channels = src.channels.count();
    let stride = src.width as usize * channels;
    let start = source.top as usize * stride + source.left as usize * channels;
    let view = View { data: &src.data[start..], stride, width: source.width as usize, height: source.height as usize };
    let [x0, y0, x1, y1] = source.inner;
    let (out_w, out_h) = (out_width as usize, out_height as usize);
    let same_x = Taps::is_identity(view.width, x0, x1, out_w);
    let same_y = Taps::is_identity(view.height, y0, y1, out_h);
    let mut out = vec![0u8; out_w * out_h * channels];

    BETWEEN.with_borrow_mut(|between| {
        match (same_x, same_y) {
            (true, true) => {
                for (y, out_row) in out.chunks_exact_mut(out_w * channels).enumerate() {
                    out_row.copy_from_slice(view.row(y, channels));
                }
            }
            (false, true) => {
                let taps = Taps::new(view.width, x0, x1, out_w, filter);
                horizontal_any(view, channels, 0..out_h, &taps, &mut out);
            }
            (true, false) => {
                let taps = Taps::new(view.height, y0, y1, out_h, filter);
                vertical_best(view, channels, &taps, 0, &mut out);
            }
            (false, false) if !vertical_first => {
                let across = Taps::new(view.width, x0, x1, out_w, filter);
                let down = Taps::new(view.height, y0, y1, out_h, filter);
                let (first, last) = down.span();
                let between = sized(between, out_w * channels * (last - first));
                horizontal_any(view, channels, first..last, &across, between);
                let rows = View { data: between, stride: out_w * channels, width: out_w, height: last - first };
                vertical_best(rows, channels, &down, first, &mut out);
            }
            (false, false) => {
                // Vertical first, over only the columns the horizontal pass reads.
                let across = Taps::new(view.width, x0, x1, out_w, filter);
                let down = Taps::new(view.height, y0, y1, out_h, filter);
                let (first, last) = across.span();
                let columns = View { data: &view.data[first * channels..], width: last - first, ..view };
                let between = sized(between, (last - first) * channels * out_h);
                vertical_best(columns, channels, &down, 0, between);
                let shifted = Taps { first: across.first.iter().map(|x| x - first).collect(), ..across };
                let rows =
                    View { data: between, stride: (last - first) * channels, width: last - first, height: out_h };
                horizontal_any(rows, channels, 0..out_h, &shifted, &mut out);
            }
        }
        if between.capacity() > scratch::KEEP_AT_MOST {
            *between = Vec::new();
        }
    });
    Pixels { width: out_width, height: out_height, channels: src.channels, data: out }
}

/// The first `len` bytes of `buffer`, grown (once per thread, not per
/// photo) when it is shorter: both passes write every byte they are given.
fn sized(buffer: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    &mut buffer[..len]
}

/// [`horizontal`] for any channel count; RGB takes [`horizontal_rgb`].
fn horizontal_any(src: View, channels: usize, rows: std::ops::Range<usize>, taps: &Taps, out: &mut [u8]) {
    match channels {
        1 => horizontal::<1>(src, rows, taps, out),
        _ => horizontal_rgb_best(src, rows, taps, out),
    }
}

/// How [`horizontal_rgb`] lays out a row and the weights: each row is
/// widened to i32 RGBX, and each output pixel sums its taps two at a time as
/// eight lanes (two pixels' four channels) against weights laid out the same
/// way. The sums are the same integers as [`horizontal`]'s (i32 wrapping
/// addition is exact and order-free, and padded taps weigh 0).
struct RgbLayout {
    out_width: usize,
    /// i32s of one output pixel's taps: `ksize` rounded up to even, times 4.
    span: usize,
    pad: usize,
    weights: Vec<i32>,
}

impl RgbLayout {
    fn new(src: View, taps: &Taps) -> RgbLayout {
        let out_width = taps.first.len();
        let pairs = taps.ksize.div_ceil(2);
        let span = pairs * 8;
        let mut weights = vec![0i32; out_width * span];
        for (x, lanes) in weights.chunks_exact_mut(span).enumerate() {
            for (w, tap) in taps.weights(x).iter().zip(lanes.chunks_exact_mut(4)) {
                tap.fill(*w);
            }
        }
        RgbLayout { out_width, span, pad: src.width + 2 * pairs, weights }
    }

    /// Runs the pass, [`ROWS`] rows at a time: widens each row (with room
    /// for the last output's padded taps past its end: zeros, times weights
    /// of zero), then writes each output pixel of the rows from
    /// `pixels(inputs, weights)`, which gets that pixel's `span` widened
    /// inputs in each row and its weights. Taking the rows together reads
    /// each pixel's weights (tens of KB for a whole row, more than L1 holds)
    /// once per group instead of once per row. A last group of fewer rows
    /// repeats its last row and keeps only the real ones.
    #[inline(always)]
    fn run(
        &self,
        src: View,
        rows: std::ops::Range<usize>,
        taps: &Taps,
        out: &mut [u8],
        mut pixels: impl FnMut([&[i32]; ROWS], &[i32]) -> [[u8; 3]; ROWS],
    ) {
        let row_bytes = self.out_width * 3;
        let mut wide = vec![0i32; self.pad * 4 * ROWS];
        let first_row = rows.start;
        for (group, out_rows) in out.chunks_mut(row_bytes * ROWS).enumerate() {
            let real = out_rows.len() / row_bytes;
            for (r, lanes) in wide.chunks_exact_mut(self.pad * 4).enumerate() {
                let y = first_row + group * ROWS + r.min(real - 1);
                for (rgb, lanes) in src.row(y, 3).chunks_exact(3).zip(lanes.chunks_exact_mut(4)) {
                    lanes[..3].copy_from_slice(&[i32::from(rgb[0]), i32::from(rgb[1]), i32::from(rgb[2])]);
                }
            }
            for (x, (weights, &first)) in self.weights.chunks_exact(self.span).zip(&taps.first).enumerate() {
                let inputs: [&[i32]; ROWS] =
                    std::array::from_fn(|r| &wide[r * self.pad * 4 + first * 4..][..self.span]);
                for (r, rgb) in pixels(inputs, weights).iter().enumerate().take(real) {
                    out_rows[r * row_bytes + x * 3..][..3].copy_from_slice(rgb);
                }
            }
        }
    }
}

/// Rows [`RgbLayout::run`] takes together.
const ROWS: usize = 4;

/// The horizontal pass for RGB without AVX2, in [`RgbLayout`]'s order.
fn horizontal_rgb(src: View, rows: std::ops::Range<usize>, taps: &Taps, out: &mut [u8]) {
    RgbLayout::new(src, taps).run(src, rows, taps, out, |inputs, weights| {
        inputs.map(|input| {
            let mut sum = [0i32; 4];
            for (values, weights) in input.chunks_exact(4).zip(weights.chunks_exact(4)) {
                for c in 0..4 {
                    sum[c] = sum[c].wrapping_add(values[c].wrapping_mul(weights[c]));
                }
            }
            [0, 1, 2].map(|c| clip8(HALF.wrapping_add(sum[c])))
        })
    });
}

/// The passes compiled for AVX2 (eight i32 lanes per multiply instead of
/// the baseline's four, emulated), used when the CPU has it.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Taps, View};

    /// [`super::horizontal_rgb`] with the eight-lane sum written out: the
    /// compiler does not vectorise that loop by itself.
    #[target_feature(enable = "avx2")]
    pub(super) fn horizontal_rgb(src: View, rows: std::ops::Range<usize>, taps: &Taps, out: &mut [u8]) {
        use std::arch::x86_64::*;
        super::RgbLayout::new(src, taps).run(src, rows, taps, out, |inputs, weights| {
            let mut sums = [_mm256_setzero_si256(); super::ROWS];
            for (pair, weights) in weights.chunks_exact(8).enumerate() {
                // SAFETY: `weights` is exactly eight i32s.
                let w = unsafe { _mm256_loadu_si256(weights.as_ptr().cast()) };
                for (sum, input) in sums.iter_mut().zip(&inputs) {
                    let values = &input[pair * 8..][..8];
                    // SAFETY: `values` is exactly eight i32s.
                    let v = unsafe { _mm256_loadu_si256(values.as_ptr().cast()) };
                    *sum = _mm256_add_epi32(*sum, _mm256_mullo_epi32(v, w));
                }
            }
            sums.map(|sum| {
                let both = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
                // clip8 on four lanes: the shifted sums are within -640..640,
                // so saturating i32 -> i16 -> u8 packs clamp them to 0..=255.
                let shifted = _mm_srai_epi32::<{ super::PRECISION_BITS as i32 }>(_mm_add_epi32(
                    both,
                    _mm_set1_epi32(super::HALF),
                ));
                let bytes = _mm_packus_epi16(_mm_packs_epi32(shifted, shifted), shifted);
                let [r, g, b, _] = _mm_cvtsi128_si32(bytes).to_le_bytes();
                [r, g, b]
            })
        });
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn vertical(src: View, channels: usize, taps: &Taps, offset: usize, out: &mut [u8]) {
        super::vertical(src, channels, taps, offset, out)
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`horizontal_rgb`], with AVX2 where the CPU has it.
fn horizontal_rgb_best(src: View, rows: std::ops::Range<usize>, taps: &Taps, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, the one feature the function is compiled for.
        return unsafe { avx2::horizontal_rgb(src, rows, taps, out) };
    }
    horizontal_rgb(src, rows, taps, out)
}

/// [`vertical`], with AVX2 where the CPU has it.
fn vertical_best(src: View, channels: usize, taps: &Taps, offset: usize, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `horizontal_rgb_best`.
        return unsafe { avx2::vertical(src, channels, taps, offset, out) };
    }
    vertical(src, channels, taps, offset, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::pixels::Channels;

    /// A deterministic noisy RGB image with hard edges, so that clipping in
    /// the first pass matters.
    fn noisy(width: u32, height: u32, channels: Channels) -> Pixels {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let data = (0..width as usize * height as usize * channels.count())
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if (i / 7) % 5 == 0 { 255 } else { (state >> 56) as u8 }
            })
            .collect();
        Pixels { width, height, channels, data }
    }

    fn whole(pixels: &Pixels) -> Source<'_> {
        let (w, h) = (pixels.width, pixels.height);
        Source { pixels, left: 0, top: 0, width: w, height: h, inner: [0.0, 0.0, w as f32, h as f32] }
    }

    fn transpose(p: &Pixels) -> Pixels {
        let c = p.channels.count();
        let (w, h) = (p.width as usize, p.height as usize);
        let mut data = vec![0; p.data.len()];
        for y in 0..h {
            for x in 0..w {
                data[(x * h + y) * c..][..c].copy_from_slice(&p.data[(y * w + x) * c..][..c]);
            }
        }
        Pixels { width: p.height, height: p.width, channels: p.channels, data }
    }

    #[test]
    fn bicubic_taps_are_pillows() {
        // Pillow 13: 420 -> 224 (scale 1.875, support 3.75): ksize 9, and the
        // first output reads input 0..5 (its window is cut at the edge).
        let taps = Taps::new(420, 0.0, 420.0, 224, Filter::Bicubic);
        assert_eq!(taps.ksize, 9);
        assert_eq!((taps.first[0], taps.count[0]), (0, 5));
        assert_eq!((taps.first[100], taps.count[100]), (185, 7));
        for x in 0..224 {
            // Each row of weights sums to 1.0 in 22-bit fixed point, give or
            // take the rounding of each weight.
            let sum: i32 = taps.weights(x).iter().sum();
            assert!((sum - (1 << PRECISION_BITS)).abs() <= taps.count[x] as i32, "{x}: {sum}");
        }
        // Upscaling keeps the unwidened kernel: 4 taps, weights of a
        // Catmull-Rom at the half-pixel phase.
        let up = Taps::new(2, 0.0, 2.0, 4, Filter::Bicubic);
        assert_eq!(up.ksize, 5);
        assert_eq!(up.span(), (0, 2));
    }

    #[test]
    fn same_size_is_a_copy_and_a_one_axis_resize_runs_one_pass() {
        let src = noisy(13, 9, Channels::Rgb);
        assert_eq!(resample(&whole(&src), 13, 9, Filter::Bicubic, false).data, src.data);
        // Only the width changes: the vertical pass is skipped, so every
        // column of a vertically constant image stays constant.
        let rows = Pixels { height: 5, data: src.data[..13 * 3].repeat(5), ..src.clone() };
        let out = resample(&whole(&rows), 6, 5, Filter::Lanczos3, false);
        assert!(out.data.chunks_exact(6 * 3).all(|row| row == &out.data[..6 * 3]));
    }

    #[test]
    fn vertical_first_is_horizontal_first_on_the_transposed_image() {
        for channels in [Channels::Rgb, Channels::Gray] {
            let src = noisy(37, 23, channels);
            for filter in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos3] {
                let upright = resample(&whole(&src), 11, 17, filter, false);
                let stored = transpose(&src);
                let sideways = resample(&whole(&stored), 17, 11, filter, true);
                assert_eq!(transpose(&sideways).data, upright.data, "{channels:?} {filter:?}");
            }
        }
    }

    #[test]
    fn every_horizontal_kernel_gives_the_same_bytes() {
        let src = noisy(61, 7, Channels::Rgb);
        let view = View { data: &src.data, stride: 61 * 3, width: 61, height: 7 };
        for (out_width, filter) in [(20, Filter::Bicubic), (7, Filter::Lanczos3), (90, Filter::Bilinear)] {
            let taps = Taps::new(61, 0.0, 61.0, out_width, filter);
            let mut plain = vec![0; out_width * 3 * 7];
            horizontal::<3>(view, 0..7, &taps, &mut plain);
            let mut laid_out = vec![0; plain.len()];
            horizontal_rgb(view, 0..7, &taps, &mut laid_out);
            assert_eq!(laid_out, plain, "{filter:?}");
            let mut best = vec![0; plain.len()];
            horizontal_rgb_best(view, 0..7, &taps, &mut best);
            assert_eq!(best, plain, "{filter:?}");
        }
    }

    #[test]
    fn a_fractional_box_reads_only_inside_the_crop_plus_its_filter() {
        // Left half black, right half white; a box wholly inside the white
        // half at a fractional offset stays white except where the filter
        // window reaches the black half.
        let (w, h) = (40u32, 8u32);
        let data = (0..h).flat_map(|_| (0..w).flat_map(|x| [if x < 20 { 0 } else { 255 }; 3])).collect();
        let src = Pixels { width: w, height: h, channels: Channels::Rgb, data };
        let source = Source { pixels: &src, left: 24, top: 0, width: 16, height: 8, inner: [0.5, 0.0, 15.5, 8.0] };
        let out = resample(&source, 5, 8, Filter::Bicubic, false);
        assert!(out.data.iter().all(|&v| v == 255), "{:?}", out.data);
    }
}
