//! The seed corpus of the `fuzz/` targets that read this crate's wire
//! formats, built from the same messages the unit tests use.
//!
//! The seeds are committed under `fuzz/seeds/<target>/`. This test checks
//! that they are exactly what the current encoders produce, so they stay
//! valid inputs when a format changes; `WRITE_FUZZ_SEEDS=1 cargo test -p
//! proto fuzz_seeds` rewrites them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

use crate::konnectivity::{self, Packet};
use crate::tls_hello::tests::{rustls_hello, split_records};
use crate::{
    AgentService, DialErrorKind, DialResult, DialTarget, Hello, HelloAck, Message, OpenStream,
    RejectReason,
};

/// target name → (seed file name → bytes).
type Seeds = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

fn frame(msg: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    crate::encode(msg, &mut out).unwrap();
    out.to_vec()
}

fn target(s: &str) -> DialTarget {
    s.parse().unwrap()
}

fn frames() -> Vec<Vec<u8>> {
    let hello = Message::Hello(Hello {
        version: crate::PROTOCOL_VERSION,
        node_name: "edge-1".into(),
        node_ips: vec![
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
        agent_version: "0.1.0".into(),
        capabilities: vec!["upstream".into()],
    });
    let messages = [
        hello,
        Message::HelloAck(HelloAck::Accepted {
            server_version: "0.1.0".into(),
            reconnect_spread_ms: 20_000,
        }),
        Message::HelloAck(HelloAck::Rejected {
            reason: RejectReason::IpNotInCertificate,
            message: "10.0.0.9 is not in the certificate".into(),
        }),
        Message::Open(OpenStream {
            stream_id: 7,
            target: target("10.0.0.5:10250"),
        }),
        Message::Open(OpenStream {
            stream_id: u64::MAX,
            target: target("[::1]:8080"),
        }),
        Message::DialResult(DialResult::Connected),
        Message::DialResult(DialResult::Failed {
            kind: DialErrorKind::Refused,
            message: "connection refused".into(),
        }),
        Message::Service(AgentService::Apiserver),
    ];
    let mut out: Vec<Vec<u8>> = messages.iter().map(frame).collect();
    // Two frames back to back, as a control stream carries them.
    out.push([frame(&messages[0]), frame(&messages[1])].concat());
    // The target's first byte says where it splits the rest into two pushes.
    out.iter().map(|f| [&[3u8][..], f].concat()).collect()
}

fn packets() -> Vec<Packet> {
    vec![
        Packet::DialRequest {
            protocol: "tcp".into(),
            address: "10.0.0.5:10250".into(),
            random: 42,
        },
        Packet::DialRequest {
            protocol: "tcp".into(),
            address: "[fd00::5]:10250".into(),
            random: -1,
        },
        Packet::DialResponse {
            error: String::new(),
            connect_id: 1,
            random: 42,
        },
        Packet::DialResponse {
            error: "no agent for node edge-9".into(),
            connect_id: 0,
            random: 42,
        },
        Packet::CloseRequest { connect_id: 1 },
        Packet::CloseResponse {
            error: String::new(),
            connect_id: 1,
        },
        Packet::Data {
            connect_id: 1,
            error: String::new(),
            data: Bytes::from_static(b"GET /healthz HTTP/1.1\r\n\r\n"),
        },
        Packet::DialClose { random: 42 },
        Packet::Drain,
    ]
}

fn seeds() -> Seeds {
    let mut all = Seeds::new();
    let named = |items: Vec<Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, b)| (format!("seed-{i:02}"), b))
            .collect()
    };
    all.insert("frame", named(frames()));
    let encoded: Vec<Vec<u8>> = packets()
        .iter()
        .map(|p| konnectivity::encode(p).to_vec())
        .collect();
    all.insert("konnectivity", named(encoded.clone()));
    // gRPC framing: a step byte, then length-prefixed packets back to back.
    let stream: Vec<u8> = encoded
        .iter()
        .flat_map(|p| crate::grpc::frame(p).to_vec())
        .collect();
    all.insert(
        "grpc_message",
        named(vec![
            [&[7u8][..], &stream].concat(),
            [&[255u8][..], &crate::grpc::frame(&encoded[0])].concat(),
        ]),
    );
    let heads: Vec<&[u8]> = vec![
        b"CONNECT 10.0.0.5:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\x16\x03\x01",
        b"CONNECT edge-1:10250 HTTP/1.1\r\nHost: edge-1:10250\r\nUser-Agent: Go-http-client/1.1\r\n\r\n",
        b"CONNECT [fd00::5]:443 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    all.insert(
        "connect_head",
        named(heads.iter().map(|h| h.to_vec()).collect()),
    );
    let openssl = include_bytes!("../testdata/openssl-client-hello-edge-1.bin").to_vec();
    let rustls = rustls_hello("edge-1.nodes.example");
    let split = split_records(&rustls, 100);
    all.insert("tls_hello", named(vec![openssl, rustls, split]));
    all
}

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

#[test]
fn committed_fuzz_seeds_are_what_the_encoders_produce() {
    let write = std::env::var_os("WRITE_FUZZ_SEEDS").is_some();
    for (target, files) in seeds() {
        let dir = seed_dir().join(target);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, bytes) in files {
            let path = dir.join(&name);
            if write {
                std::fs::write(&path, &bytes).unwrap();
                continue;
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run WRITE_FUZZ_SEEDS=1 cargo test -p proto fuzz_seeds",
                    path.display()
                )
            });
            let same = if target == "tls_hello" {
                // rustls picks a fresh random and key share every time: the
                // seed must still be a hello naming the same server.
                let named = crate::tls_hello::parse(&committed);
                named.is_ok() && named == crate::tls_hello::parse(&bytes)
            } else {
                committed == bytes
            };
            assert!(
                same,
                "{} is stale; run WRITE_FUZZ_SEEDS=1 cargo test -p proto fuzz_seeds",
                path.display()
            );
        }
    }
}
