//! Tunnel control frames (`proto::frame`), as the server and agent read them
//! from a QUIC or yamux stream: whole-buffer decode and the incremental
//! `FrameDecoder` fed in pieces must agree, and what decodes re-encodes to a
//! frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{decode, encode, FrameDecoder, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    // First byte: where to split the rest into two pushes.
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let whole = decode(bytes);
    if let Ok(Some((msg, used))) = &whole {
        assert!(*used <= bytes.len() && *used <= 5 + MAX_FRAME_LEN);
        let mut out = bytes::BytesMut::new();
        encode(msg, &mut out).expect("a decoded message re-encodes");
        let (again, n) = decode(&out)
            .expect("re-encoded frame decodes")
            .expect("complete");
        assert_eq!(&again, msg);
        assert_eq!(n, out.len());
    }

    let mut dec = FrameDecoder::new();
    let cut = (cut as usize).min(bytes.len());
    dec.push(&bytes[..cut]);
    let early = dec.next_message();
    let piecewise = match early {
        Ok(None) => {
            dec.push(&bytes[cut..]);
            dec.next_message()
        }
        other => other,
    };
    match (&whole, &piecewise) {
        (Ok(Some((a, _))), Ok(Some(b))) => assert_eq!(a, b),
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
        (w, p) => panic!("decode {w:?} but FrameDecoder {p:?}"),
    }
    assert!(dec.wanted() <= 5 + MAX_FRAME_LEN);
});
