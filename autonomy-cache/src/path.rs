//! Strict parsing of a request target: path segments and query parameters,
//! percent-decoded, with traversal tricks refused.

use super::error::RequestError;

/// Longest request target (path and query) the proxy accepts.
pub const MAX_TARGET_BYTES: usize = 16 * 1024;

/// The decoded path segments of `path` (without the query), refusing dot segments
/// (plain or encoded), `//`, encoded separators and control characters. A single
/// trailing `/` is allowed and dropped.
pub(crate) fn split_path(path: &str) -> Result<Vec<String>, RequestError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(RequestError::NotAbsolute { path: path.into() });
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/').map(decode_segment).collect()
}

fn decode_segment(raw: &str) -> Result<String, RequestError> {
    if raw.is_empty() {
        return Err(RequestError::EmptySegment);
    }
    let decoded = percent_decode(raw, false)?;
    if decoded == "." || decoded == ".." {
        return Err(RequestError::DotSegment {
            segment: raw.into(),
        });
    }
    if decoded.contains(['/', '\\']) {
        return Err(RequestError::EncodedSeparator {
            segment: raw.into(),
        });
    }
    refuse_control(&decoded, raw)?;
    Ok(decoded)
}

/// `name=value` pairs of a query string, decoded (`+` is a space); the first
/// occurrence of a name wins, like Go's `url.Values.Get`.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, RequestError> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = percent_decode(name, true)?;
        let value = percent_decode(value, true)?;
        refuse_control(&name, part)?;
        refuse_control(&value, part)?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

fn refuse_control(decoded: &str, raw: &str) -> Result<(), RequestError> {
    if decoded.chars().any(char::is_control) {
        return Err(RequestError::ControlCharacter { part: raw.into() });
    }
    Ok(())
}

/// Percent-decodes `raw` into UTF-8; `plus_is_space` for query components.
fn percent_decode(raw: &str, plus_is_space: bool) -> Result<String, RequestError> {
    let bad = || RequestError::BadPercentEncoding { part: raw.into() };
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_decoded_and_trailing_slash_dropped() {
        assert_eq!(split_path("/api/v1/pods/").unwrap(), ["api", "v1", "pods"]);
        assert_eq!(split_path("/a%2Db").unwrap(), ["a-b"]);
        assert!(split_path("/").unwrap().is_empty());
    }

    #[test]
    fn traversal_tricks_are_refused() {
        let dot = |s: &str| RequestError::DotSegment { segment: s.into() };
        assert_eq!(split_path("/api/../secrets"), Err(dot("..")));
        assert_eq!(split_path("/api/./v1"), Err(dot(".")));
        assert_eq!(split_path("/api/%2e%2E/x"), Err(dot("%2e%2E")));
        assert_eq!(split_path("/api/.%2e"), Err(dot(".%2e")));
        assert_eq!(split_path("/api//v1"), Err(RequestError::EmptySegment));
        assert_eq!(
            split_path("/api/a%2fb"),
            Err(RequestError::EncodedSeparator {
                segment: "a%2fb".into()
            })
        );
        assert_eq!(
            split_path("/api/a%00"),
            Err(RequestError::ControlCharacter {
                part: "a%00".into()
            })
        );
        assert_eq!(
            split_path("/api/%zz"),
            Err(RequestError::BadPercentEncoding { part: "%zz".into() })
        );
        assert_eq!(
            split_path("/api/%e"),
            Err(RequestError::BadPercentEncoding { part: "%e".into() })
        );
        assert_eq!(
            split_path("api/v1"),
            Err(RequestError::NotAbsolute {
                path: "api/v1".into()
            })
        );
    }

    #[test]
    fn query_values_are_form_decoded() {
        let pairs = query_pairs("labelSelector=app%3Dweb%2Ctier+in+(a,b)&watch&x=").unwrap();
        assert_eq!(
            pairs,
            [
                (
                    "labelSelector".to_string(),
                    "app=web,tier in (a,b)".to_string()
                ),
                ("watch".into(), "".into()),
                ("x".into(), "".into())
            ]
        );
        assert!(matches!(
            query_pairs("fieldSelector=a%00"),
            Err(RequestError::ControlCharacter { .. })
        ));
    }
}
