//! Watch response bodies as the node proxy records them: the line splitter
//! (`autonomy_cache::WatchDecoder`) fed in arbitrary chunks, then every line
//! through the event decoder. The splitter never holds more than its limit,
//! chunking never changes the lines, and a decoded object names itself.
#![no_main]

use autonomy_cache::fuzzing::parse_event;
use autonomy_cache::WatchDecoder;
use libfuzzer_sys::fuzz_target;

const MAX_EVENT: usize = 4096;

fn lines(body: &[u8], step: usize) -> Result<Vec<bytes::Bytes>, ()> {
    let mut dec = WatchDecoder::new(MAX_EVENT);
    let mut out = Vec::new();
    for chunk in body.chunks(step) {
        out.extend(dec.push(chunk).map_err(|_| ())?);
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = lines(body, body.len().max(1));
    let chunked = lines(body, usize::from(step).max(1));
    assert_eq!(whole, chunked, "chunking changed the event lines");
    for line in whole.iter().flatten() {
        assert!(line.len() <= MAX_EVENT);
        assert!(!line.contains(&b'\n'));
        if let Ok((_, Some(object))) = parse_event(line) {
            assert!(!object.name.is_empty());
            let reparsed: serde_json::Value =
                serde_json::from_slice(&object.json).expect("stored event object is JSON");
            assert_eq!(
                reparsed["metadata"]["name"].as_str(),
                Some(object.name.as_str())
            );
        }
    }
});
