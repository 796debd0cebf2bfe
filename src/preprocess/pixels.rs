//! Decoded pixel buffers and the colour conversions that must happen before
//! resampling: CMYK to RGB and alpha onto white.
//!
//! Grayscale stays one channel through the resize and is widened to RGB only
//! at the (small) output: resampling is per channel, so widening first would
//! triple the work for the same result. Conversions that are not per-channel
//! linear (CMYK, alpha) are done before resizing, as Pillow does, and in place
//! where the pixel shrinks, so no second full-size buffer is allocated.

/// Channel layout of a decoded buffer fed to the resizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channels {
    Gray,
    Rgb,
}

impl Channels {
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }
}

/// A packed, row-major 8-bit image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pixels {
    pub width: u32,
    pub height: u32,
    pub channels: Channels,
    pub data: Vec<u8>,
}

impl Pixels {
    /// Widens a gray image to RGB; RGB images are returned as they are.
    pub fn into_rgb(self) -> Pixels {
        match self.channels {
            Channels::Rgb => self,
            Channels::Gray => {
                Pixels { data: self.data.iter().flat_map(|&v| [v, v, v]).collect(), channels: Channels::Rgb, ..self }
            }
        }
    }
}

/// `a * b / 255`, rounded, exactly as Pillow's `MULDIV255`.
fn mul_div_255(a: u8, b: u8) -> u8 {
    let t = u32::from(a) * u32::from(b) + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// Converts packed Adobe-inverted CMYK (255 = no ink, as Photoshop writes
/// JPEGs and Pillow reads them, `CMYK;I`) to RGB in place, shrinking the buffer
/// from 4 to 3 bytes per pixel. Same formula as Pillow's `cmyk2rgb`.
pub(crate) fn adobe_cmyk_to_rgb_in_place(data: &mut Vec<u8>) {
    let pixels = data.len() / 4;
    for i in 0..pixels {
        let [c, m, y, k] = [data[4 * i], data[4 * i + 1], data[4 * i + 2], data[4 * i + 3]].map(|v| 255 - v);
        let paper = 255 - k;
        // Writing pixel i at 3*i never overtakes reading pixel j >= i at 4*j.
        data[3 * i] = paper - mul_div_255(c, paper);
        data[3 * i + 1] = paper - mul_div_255(m, paper);
        data[3 * i + 2] = paper - mul_div_255(y, paper);
    }
    data.truncate(pixels * 3);
}

/// Composites `colour` with coverage `alpha` over white, rounded.
fn over_white(colour: u8, alpha: u8) -> u8 {
    let (c, a) = (u32::from(colour), u32::from(alpha));
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Composites packed pixels of `colours` colour bytes plus one alpha byte over
/// white, in place, dropping the alpha byte (RGBA -> RGB, gray+alpha -> gray).
pub(crate) fn flatten_alpha_on_white(data: &mut Vec<u8>, colours: usize) {
    let stride = colours + 1;
    let pixels = data.len() / stride;
    for i in 0..pixels {
        let alpha = data[i * stride + colours];
        for c in 0..colours {
            // Destination index i*colours+c <= source index i*stride+c.
            data[i * colours + c] = over_white(data[i * stride + c], alpha);
        }
    }
    data.truncate(pixels * colours);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_no_ink_is_white_and_full_key_is_black() {
        let inked = [0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 128, 0, 0];
        let mut data = inked.map(|ink| 255 - ink).to_vec();
        adobe_cmyk_to_rgb_in_place(&mut data);
        assert_eq!(data, vec![255, 255, 255, 0, 0, 0, 0, 255, 255, 255, 127, 255]);
    }

    #[test]
    fn alpha_is_composited_on_white() {
        let mut rgba = vec![10, 20, 30, 255, 10, 20, 30, 0, 0, 0, 0, 128];
        flatten_alpha_on_white(&mut rgba, 3);
        assert_eq!(rgba, vec![10, 20, 30, 255, 255, 255, 127, 127, 127]);
        let mut gray_alpha = vec![0, 0, 0, 255];
        flatten_alpha_on_white(&mut gray_alpha, 1);
        assert_eq!(gray_alpha, vec![255, 0]);
    }

    #[test]
    fn gray_widens_to_rgb() {
        let gray = Pixels { width: 2, height: 1, channels: Channels::Gray, data: vec![3, 9] };
        assert_eq!(gray.into_rgb().data, vec![3, 3, 3, 9, 9, 9]);
    }
}
