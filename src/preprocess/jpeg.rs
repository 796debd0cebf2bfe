//! JPEG decoding with libjpeg-turbo (built by the `turbojpeg` crate), the
//! decoder behind Pillow: the same accurate integer IDCT and smooth ("fancy")
//! chroma upsampling that Pillow uses by default, so a full-size decode gives
//! Pillow's pixels. A large photo is decoded at 1/2, 1/4 or 1/8 scale in the
//! DCT domain, which is both the fastest and the cheapest-in-memory way to get
//! it down to model size: the full-size image is never allocated.
//!
//! The header comes from our own marker walk (`jpeg_header`), so the pixel
//! budget is enforced before libjpeg-turbo sees the file. Colour: gray JPEGs
//! stay one channel; 4-channel JPEGs are read with Adobe's inverted-CMYK
//! convention whether or not an APP14 marker says so, exactly like Pillow
//! (which always decodes CMYK JPEGs as `CMYK;I`; libjpeg turns YCCK into CMYK
//! first), then converted to RGB with Pillow's formula.
//!
//! Damaged data: libjpeg *warnings* (truncated or corrupt entropy-coded data,
//! which libjpeg pads with gray) are refused like errors, as TurboJPEG fails
//! the call on them. Pillow refuses truncated files too but accepts other
//! damaged scans; refusing a damaged upload is the safer side of that
//! difference.
//!
//! Cropped decoding: only the part of the image the model will see is
//! decoded. libjpeg-turbo skips the inverse DCT, upsampling and colour
//! conversion of the rows above and the columns beside the crop, and stops
//! reading at the crop's last row, so a centre crop of a 4:3 photo costs
//! about 57% of the pixel work of the whole frame and never allocates the
//! rest. The decoded box is the crop grown by one iMCU on every side (and
//! aligned as libjpeg-turbo requires), so the chroma upsampling at the crop's
//! edges sees the same neighbours as in a full decode: the pixels inside the
//! crop are exactly those of a full decode (a unit test in `preprocess`
//! checks this across subsamplings, scales, progressive and CMYK files).
//! Since the decoder then never reads a file's last rows, a file without its
//! end-of-image marker is refused before decoding, as a full decode would
//! refuse it.
//!
//! Buffers: each thread keeps one TurboJPEG instance (libjpeg's state, about
//! 30 KB) and one output buffer (see [`scratch`](super::scratch)), so a steady
//! stream of photos decodes without allocating.
//!
//! The decode calls TurboJPEG's C API directly (`turbojpeg::raw`): the
//! `turbojpeg` crate's safe `Decompressor` has no cropping region.

use std::cell::RefCell;
use std::ffi::CStr;

use libc::{c_int, c_uchar};
use turbojpeg::raw;

use super::geometry::Rect;
use super::jpeg_header::{self, JpegHeader};
use super::pixels::{Channels, Pixels, adobe_cmyk_to_rgb_in_place};
use super::{Decoded, Header, ImageError, scratch, truncated};

/// Progressive JPEGs with more scans than this are refused: a real encoder
/// writes about ten, and each extra scan costs a pass over the whole image
/// (libjpeg-turbo's own suggested limit, `TJFLAG_LIMITSCANS`).
const MAX_SCANS: c_int = 500;
/// Scans are bounded by cost, not only by count: every scan of a
/// progressive file is a pass over each 8x8 block of each component, so a
/// file may have at most this many block passes in all ...
const SCAN_BLOCK_BUDGET: u64 = 8_000_000;
/// ... but never fewer than this many scans, more than encoders write by
/// default (libjpeg's progressive script has 10, mozjpeg's at most 12ish).
const MIN_SCANS: c_int = 16;

/// The scans a progressive `width x height` file with `components` may have.
pub(crate) fn scan_limit(width: u32, height: u32, components: u8) -> c_int {
    let blocks = u64::from(width.div_ceil(8)) * u64::from(height.div_ceil(8)) * u64::from(components.max(1));
    let scans = SCAN_BLOCK_BUDGET / blocks.max(1);
    scans.clamp(MIN_SCANS as u64, MAX_SCANS as u64) as c_int
}

