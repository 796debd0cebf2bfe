//! A JPEG marker walk that reads only what must be known before any pixel is
//! decoded: the frame size, the number of colour components, whether the
//! frame is lossless, and the EXIF orientation.
//!
//! It is ours rather than libjpeg-turbo's header reader for two reasons. The
//! size must be refused from the frame header alone: a decompression bomb is a
//! few bytes of SOF with no scan, and libjpeg's `jpeg_read_header` wants to
//! reach the first scan before it reports a size. And libjpeg does not parse
//! EXIF. Like Pillow, the walk reads every segment up to the first scan (SOS),
//! so an EXIF block placed after the frame header (non-conforming) still
//! counts, and the first EXIF block wins.

use image::metadata::Orientation;

use super::{ImageError, truncated};

/// What the segments before the first scan say about a JPEG.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct JpegHeader {
    pub width: u32,
    pub height: u32,
    /// Colour components in the frame: 1 (gray), 3 (YCbCr or RGB) or 4 (CMYK or YCCK).
    pub components: u8,
    /// A lossless frame (SOF3, SOF7, SOF11, SOF15), which cannot be DCT-scaled.
    pub lossless: bool,
    /// A progressive frame (SOF2, SOF10): libjpeg buffers the whole image's
    /// coefficients while it reads the scans.
    pub progressive: bool,
    pub orientation: Orientation,
    /// Offset just past the first SOS marker, where the entropy-coded data
    /// starts (the data's length when there is no scan).
    pub scan_start: usize,
}

/// Walks the markers of `bytes` (which start with SOI) up to the first SOS or
/// the end of the data. A file that ends after its frame header but before a
/// scan still yields the header: the size check comes first, the decoder
/// reports the missing scan.
pub(crate) fn read(bytes: &[u8]) -> Result<JpegHeader, ImageError> {
    let mut frame: Option<Frame> = None;
    let mut orientation: Option<Orientation> = None;
    let mut at = 2; // after SOI
    let mut scan_start = bytes.len();
    while let Some(marker) = next_marker(bytes, &mut at) {
        if marker == 0xDA {
            scan_start = at; // SOS: the entropy-coded data starts
            break;
        }
        if standalone(marker) {
            continue;
        }
        let Some(segment) = segment(bytes, at) else {
            break; // the data ends inside this segment
        };
        at += 2 + segment.len();
        match marker {
            0xC0..=0xCF if frame.is_none() && !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                frame = Some(start_of_frame(marker, segment)?);
            }
            0xE1 if orientation.is_none() => {
                if let Some(tiff) = segment.strip_prefix(b"Exif\0\0") {
                    orientation = Orientation::from_exif_chunk(tiff);
                }
            }
            _ => {}
        }
    }
    let Frame { width, height, components, lossless, progressive } = frame.ok_or_else(truncated)?;
    let orientation = orientation.unwrap_or(Orientation::NoTransforms);
    Ok(JpegHeader { width, height, components, lossless, progressive, orientation, scan_start })
}

/// Finds the next marker at or after `*at`, skipping fill bytes (0xFF runs),
/// and leaves `*at` just past its code. `None` at the end of the data or when
/// the bytes there are not a marker (the decoder reports that).
fn next_marker(bytes: &[u8], at: &mut usize) -> Option<u8> {
    if bytes.get(*at) != Some(&0xFF) {
        return None;
    }
    while bytes.get(*at) == Some(&0xFF) {
        *at += 1;
    }
    let marker = *bytes.get(*at)?;
    *at += 1;
    Some(marker)
}

/// Markers with no length field: TEM, RST0-7, SOI, EOI.
fn standalone(marker: u8) -> bool {
    matches!(marker, 0x01 | 0xD0..=0xD9)
}

