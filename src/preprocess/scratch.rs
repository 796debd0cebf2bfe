//! One reusable pixel buffer per thread, so that decoding a stream of photos
//! does not allocate (and page-fault in) a fresh multi-megabyte buffer per
//! photo. A buffer is taken for one decode and given back when the resized
//! output has been made; buffers larger than [`KEEP_AT_MOST`] are freed
//! instead, so one huge upload does not pin its memory on a thread forever.
//!
//! A buffer is handed out empty, with room for the decode: the decoder writes
//! every byte of its output, so zeroing it first (megabytes per photo, about
//! 5% of a prepare's instructions) would be wasted.

use std::cell::Cell;

/// Largest buffer a thread keeps between decodes: a 1/4-scale 12 MP photo
/// (1008x756 RGB, 2.3 MB) or a full-size 1600x1200 one fits.
pub(crate) const KEEP_AT_MOST: usize = 8 << 20;

thread_local! {
    static BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// An empty buffer with room for at least `capacity` bytes, reusing this
/// thread's kept allocation.
pub(crate) fn take(capacity: usize) -> Vec<u8> {
    let mut buffer = BUFFER.take();
    buffer.clear();
    buffer.reserve(capacity);
    buffer
}

/// Gives a buffer back for the next [`take`] on this thread.
pub(crate) fn recycle(buffer: Vec<u8>) {
    if buffer.capacity() <= KEEP_AT_MOST {
        BUFFER.set(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_buffer_is_reused_and_handed_out_empty() {
        let mut first = take(1000);
        first.resize(1000, 7);
        let address = first.as_ptr();
        recycle(first);
        let second = take(500);
        assert_eq!(second.as_ptr(), address);
        assert!(second.is_empty() && second.capacity() >= 1000);
    }

    #[test]
    fn huge_buffers_are_not_kept() {
        recycle(take(16));
        recycle(Vec::with_capacity(KEEP_AT_MOST + 1));
        assert!(take(0).capacity() <= KEEP_AT_MOST);
    }
}
