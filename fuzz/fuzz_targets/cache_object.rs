//! What the autonomy cache parses and stores: object and list bodies from the
//! apiserver, and values read back from its disk store. A list item stored
//! with added `kind`/`apiVersion` must still be an object with the same
//! identity; a stored value reads back as written.
#![no_main]

use autonomy_cache::fuzzing::{decode_stored_value, encode_stored_value, parse_list, parse_object};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(object) = parse_object(data) {
        assert!(!object.name.is_empty());
        assert_eq!(&object.json[..], data);
    }
    if let Ok(items) = parse_list(data, false) {
        for item in items {
            let again = parse_object(&item.json).expect("a stored list item parses as an object");
            assert_eq!(again.name, item.name);
            assert_eq!(again.namespace, item.namespace);
            assert_eq!(again.resource_version, item.resource_version);
        }
    }
    // From disk: any bytes decode without panic; a written value reads back.
    let (rv, json) = decode_stored_value(data);
    let rewritten = encode_stored_value(rv, json);
    let (rv2, json2) = decode_stored_value(&rewritten);
    assert_eq!((rv, json), (rv2, json2));
});
