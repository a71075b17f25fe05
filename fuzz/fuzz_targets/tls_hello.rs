//! TLS ClientHello peeking for SNI routing (`proto::tls_hello`), the first
//! bytes of every `--kubelet-addr` connection: never panics, a name that
//! comes out is a valid lower-case host name, and the verdict does not change
//! when more bytes follow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::tls_hello::parse;

fuzz_target!(|data: &[u8]| {
    let first = parse(data);
    if let Ok(Some(name)) = &first {
        assert!(!name.is_empty() && name.len() <= 255, "{name:?}");
        assert!(
            name.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'-'
                || b == b'_'
                || b == b'.'),
            "{name:?}"
        );
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x17\x03\x03\x00\x01x");
        assert_eq!(
            parse(&longer).ok().flatten().as_deref(),
            Some(name.as_str())
        );
    }
});