/// iMCU width and height in pixels for each TurboJPEG subsampling
/// (`TJSAMP_444` .. `TJSAMP_441`), as `tjMCUWidth` / `tjMCUHeight` in
/// turbojpeg.h (static there, so not linkable).
const MCU_WIDTH: [u32; 7] = [8, 16, 16, 8, 8, 32, 8];
const MCU_HEIGHT: [u32; 7] = [8, 8, 16, 8, 16, 8, 32];

thread_local! {
    /// This thread's TurboJPEG instance, made on first use and kept:
    /// libjpeg-turbo resets its state at the start of every decode.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// A JPEG whose headers (up to the first scan) have been read.
pub(crate) struct JpegSource<'a> {
    bytes: &'a [u8],
    header: JpegHeader,
}

impl<'a> JpegSource<'a> {
    /// Reads the headers only: no pixel data is touched and nothing
    /// proportional to the image size is allocated.
    pub fn open(bytes: &'a [u8]) -> Result<Self, ImageError> {
        Ok(JpegSource { bytes, header: jpeg_header::read(bytes)? })
    }

    pub fn header(&self) -> Header {
        let JpegHeader { width, height, orientation, .. } = self.header;
        Header { width, height, orientation }
    }

    /// Bytes the decode at `1/denominator` needs beyond the input, at most:
    /// the whole scaled frame's output buffer (a cropped decode needs less),
    /// plus libjpeg's whole-image coefficient buffer for multi-scan
    /// (progressive) files (2 bytes per sample, an upper bound that ignores
    /// chroma subsampling).
    pub fn decode_bytes(&self, denominator: u32) -> u64 {
        let JpegHeader { width, height, components, progressive, .. } = self.header;
        let d = self.denominator(denominator);
        let (w, h) = (u64::from(width.div_ceil(d)), u64::from(height.div_ceil(d)));
        let output = w * h * pixel_format(components).1 as u64;
        let coefficients =
            if progressive { u64::from(width) * u64::from(height) * u64::from(components) * 2 } else { 0 };
        output + coefficients
    }

    /// Lossless JPEGs cannot be DCT-scaled; they decode at full size.
    fn denominator(&self, wanted: u32) -> u32 {
        if self.header.lossless { 1 } else { wanted }
    }

    /// Decodes at `1/denominator` of the stored size (1, 2, 4 or 8) the part
    /// of the image that covers `region` (full-resolution stored pixels), or
    /// the whole frame when `region` is `None`. The result's `origin` says
    /// where its first pixel sits in the scaled frame.
    pub fn decode(self, denominator: u32, region: Option<Rect>) -> Result<Decoded, ImageError> {
        let JpegHeader { width: full_width, height: full_height, components, lossless, scan_start, .. } = self.header;
        // A cropped decode stops at the crop's last row, so libjpeg never
        // reaches the end of a truncated file; refuse it here, as a full
        // decode would. Inside entropy-coded data 0xFF is always stuffed, so
        // an FF D9 after the first scan starts can only be the real EOI.
        if !self.bytes.get(scan_start..).is_some_and(|data| data.windows(2).rev().any(|w| w == [0xFF, 0xD9])) {
            return Err(truncated());
        }
        let denominator = self.denominator(denominator);
        let (format, pixel_size) = pixel_format(components);
        let decoded = with_decompressor(|tj| {
            tj.read_header(self.bytes)?;
            tj.set_scan_limit(scan_limit(full_width, full_height, components))?;
            tj.set_scale(denominator)?;
            let (width, height) = tj.scaled_size(denominator);
            let full = Rect { left: 0, top: 0, width, height };
            let subsamp = tj.subsamp();
            let box_ = match (region, subsamp) {
                (Some(region), Some(subsamp)) if !lossless => decode_box(region, denominator, subsamp, width, height),
                _ => full,
            };
            tj.set_crop(if box_ == full { None } else { Some(box_) })?;
            let (w, h) = (box_.width as usize, box_.height as usize);
            let mut data = scratch::take(w * h * pixel_size);
            match tj.decompress(self.bytes, &mut data, (w, h), pixel_size, format) {
                Ok(()) => Ok((data, box_)),
                Err(e) => {
                    scratch::recycle(data);
                    Err(e)
                }
            }
        });
        let (mut data, box_) = decoded.map_err(|message| jpeg_error(&message))?;

        let channels = match format {
            raw::TJPF_TJPF_GRAY => Channels::Gray,
            raw::TJPF_TJPF_CMYK => {
                adobe_cmyk_to_rgb_in_place(&mut data);
                Channels::Rgb
            }
            _ => Channels::Rgb,
        };
        let pixels = Pixels { width: box_.width, height: box_.height, channels, data };
        Ok(Decoded { pixels, denominator, origin: (box_.left, box_.top) })
    }
}

