//! The binary tensor data extension, both ways: splitting a request body
//! into its JSON header and raw tensors, decoding `BYTES` and `FP32` raw
//! tensors, and encoding them for a response.
//!
//! A request whose `Inference-Header-Content-Length` is N carries N bytes of
//! JSON, then each input that has `parameters.binary_data_size` in order,
//! back to back. A `BYTES` tensor is its elements one after the other, each
//! a 4-byte little-endian length and that many bytes; an `FP32` tensor is
//! little-endian floats. Every length and offset is checked against what is
//! left before it is used: a short body, an oversized length or bytes left
//! over are a client error, never a panic.

use bytes::Bytes;

/// Why a binary body could not be read; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BinaryError(pub String);

fn bad(message: impl Into<String>) -> BinaryError {
    BinaryError(message.into())
}

/// Splits `body` into the JSON header and the binary part that follows it.
/// Without the header length the whole body is JSON.
pub fn split(body: Bytes, header_length: Option<&[u8]>) -> Result<(Bytes, Bytes), BinaryError> {
    let Some(raw) = header_length else { return Ok((body, Bytes::new())) };
    let n: usize = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| bad("Inference-Header-Content-Length must be a byte count"))?;
    if n > body.len() {
        return Err(bad(format!("Inference-Header-Content-Length is {n} but the body has only {} bytes", body.len())));
    }
    let mut json = body;
    let binary = json.split_off(n);
    Ok((json, binary))
}

/// Hands out the raw tensors of a binary body, in input order.
pub struct Tensors {
    rest: Bytes,
}

impl Tensors {
    pub fn new(binary: Bytes) -> Self {
        Tensors { rest: binary }
    }

    /// The next `size` bytes, for the input `name`.
    pub fn take(&mut self, name: &str, size: u64) -> Result<Bytes, BinaryError> {
        match usize::try_from(size) {
            Ok(n) if n <= self.rest.len() => Ok(self.rest.split_to(n)),
            _ => Err(bad(format!(
                "input {name:?} declares binary_data_size {size} but only {} bytes follow",
                self.rest.len()
            ))),
        }
    }

    /// Fails if bytes are left that no input claimed.
    pub fn finish(self) -> Result<(), BinaryError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} bytes after the last binary input belong to no input", self.rest.len())))
        }
    }
}

/// The elements of a raw `BYTES` tensor; at most `max` of them.
pub fn bytes_elements(mut data: Bytes, max: usize) -> Result<Vec<Bytes>, BinaryError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(bad(format!("a BYTES element length needs 4 bytes; {} are left", data.len())));
        }
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len > data.len() - 4 {
            return Err(bad(format!("a BYTES element of {len} bytes overruns the {} bytes left", data.len() - 4)));
        }
        if out.len() == max {
            return Err(bad(format!("more than {max} BYTES elements")));
        }
        let _ = data.split_to(4);
        out.push(data.split_to(len));
    }
    Ok(out)
}

/// A raw `BYTES` tensor holding `elements`.
pub fn encode_bytes<T: AsRef<[u8]>>(elements: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements.iter().map(|e| 4 + e.as_ref().len()).sum());
    for e in elements {
        let e = e.as_ref();
        // Elements are labels and scores, far below 4 GiB.
        out.extend((e.len() as u32).to_le_bytes());
        out.extend(e);
    }
    out
}

/// A raw `FP32` tensor as floats; its length must be a whole number of floats.
pub fn fp32_values(data: &[u8]) -> Result<Vec<f32>, BinaryError> {
    crate::job::f32_from_le_bytes(data)
        .ok_or_else(|| bad(format!("an FP32 tensor of {} bytes is not a whole number of floats", data.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_checks_the_header_length() {
        let body = Bytes::from_static(b"{}abc");
        assert_eq!(split(body.clone(), None).unwrap(), (body.clone(), Bytes::new()));
        let (json, bin) = split(body.clone(), Some(b"2")).unwrap();
        assert_eq!((&json[..], &bin[..]), (&b"{}"[..], &b"abc"[..]));
        assert!(split(body.clone(), Some(b"6")).is_err(), "longer than the body");
        assert!(split(body.clone(), Some(b"-1")).is_err());
        assert!(split(body.clone(), Some(b"99999999999999999999999")).is_err());
        assert!(split(body, Some(b"two")).is_err());
    }

    #[test]
    fn tensors_are_taken_in_order_and_must_account_for_every_byte() {
        let mut t = Tensors::new(Bytes::from_static(b"aabbb"));
        assert_eq!(&t.take("a", 2).unwrap()[..], b"aa");
        assert!(t.take("b", 4).is_err());
        assert!(t.take("b", u64::MAX).is_err());
        assert_eq!(&t.take("b", 2).unwrap()[..], b"bb");
        assert!(t.finish().is_err(), "one byte left over");
    }

    #[test]
    fn bytes_elements_round_trip_and_reject_overruns() {
        let raw = Bytes::from(encode_bytes(&[&b"one"[..], b"", b"three"]));
        let got = bytes_elements(raw.clone(), 8).unwrap();
        assert_eq!(got, vec![Bytes::from_static(b"one"), Bytes::new(), Bytes::from_static(b"three")]);
        assert!(bytes_elements(raw.clone(), 2).is_err(), "too many elements");
        assert!(bytes_elements(raw.slice(..raw.len() - 1), 8).is_err(), "short last element");
        assert!(bytes_elements(Bytes::from_static(&[1, 0]), 8).is_err(), "short length");
        assert!(bytes_elements(Bytes::from_static(&[255, 255, 255, 255, 0]), 8).is_err(), "huge length");
        assert_eq!(bytes_elements(Bytes::new(), 8).unwrap(), Vec::<Bytes>::new());
    }

    #[test]
    fn fp32_needs_whole_floats() {
        assert_eq!(fp32_values(&1.5f32.to_le_bytes()).unwrap(), vec![1.5]);
        assert!(fp32_values(&[0, 0, 0]).is_err());
    }
}
