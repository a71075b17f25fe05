//! Offline status writes: a strategic merge patch and a JSON patch applied to a
//! cached object, both from the input (target, NUL, patch). Never panics; an
//! object patched with `{}` is unchanged; a successful result is an object.
#![no_main]

use autonomy_cache::json_patch;
use autonomy_cache::strategic_merge::{apply, Schema};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (target, patch) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"{}"[..], data),
    };
    let Ok(target) = serde_json::from_slice::<Value>(target) else {
        return;
    };
    let Ok(patch) = serde_json::from_slice::<Value>(patch) else {
        return;
    };
    for schema in [Schema::POD, Schema::NODE, Schema::OBJECT] {
        if let Ok(result) = apply(&target, &patch, &schema) {
            assert!(result.is_object());
        }
        if target.is_object() {
            let same = apply(&target, &Value::Object(Default::default()), &schema);
            assert_eq!(same.as_ref(), Ok(&target));
        }
    }
    let _ = json_patch::apply(&target, &patch);
});
