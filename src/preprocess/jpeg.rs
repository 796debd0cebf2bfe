//! JPEG decoding with libjpeg-turbo (through the `turbojpeg` crate), the
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
//! which libjpeg pads with gray) are refused like errors. Pillow refuses
//! truncated files too but accepts other damaged scans; the `turbojpeg`
//! crate's safe API does not tell a warning from an error, and refusing a
//! damaged upload is the safer side of that difference.
//!
//! Buffers: each thread keeps one `Decompressor` (libjpeg's state, about
//! 30 KB) and one output buffer (see [`scratch`](super::scratch)), so a steady
//! stream of photos decodes without allocating.

use std::cell::RefCell;

use turbojpeg::{Decompressor, Image, PixelFormat, ScalingFactor};

use super::jpeg_header::{self, JpegHeader};
use super::pixels::{Channels, Pixels, adobe_cmyk_to_rgb_in_place};
use super::{Decoded, Header, ImageError, scratch};

/// Progressive JPEGs with more scans than this are refused: a real encoder
/// writes about ten, and each extra scan costs a pass over the whole image
/// (libjpeg-turbo's own suggested limit, `TJFLAG_LIMITSCANS`).
const MAX_SCANS: u32 = 500;

thread_local! {
    /// This thread's decompressor, made on first use and kept: libjpeg-turbo
    /// resets its state at the start of every decode.
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

    /// Bytes the decode at `1/denominator` needs beyond the input: the output
    /// buffer, plus libjpeg's whole-image coefficient buffer for multi-scan
    /// (progressive) files (2 bytes per sample, an upper bound that ignores
    /// chroma subsampling).
    pub fn decode_bytes(&self, denominator: u32) -> u64 {
        let JpegHeader { width, height, components, progressive, .. } = self.header;
        let d = self.denominator(denominator);
        let (w, h) = (u64::from(width.div_ceil(d)), u64::from(height.div_ceil(d)));
        let output = w * h * pixel_format(components).size() as u64;
        let coefficients =
            if progressive { u64::from(width) * u64::from(height) * u64::from(components) * 2 } else { 0 };
        output + coefficients
    }

    /// Lossless JPEGs cannot be DCT-scaled; they decode at full size.
    fn denominator(&self, wanted: u32) -> u32 {
        if self.header.lossless { 1 } else { wanted }
    }

    /// Decodes at `1/denominator` of the stored size (1, 2, 4 or 8).
    pub fn decode(self, denominator: u32) -> Result<Decoded, ImageError> {
        let JpegHeader { width, height, components, .. } = self.header;
        let denominator = self.denominator(denominator);
        let scale = ScalingFactor::new(1, denominator as usize);
        let format = pixel_format(components);
        let (w, h) = (scale.scale(width as usize), scale.scale(height as usize));
        let mut data = scratch::take(w * h * format.size());
        let image = Image { pixels: data.as_mut_slice(), width: w, pitch: w * format.size(), height: h, format };
        with_decompressor(|decompressor| {
            decompressor.set_scaling_factor(scale)?;
            decompressor.decompress(self.bytes, image)
        })
        .map_err(|e| {
            scratch::recycle(std::mem::take(&mut data));
            jpeg_error(e)
        })?;

        let channels = match format {
            PixelFormat::GRAY => Channels::Gray,
            PixelFormat::CMYK => {
                adobe_cmyk_to_rgb_in_place(&mut data);
                Channels::Rgb
            }
            _ => Channels::Rgb,
        };
        // Both fit in u32: they are at most the u16 header dimensions.
        let pixels = Pixels { width: w as u32, height: h as u32, channels, data };
        Ok(Decoded { pixels, denominator })
    }
}

/// The pixel format libjpeg-turbo decodes a frame of `components` into.
fn pixel_format(components: u8) -> PixelFormat {
    match components {
        1 => PixelFormat::GRAY,
        4 => PixelFormat::CMYK,
        _ => PixelFormat::RGB,
    }
}

/// Runs `f` with this thread's decompressor, making it on first use.
fn with_decompressor<T>(f: impl FnOnce(&mut Decompressor) -> turbojpeg::Result<T>) -> turbojpeg::Result<T> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(decompressor) => decompressor,
            None => {
                let mut made = Decompressor::new()?;
                made.set_scan_limit(MAX_SCANS)?;
                slot.insert(made)
            }
        };
        f(decompressor)
    })
}

/// Sorts a libjpeg-turbo failure into the client's two kinds of bad file.
fn jpeg_error(e: turbojpeg::Error) -> ImageError {
    let message = match e {
        turbojpeg::Error::TurboJpegError(message) => message.trim().to_owned(),
        other => other.to_string(),
    };
    if message.contains("nsupported") || message.contains("not supported") {
        ImageError::Unsupported(message)
    } else if message.contains("Premature end") || message.contains("premature end") {
        ImageError::Corrupt(format!("the file ends before the image data does ({message})"))
    } else {
        ImageError::Corrupt(format!("invalid JPEG: {message}"))
    }
}
