//! gRPC length-prefixed message framing (`proto::grpc::MessageDecoder`), fed
//! in arbitrary pieces as HTTP/2 DATA frames arrive: no message above the
//! limit comes out, the buffer never runs ahead of the bytes received, and
//! the pieces reassemble exactly the bytes that went in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::grpc::MessageDecoder;

/// Small so that "too large" is reachable; the server uses 4 MiB.
const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut dec = MessageDecoder::new(MAX);
    let mut consumed = 0usize;
    let mut pushed = 0usize;
    for piece in bytes.chunks(step) {
        dec.push(piece);
        pushed += piece.len();
        loop {
            match dec.next_message() {
                Ok(Some(msg)) => {
                    assert!(msg.len() <= MAX);
                    // The message is the bytes right after its 5-byte prefix.
                    let start = consumed + 5;
                    assert_eq!(&msg[..], &bytes[start..start + msg.len()]);
                    consumed = start + msg.len();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert_eq!(consumed + dec.buffered(), pushed);
    }
    match dec.finish() {
        Ok(()) => assert_eq!(consumed, bytes.len()),
        Err(_) => assert!(consumed < bytes.len()),
    }
});