/// The box of the `width x height` scaled frame to decode for `region`
/// (full-resolution pixels) at `1/denominator`: the region's enclosing
/// whole-pixel box, grown by one iMCU on each side and clamped to the frame,
/// with its left edge moved down to a multiple of the scaled iMCU width as
/// TurboJPEG requires.
pub(crate) fn decode_box(region: Rect, denominator: u32, subsamp: usize, width: u32, height: u32) -> Rect {
    let d = denominator.max(1);
    let mcu_w = MCU_WIDTH[subsamp].div_ceil(d);
    let mcu_h = MCU_HEIGHT[subsamp].div_ceil(d);
    let left = (region.left / d).saturating_sub(mcu_w);
    let left = left - left % mcu_w;
    let top = (region.top / d).saturating_sub(mcu_h);
    let right = (region.left + region.width).div_ceil(d).saturating_add(mcu_w).min(width);
    let bottom = (region.top + region.height).div_ceil(d).saturating_add(mcu_h).min(height);
    if right <= left || bottom <= top {
        return Rect { left: 0, top: 0, width, height };
    }
    Rect { left, top, width: right - left, height: bottom - top }
}

/// The TurboJPEG pixel format a frame of `components` decodes into, and its
/// bytes per pixel.
fn pixel_format(components: u8) -> (c_int, usize) {
    match components {
        1 => (raw::TJPF_TJPF_GRAY, 1),
        4 => (raw::TJPF_TJPF_CMYK, 4),
        _ => (raw::TJPF_TJPF_RGB, 3),
    }
}

/// A TurboJPEG decompression instance.
struct Decompressor(raw::tjhandle);

impl Decompressor {
    fn new() -> Result<Self, String> {
        // SAFETY: tj3Init has no preconditions; a null handle means failure.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as c_int) };
        if handle.is_null() {
            return Err("could not start a JPEG decoder".into());
        }
        let made = Decompressor(handle);
        made.check(unsafe { raw::tj3Set(made.0, raw::TJPARAM_TJPARAM_SCANLIMIT as c_int, MAX_SCANS) })?;
        Ok(made)
    }

