//! Splits a watch response body into whole event lines, whatever the chunking.

use bytes::{Bytes, BytesMut};

use super::error::WatchDecodeError;

/// Splits a watch response body (newline-delimited JSON events, arbitrary chunking)
/// into whole event lines without the newline; memory is bounded by `max_event_bytes`.
#[derive(Debug)]
pub struct WatchDecoder {
    max_event_bytes: usize,
    partial: BytesMut,
}

impl WatchDecoder {
    /// A decoder refusing any event line longer than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        WatchDecoder {
            max_event_bytes,
            partial: BytesMut::new(),
        }
    }

    /// Feeds one chunk; returns the event lines it completed (blank lines skipped).
    /// After an error the stream is unusable: the caller should drop the watch.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, WatchDecodeError> {
        let mut events = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.append(&rest[..pos])?;
            let line = self.partial.split().freeze();
            if !line.iter().all(u8::is_ascii_whitespace) {
                events.push(trim_cr(line));
            }
            rest = &rest[pos + 1..];
        }
        self.append(rest)?;
        Ok(events)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), WatchDecodeError> {
        if self.partial.len() + bytes.len() > self.max_event_bytes {
            self.partial.clear();
            return Err(WatchDecodeError::EventTooLong {
                max: self.max_event_bytes,
            });
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }
}

fn trim_cr(line: Bytes) -> Bytes {
    match line.last() {
        Some(b'\r') => line.slice(..line.len() - 1),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_reassembled_across_chunks() {
        let stream = b"{\"type\":\"ADDED\",\"object\":{}}\n\n{\"type\":\"DELETED\",\"object\":{}}\r\n{\"type\"";
        for split in 0..stream.len() {
            let mut decoder = WatchDecoder::new(1024);
            let mut events = decoder.push(&stream[..split]).unwrap();
            events.extend(decoder.push(&stream[split..]).unwrap());
            assert_eq!(
                events,
                [
                    Bytes::from_static(b"{\"type\":\"ADDED\",\"object\":{}}"),
                    Bytes::from_static(b"{\"type\":\"DELETED\",\"object\":{}}"),
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn byte_by_byte_feeding_works() {
        let mut decoder = WatchDecoder::new(64);
        let mut events = Vec::new();
        for b in b"{\"a\":1}\n{\"b\":2}\n" {
            events.extend(decoder.push(&[*b]).unwrap());
        }
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn over_long_lines_are_refused() {
        let mut decoder = WatchDecoder::new(8);
        assert_eq!(decoder.push(b"12345678\n").unwrap().len(), 1);
        assert_eq!(
            decoder.push(b"12345"),
            Ok(Vec::new()),
            "a partial line within the bound is kept"
        );
        assert_eq!(
            decoder.push(b"6789"),
            Err(WatchDecodeError::EventTooLong { max: 8 })
        );
    }
}
