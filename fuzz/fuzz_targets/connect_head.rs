//! HTTP CONNECT request heads (`proto::connect_head`), the first bytes every
//! `--uds` and `--proxy-addr` client sends: never panics, an accepted head
//! lies within the buffer and the size limit, and the verdict does not depend
//! on bytes after the head (tunnel payload).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::connect_head::{parse_connect, HeadError, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    match parse_connect(data) {
        Ok(Some(req)) => {
            assert!(req.head_len <= data.len() && req.head_len <= MAX_HEAD);
            let again = parse_connect(&data[..req.head_len]).expect("the head alone parses");
            assert_eq!(again, Some(req));
        }
        Ok(None) => assert!(data.len() < MAX_HEAD),
        Err(e) => {
            let status = e.http_status();
            assert!(matches!(status, 400 | 405 | 431), "{e}");
            if let HeadError::TooLarge = e {
                assert_eq!(status, 431);
            }
        }
    }
});
