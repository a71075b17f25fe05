//! Tests of [`super::parse`] with ClientHellos from real clients (rustls in
//! process, OpenSSL's `s_client` captured in `testdata/`) and broken ones.

use std::sync::Arc;

use super::*;

/// The bytes `openssl s_client -servername edge-1` sent first (OpenSSL 3.0).
const OPENSSL_HELLO: &[u8] = include_bytes!("../testdata/openssl-client-hello-edge-1.bin");

/// The first flight of a rustls client connecting to `name`.
pub(crate) fn rustls_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// `hello` (one record) re-framed as records of at most `chunk` body bytes.
pub(crate) fn split_records(hello: &[u8], chunk: usize) -> Vec<u8> {
    let body = &hello[5..];
    let mut out = Vec::new();
    for part in body.chunks(chunk) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[test]
fn real_client_hellos_name_their_server() {
    assert_eq!(parse(OPENSSL_HELLO), Ok(Some("edge-1".into())));
    let h = rustls_hello("Edge-2.Nodes.Example");
    assert_eq!(parse(&h), Ok(Some("edge-2.nodes.example".into())));
}

#[test]
fn every_prefix_asks_for_more() {
    for hello in [OPENSSL_HELLO.to_vec(), rustls_hello("edge-1")] {
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Ok(None), "cut at {cut}");
        }
    }
}

#[test]
fn a_hello_split_over_several_records_is_reassembled() {
    let hello = rustls_hello("edge-1");
    for chunk in [1, 7, 100] {
        let split = split_records(&hello, chunk);
        assert_eq!(parse(&split), Ok(Some("edge-1".into())), "chunk {chunk}");
        for cut in 0..split.len() {
            assert_eq!(parse(&split[..cut]), Ok(None), "chunk {chunk} cut {cut}");
        }
    }
}

#[test]
fn bytes_after_the_hello_are_ignored() {
    let mut h = OPENSSL_HELLO.to_vec();
    h.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
    assert_eq!(parse(&h), Ok(Some("edge-1".into())));
}

#[test]
fn ip_literal_clients_send_no_server_name() {
    // rustls (like curl and Go) omits SNI when dialing an IP address.
    let h = rustls_hello("10.0.0.5");
    assert_eq!(parse(&h), Err(HelloError::NoServerName));
}

#[test]
fn other_protocols_are_not_tls() {
    for first in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        &[0x80, 0x2e, 0x01, 0x03, 0x01][..], // SSLv2-compatible hello
        &[22, 2, 0, 0, 5][..],
    ] {
        assert_eq!(parse(first), Err(HelloError::NotTls), "{first:?}");
    }
}

#[test]
fn other_handshake_messages_and_records_are_refused() {
    // A ServerHello (type 2) where a ClientHello belongs.
    let mut h = rustls_hello("edge-1");
    h[5] = 2;
    assert_eq!(parse(&h), Err(HelloError::NotClientHello));
    // An alert record in the middle of a split hello.
    let split = split_records(&rustls_hello("edge-1"), 50);
    let mut broken = split[..55].to_vec();
    broken.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
    assert_eq!(parse(&broken), Err(HelloError::NotClientHello));
}

#[test]
fn wire_lengths_are_never_trusted() {
    // A record longer than TLS allows.
    assert_eq!(
        parse(&[22, 3, 1, 0x40, 0x01]),
        Err(HelloError::RecordTooLong(0x4001))
    );
    // A handshake header announcing 16 MiB.
    assert_eq!(
        parse(&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]),
        Err(HelloError::TooLarge)
    );
    assert_eq!(
        parse(&[22, 3, 1, 0, 0]),
        Err(HelloError::Truncated("empty handshake record"))
    );
    // The extensions block claims more bytes than the message holds.
    let mut h = OPENSSL_HELLO.to_vec();
    let ext_len_at = 5 + 4 + 2 + 32 + 1 + 32; // header, version, random, session id (32)
    let ext_len_at = {
        let cs = u16::from_be_bytes([h[ext_len_at], h[ext_len_at + 1]]) as usize;
        let comp_at = ext_len_at + 2 + cs;
        comp_at + 1 + h[comp_at] as usize
    };
    h[ext_len_at] = 0xff;
    assert_eq!(parse(&h), Err(HelloError::Truncated("extensions")));
}

#[test]
fn a_hello_of_the_maximum_size_is_accepted_beyond_it_refused() {
    // A padding extension (21) grows a real hello to exactly MAX_HELLO.
    let grow = |to: usize| {
        let mut h = rustls_hello("edge-1");
        let msg_len = h.len() - 5;
        let pad = to - msg_len - 4;
        let ext_at = {
            let mut at = 5 + 4 + 2 + 32;
            at += 1 + h[at] as usize;
            at += 2 + u16::from_be_bytes([h[at], h[at + 1]]) as usize;
            at + 1 + h[at] as usize
        };
        let exts = u16::from_be_bytes([h[ext_at], h[ext_at + 1]]) as usize + 4 + pad;
        h[ext_at..ext_at + 2].copy_from_slice(&(exts as u16).to_be_bytes());
        h.extend_from_slice(&[0, 21]);
        h.extend_from_slice(&(pad as u16).to_be_bytes());
        h.resize(h.len() + pad, 0);
        let body = (h.len() - 9) as u32;
        h[6..9].copy_from_slice(&body.to_be_bytes()[1..]);
        split_records(&h, MAX_RECORD)
    };
    assert_eq!(parse(&grow(MAX_HELLO)), Ok(Some("edge-1".into())));
    assert_eq!(parse(&grow(MAX_HELLO + 1)), Err(HelloError::TooLarge));
}

#[test]
fn server_names_must_be_host_names() {
    let hello = rustls_hello("aaaaaa");
    let at = hello
        .windows(6)
        .position(|w| w == b"aaaaaa")
        .expect("name in hello");
    for bad in [&b"a\0aaaa"[..], b"aa..aa", b"aaaa a", b"\xff\xfeaaaa"] {
        let mut h = hello.clone();
        h[at..at + 6].copy_from_slice(bad);
        assert_eq!(parse(&h), Err(HelloError::BadServerName), "{bad:?}");
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap stand-in for the fuzz target: every single-byte corruption of
    // real hellos, and every truncation of them inside the message.
    for hello in [OPENSSL_HELLO.to_vec(), rustls_hello("edge-1")] {
        for i in 0..hello.len() {
            for b in [0u8, 1, 0x7f, 0xff] {
                let mut h = hello.clone();
                h[i] = b;
                let _ = parse(&h);
            }
        }
    }
}

#[test]
fn alerts_are_fatal_alert_records() {
    assert_eq!(
        fatal_alert(AlertDescription::UnrecognizedName),
        [21, 3, 3, 0, 2, 2, 112]
    );
}
