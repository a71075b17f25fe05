//! Konnectivity `Packet`s (`proto::konnectivity`), the protobuf messages of
//! the gRPC front end: decoding never panics, and a decoded packet survives
//! encode → decode unchanged. A DIAL_REQ's address goes through the same
//! `DialTarget` parser the front end uses.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use proto::konnectivity::{decode, encode, Packet};
use proto::DialTarget;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let Ok(packet) = decode(&buf) else {
        return;
    };
    let again = decode(&encode(&packet)).expect("a decoded packet re-encodes");
    assert_eq!(again, packet);
    if let Packet::DialRequest { address, .. } = &packet {
        if let Ok(target) = address.parse::<DialTarget>() {
            let shown = target.to_string();
            let reparsed: DialTarget = shown.parse().expect("a target prints parsable");
            assert_eq!(reparsed, target);
        }
    }
});
