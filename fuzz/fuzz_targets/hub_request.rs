//! The node proxy's request parser (`autonomy_cache::RequestInfo`), which
//! every kubelet, kube-proxy and pod request passes: never panics on any
//! method and target, and what it accepts is self-consistent: a decoded path
//! without traversal or control characters, selectors that parse, and the
//! same verdict when parsed twice.
#![no_main]

use autonomy_cache::{FieldSelector, LabelSelector, RequestInfo};
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT",
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let method = METHODS[usize::from(m) % METHODS.len()];
    let parsed = RequestInfo::parse(method, target);
    assert_eq!(parsed, RequestInfo::parse(method, target));
    let Ok(info) = parsed else {
        return;
    };
    assert!(info.path.starts_with('/'), "{info:?}");
    assert!(
        !info.path.split('/').any(|s| s == ".." || s == "."),
        "{info:?}"
    );
    assert!(!info.path.chars().any(char::is_control), "{info:?}");
    let _ = info.cacheable();
    if let Some(sel) = &info.label_selector {
        let _ = LabelSelector::parse(sel);
    }
    if let Some(sel) = &info.field_selector {
        let _ = FieldSelector::parse(sel);
    }
});
