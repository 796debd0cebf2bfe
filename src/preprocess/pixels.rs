//! Decoded pixel buffers and the colour conversions that must happen before
//! resampling: CMYK to RGB, alpha onto white, 16-bit to 8-bit.
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
    /// Number of bytes a `width x height` image with `channels` needs.
    pub fn expected_len(width: u32, height: u32, channels: Channels) -> usize {
        width as usize * height as usize * channels.count()
    }

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

/// Converts packed CMYK ink values (0 = no ink) to RGB in place, shrinking the
/// buffer from 4 to 3 bytes per pixel. Same formula as Pillow's `cmyk2rgb`.
pub(crate) fn cmyk_to_rgb_in_place(data: &mut Vec<u8>) {
    let pixels = data.len() / 4;
    for i in 0..pixels {
        let [c, m, y, k] = [data[4 * i], data[4 * i + 1], data[4 * i + 2], data[4 * i + 3]];
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

/// Narrows native-endian 16-bit samples to 8 bits (rounded), in place.
pub(crate) fn narrow_u16_in_place(data: &mut Vec<u8>) {
    let samples = data.len() / 2;
    for i in 0..samples {
        let v = u16::from_ne_bytes([data[2 * i], data[2 * i + 1]]);
        data[i] = ((u32::from(v) + 128) / 257) as u8;
    }
    data.truncate(samples);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_no_ink_is_white_and_full_key_is_black() {
        let mut data = vec![0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 128, 0, 0];
        cmyk_to_rgb_in_place(&mut data);
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
    fn sixteen_bit_samples_round_to_eight() {
        let mut data: Vec<u8> = [0u16, 65535, 257 * 7, 257 * 7 + 129].iter().flat_map(|v| v.to_ne_bytes()).collect();
        narrow_u16_in_place(&mut data);
        assert_eq!(data, vec![0, 255, 7, 8]);
    }

    #[test]
    fn gray_widens_to_rgb() {
        let gray = Pixels { width: 2, height: 1, channels: Channels::Gray, data: vec![3, 9] };
        assert_eq!(gray.into_rgb().data, vec![3, 3, 3, 9, 9, 9]);
    }
}
