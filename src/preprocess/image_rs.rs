//! PNG, GIF (first frame), WebP and BMP decoding with the `image` crate,
//! under `image::Limits` so a hostile file cannot make the decoder allocate
//! more than a budget derived from the pixel limit.
//!
//! EXIF orientation is honoured where the format carries it (PNG `eXIf`,
//! WebP `EXIF`), as Pillow's `exif_transpose` does. Alpha is composited on
//! white; 16-bit and float images are narrowed to 8 bits with rounding.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::pixels::{Channels, Pixels, flatten_alpha_on_white};
use super::{Decoded, Format, Header, ImageError, truncated};

/// Decoder scratch allowed on top of the decoded image itself.
const DECODER_OVERHEAD_BYTES: u64 = 16 << 20;
/// Largest decoded pixel the crate may produce (RGBA, 16 bits per channel).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// An image whose header has been read by an `image` crate decoder.
pub(crate) struct RasterSource<'a> {
    decoder: Box<dyn ImageDecoder + 'a>,
    header: Header,
    gif: bool,
}

impl<'a> RasterSource<'a> {
    /// Reads the header only. `format` must not be JPEG (see `jpeg.rs`).
    pub fn open(bytes: &'a [u8], format: Format, max_pixels: u64) -> Result<Self, ImageError> {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format(format));
        reader.limits(limits(max_pixels));
        let mut decoder: Box<dyn ImageDecoder + 'a> = Box::new(reader.into_decoder().map_err(image_error)?);
        let (width, height) = decoder.dimensions();
        // A malformed EXIF block is not worth rejecting the picture for.
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        Ok(RasterSource { decoder, header: Header { width, height, orientation }, gif: format == Format::Gif })
    }

    pub fn header(&self) -> Header {
        self.header
    }

    /// Bytes the decode needs: the decoder's output at its native depth,
    /// plus the 8-bit copy [`to_pixels`] makes of any other layout, plus, for
    /// a GIF, the frame the decoder reads before placing it on the screen.
    pub fn decode_bytes(&self) -> u64 {
        use image::ColorType as C;
        let pixels = u64::from(self.header.width) * u64::from(self.header.height);
        let color = self.decoder.color_type();
        let converted = match color {
            C::L8 | C::La8 | C::Rgb8 | C::Rgba8 => 0,
            c if c.has_alpha() => pixels * 4,
            c if c.has_color() => pixels * 3,
            _ => pixels,
        };
        let frame = if self.gif { pixels * 4 } else { 0 };
        self.decoder.total_bytes().saturating_add(converted).saturating_add(frame)
    }

    /// Decodes the whole image (or the first frame) at full size.
    pub fn decode(self) -> Result<Decoded, ImageError> {
        let image = DynamicImage::from_decoder(self.decoder).map_err(image_error)?;
        Ok(Decoded { pixels: to_pixels(image), denominator: 1, origin: (0, 0) })
    }
}

fn image_format(format: Format) -> ImageFormat {
    match format {
        Format::Jpeg => ImageFormat::Jpeg,
        Format::Png => ImageFormat::Png,
        Format::Gif => ImageFormat::Gif,
        Format::WebP => ImageFormat::WebP,
        Format::Bmp => ImageFormat::Bmp,
    }
}

fn limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL).saturating_add(DECODER_OVERHEAD_BYTES));
    limits
}

/// Brings any decoded image to 8-bit gray or RGB, alpha composited on white.
fn to_pixels(image: DynamicImage) -> Pixels {
    let (width, height) = (image.width(), image.height());
    let (channels, data) = match image {
        DynamicImage::ImageLuma8(buffer) => (Channels::Gray, buffer.into_raw()),
        DynamicImage::ImageRgb8(buffer) => (Channels::Rgb, buffer.into_raw()),
        DynamicImage::ImageLumaA8(buffer) => {
            let mut data = buffer.into_raw();
            flatten_alpha_on_white(&mut data, 1);
            (Channels::Gray, data)
        }
        other if other.color().has_alpha() => {
            let mut data = other.into_rgba8().into_raw();
            flatten_alpha_on_white(&mut data, 3);
            (Channels::Rgb, data)
        }
        other if other.color().has_color() => (Channels::Rgb, other.into_rgb8().into_raw()),
        other => (Channels::Gray, other.into_luma8().into_raw()),
    };
    Pixels { width, height, channels, data }
}

fn image_error(e: image::ImageError) -> ImageError {
    use image::ImageError as E;
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => truncated(),
        E::Limits(_) => {
            ImageError::Unsupported("decoding it would need more memory than this server allows per image".into())
        }
        E::Unsupported(u) => ImageError::Unsupported(u.to_string()),
        other => ImageError::Corrupt(other.to_string()),
    }
}
