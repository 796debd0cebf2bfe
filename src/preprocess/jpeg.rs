//! JPEG decoding with `jpeg-decoder`: header first, then a decode that may
//! shrink the image in the DCT domain (1/2, 1/4 or 1/8), which is both the
//! fastest and the cheapest-in-memory way to get a large photo down to model
//! size.
//!
//! Colour: 4-channel JPEGs are read with Adobe's inverted-CMYK convention
//! whether or not an APP14 marker says so, exactly like Pillow (which always
//! decodes CMYK JPEGs as `CMYK;I`); `jpeg-decoder` hands back ink values in
//! that convention for both CMYK and YCCK, and they are converted to RGB with
//! Pillow's formula. 12/16-bit lossless grayscale is narrowed to 8 bits.

use image::metadata::Orientation;
use jpeg_decoder::{CodingProcess, Decoder, Error as JpegError, PixelFormat, UnsupportedFeature};

use super::pixels::{Channels, Pixels, cmyk_to_rgb_in_place, narrow_u16_in_place};
use super::{Decoded, Header, ImageError, truncated};

/// A JPEG whose headers (up to the frame header) have been read.
pub(crate) struct JpegSource<'a> {
    decoder: Decoder<&'a [u8]>,
    header: Header,
    lossless: bool,
}

impl<'a> JpegSource<'a> {
    /// Reads the headers only: no pixel data is touched and nothing
    /// proportional to the image size is allocated.
    pub fn open(bytes: &'a [u8], max_pixels: u64) -> Result<Self, ImageError> {
        let mut decoder = Decoder::new(bytes);
        // Belt over the caller's pixel check: the largest output is CMYK.
        decoder.set_max_decoding_buffer_size(usize::try_from(max_pixels.saturating_mul(4)).unwrap_or(usize::MAX));
        decoder.read_info().map_err(jpeg_error)?;
        let info = decoder.info().ok_or_else(|| ImageError::Corrupt("no JPEG frame header".into()))?;
        let header = Header {
            width: u32::from(info.width),
            height: u32::from(info.height),
            orientation: exif_orientation(&decoder),
        };
        Ok(JpegSource { decoder, header, lossless: info.coding_process == CodingProcess::Lossless })
    }

    pub fn header(&self) -> Header {
        self.header
    }

    /// Decodes at `1/denominator` of the stored size (1, 2, 4 or 8; lossless
    /// JPEGs are always decoded at full size).
    pub fn decode(mut self, denominator: u32) -> Result<Decoded, ImageError> {
        let Header { width, height, .. } = self.header;
        let denominator = if self.lossless { 1 } else { denominator };
        if denominator > 1 {
            let (w, h) = (width.div_ceil(denominator), height.div_ceil(denominator));
            // Both fit: they are at most the u16 header dimensions.
            let (w, h) = (u16::try_from(w).unwrap_or(u16::MAX), u16::try_from(h).unwrap_or(u16::MAX));
            self.decoder.scale(w, h).map_err(jpeg_error)?;
        }
        let mut data = self.decoder.decode().map_err(jpeg_error)?;
        let info = self.decoder.info().ok_or_else(|| ImageError::Corrupt("no JPEG frame header".into()))?;
        let (out_w, out_h) = (u32::from(info.width), u32::from(info.height));
        let applied = [1, 2, 4, 8]
            .into_iter()
            .find(|&d| (width.div_ceil(d), height.div_ceil(d)) == (out_w, out_h))
            .ok_or_else(|| ImageError::Corrupt("JPEG decoded to an unexpected size".into()))?;

        let channels = match info.pixel_format {
            PixelFormat::L8 => Channels::Gray,
            PixelFormat::L16 => {
                narrow_u16_in_place(&mut data);
                Channels::Gray
            }
            PixelFormat::RGB24 => Channels::Rgb,
            PixelFormat::CMYK32 => {
                cmyk_to_rgb_in_place(&mut data);
                Channels::Rgb
            }
        };
        if data.len() != Pixels::expected_len(out_w, out_h, channels) {
            return Err(ImageError::Corrupt("JPEG pixel data does not match its header".into()));
        }
        Ok(Decoded {
            pixels: Pixels { width: out_w, height: out_h, channels, data },
            denominator: applied,
            // Decoding reads every segment; an EXIF block placed after the
            // frame header (non-conforming, but Pillow honours it) shows up now.
            orientation: exif_orientation(&self.decoder),
        })
    }
}

fn exif_orientation(decoder: &Decoder<&[u8]>) -> Orientation {
    decoder.exif_data().and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms)
}

fn jpeg_error(e: JpegError) -> ImageError {
    match e {
        JpegError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => truncated(),
        JpegError::Io(io) => ImageError::Corrupt(io.to_string()),
        JpegError::Format(message) => ImageError::Corrupt(format!("invalid JPEG: {message}")),
        JpegError::Unsupported(feature) => ImageError::Unsupported(unsupported(&feature)),
        other => ImageError::Corrupt(other.to_string()),
    }
}

fn unsupported(feature: &UnsupportedFeature) -> String {
    match feature {
        UnsupportedFeature::ArithmeticEntropyCoding => "JPEG with arithmetic coding".into(),
        UnsupportedFeature::Hierarchical => "hierarchical JPEG".into(),
        UnsupportedFeature::SamplePrecision(bits) => format!("{bits}-bit lossy JPEG"),
        UnsupportedFeature::ComponentCount(n) => format!("JPEG with {n} colour components"),
        UnsupportedFeature::DNL => "JPEG whose height is given after the image data (DNL)".into(),
        other => format!("JPEG feature {other:?}"),
    }
}