/// The payload of the segment whose length field is at `at`.
fn segment(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let length = usize::from(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
    bytes.get(at + 2..at + length.max(2))
}

/// The parts of a frame header (SOFn) that matter here.
struct Frame {
    width: u32,
    height: u32,
    components: u8,
    lossless: bool,
    progressive: bool,
}

/// Parses a SOFn payload: precision, height, width, component count.
fn start_of_frame(marker: u8, payload: &[u8]) -> Result<Frame, ImageError> {
    let [precision, h1, h0, w1, w0, components, ..] = *payload else {
        return Err(ImageError::Corrupt("invalid JPEG: the frame header is too short".into()));
    };
    let lossless = matches!(marker, 0xC3 | 0xC7 | 0xCB | 0xCF);
    if matches!(marker, 0xC5..=0xC7 | 0xCD..=0xCF) {
        return Err(ImageError::Unsupported("hierarchical JPEG".into()));
    }
    if precision != 8 && !lossless {
        return Err(ImageError::Unsupported(format!("{precision}-bit lossy JPEG")));
    }
    if !matches!(components, 1 | 3 | 4) {
        return Err(ImageError::Unsupported(format!("JPEG with {components} colour components")));
    }
    let height = u32::from(u16::from_be_bytes([h1, h0]));
    if height == 0 {
        return Err(ImageError::Unsupported("JPEG whose height is given after the image data (DNL)".into()));
    }
    let width = u32::from(u16::from_be_bytes([w1, w0]));
    Ok(Frame { width, height, components, lossless, progressive: matches!(marker, 0xC2 | 0xCA) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sof(marker: u8, precision: u8, width: u16, height: u16, components: u8) -> Vec<u8> {
        let mut s = vec![0xFF, marker, 0, 8 + 3 * components, precision];
        s.extend_from_slice(&height.to_be_bytes());
        s.extend_from_slice(&width.to_be_bytes());
        s.push(components);
        for id in 1..=components {
            s.extend_from_slice(&[id, 0x11, 0]);
        }
        s
    }

    fn exif(orientation: u16) -> Vec<u8> {
        let mut tiff = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0; 6]);
        let length = (tiff.len() + 2) as u16;
        [&[0xFF, 0xE1][..], &length.to_be_bytes(), &tiff].concat()
    }

    const SOI: [u8; 2] = [0xFF, 0xD8];
    const SOS: [u8; 4] = [0xFF, 0xDA, 0, 2];

    #[test]
    fn reads_the_frame_and_the_first_exif_even_after_the_frame() {
        let file = [&SOI[..], &sof(0xC2, 8, 4032, 3024, 3), &[0xFF, 0xFF], &exif(6), &exif(3), &SOS].concat();
        let header = read(&file).unwrap();
        assert_eq!((header.width, header.height, header.components), (4032, 3024, 3));
        assert_eq!(header.orientation, Orientation::Rotate90);
        assert!(!header.lossless && header.progressive);
    }

    #[test]
    fn exif_after_the_first_scan_is_ignored_as_pillow_does() {
        let file = [&SOI[..], &sof(0xC0, 8, 10, 10, 1), &SOS, &exif(6)].concat();
        assert_eq!(read(&file).unwrap().orientation, Orientation::NoTransforms);
    }

    #[test]
    fn a_frame_header_without_a_scan_still_gives_the_size() {
        let file = [&SOI[..], &sof(0xC0, 8, 60_000, 60_000, 3)].concat();
        assert_eq!((read(&file).unwrap().width, read(&file).unwrap().height), (60_000, 60_000));
    }

    #[test]
    fn refuses_what_neither_libjpeg_nor_pillow_decodes() {
        let unsupported = |file: Vec<u8>| matches!(read(&file), Err(ImageError::Unsupported(_)));
        assert!(unsupported([&SOI[..], &sof(0xC1, 12, 8, 8, 3)].concat()), "12-bit");
        assert!(unsupported([&SOI[..], &sof(0xC0, 8, 8, 8, 2)].concat()), "2 components");
        assert!(unsupported([&SOI[..], &sof(0xC5, 8, 8, 8, 3)].concat()), "hierarchical");
        assert!(unsupported([&SOI[..], &sof(0xC0, 8, 8, 0, 3)].concat()), "DNL");
        assert!(read(&[&SOI[..], &sof(0xC3, 16, 8, 8, 1)].concat()).unwrap().lossless);
    }

    #[test]
    fn truncated_or_frameless_data_is_corrupt() {
        for file in [&SOI[..], &[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J'], &[0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8]] {
            assert!(matches!(read(file), Err(ImageError::Corrupt(_))), "{file:?}");
        }
        let scan_first = [&SOI[..], &SOS, &sof(0xC0, 8, 8, 8, 3)].concat();
        assert!(matches!(read(&scan_first), Err(ImageError::Corrupt(_))));
    }
}