    /// The last error's message when `status` says the call failed. TurboJPEG
    /// also fails a decode on a libjpeg *warning* (corrupt or truncated data).
    fn check(&self, status: c_int) -> Result<(), String> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: the handle is live; the string is owned by it and copied
        // before the next call.
        let message = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.0)) };
        Err(message.to_string_lossy().trim().to_owned())
    }

    fn read_header(&mut self, bytes: &[u8]) -> Result<(), String> {
        // SAFETY: the pointer and length describe `bytes`, which outlives the call.
        self.check(unsafe { raw::tj3DecompressHeader(self.0, bytes.as_ptr(), bytes.len() as raw::size_t) })
    }

    fn get(&self, param: raw::TJPARAM) -> c_int {
        // SAFETY: the handle is live.
        unsafe { raw::tj3Get(self.0, param as c_int) }
    }

    /// The header's chroma subsampling as an index into the iMCU tables,
    /// `None` when TurboJPEG cannot classify it (cropping is then off).
    fn subsamp(&self) -> Option<usize> {
        usize::try_from(self.get(raw::TJPARAM_TJPARAM_SUBSAMP)).ok().filter(|&s| s < MCU_WIDTH.len())
    }

    fn set_scan_limit(&mut self, scans: c_int) -> Result<(), String> {
        // SAFETY: the handle is live; the scan limit is a plain integer parameter.
        self.check(unsafe { raw::tj3Set(self.0, raw::TJPARAM_TJPARAM_SCANLIMIT as c_int, scans) })
    }

    fn set_scale(&mut self, denominator: u32) -> Result<(), String> {
        let factor = raw::tjscalingfactor { num: 1, denom: denominator as c_int };
        // SAFETY: the handle is live; 1/1, 1/2, 1/4 and 1/8 are supported factors.
        self.check(unsafe { raw::tj3SetScalingFactor(self.0, factor) })
    }

    /// The frame's size at `1/denominator`, rounded up as libjpeg does.
    fn scaled_size(&self, denominator: u32) -> (u32, u32) {
        let side = |param| u32::try_from(self.get(param)).unwrap_or(0).div_ceil(denominator);
        (side(raw::TJPARAM_TJPARAM_JPEGWIDTH), side(raw::TJPARAM_TJPARAM_JPEGHEIGHT))
    }

    /// Decode only `region` of the scaled frame, or all of it.
    fn set_crop(&mut self, region: Option<Rect>) -> Result<(), String> {
        let int = |v: u32| c_int::try_from(v).unwrap_or(c_int::MAX);
        let region = match region {
            Some(r) => raw::tjregion { x: int(r.left), y: int(r.top), w: int(r.width), h: int(r.height) },
            None => raw::tjregion { x: 0, y: 0, w: 0, h: 0 },
        };
        // SAFETY: the handle is live and has read the header (required for a region).
        self.check(unsafe { raw::tj3SetCroppingRegion(self.0, region) })
    }

    /// Decodes the cropping region (or the scaled frame), `width x height`
    /// pixels of `pixel_size` bytes, into `out`, which must be empty; on
    /// success `out` holds exactly those pixels, row after row.
    fn decompress(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        (width, height): (usize, usize),
        pixel_size: usize,
        format: c_int,
    ) -> Result<(), String> {
        let too_wide = || "the image is too wide".to_owned();
        let row = width.checked_mul(pixel_size).ok_or_else(too_wide)?;
        let len = row.checked_mul(height).ok_or_else(too_wide)?;
        let pitch = c_int::try_from(row).map_err(|_| too_wide())?;
        debug_assert!(out.is_empty());
        out.reserve(len);
        // SAFETY: `bytes` is readable for its length; `out` has room for `len`
        // = height rows of `pitch` bytes, which is all TurboJPEG writes.
        self.check(unsafe {
            raw::tj3Decompress8(
                self.0,
                bytes.as_ptr(),
                bytes.len() as raw::size_t,
                out.as_mut_ptr() as *mut c_uchar,
                pitch,
                format,
            )
        })?;
        // SAFETY: the decode succeeded, so TurboJPEG wrote every byte of the
        // `len`: it points a row at each `pitch` bytes of the region's height
        // and reads scanlines until all are filled (turbojpeg-mp.c,
        // `tj3Decompress8`), and a short or damaged file fails the call
        // (warnings are errors). `width` is the region's width, or the scaled
        // frame's computed as TurboJPEG's `TJSCALED` does (`scaled_size`), so
        // a row is exactly `pitch` bytes.
        unsafe { out.set_len(len) };
        Ok(())
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.0) }
    }
}

/// Runs `f` with this thread's decompressor, making it on first use.
fn with_decompressor<T>(f: impl FnOnce(&mut Decompressor) -> Result<T, String>) -> Result<T, String> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(decompressor) => decompressor,
            None => slot.insert(Decompressor::new()?),
        };
        f(decompressor)
    })
}

/// Sorts a libjpeg-turbo failure into the client's two kinds of bad file.
fn jpeg_error(message: &str) -> ImageError {
    let message = message.to_owned();
    if message.contains("nsupported") || message.contains("not supported") {
        ImageError::Unsupported(message)
    } else if message.contains("Premature end") || message.contains("premature end") {
        ImageError::Corrupt(format!("the file ends before the image data does ({message})"))
    } else {
        ImageError::Corrupt(format!("invalid JPEG: {message}"))
    }
}
