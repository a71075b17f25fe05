//! Kubernetes `Status` objects: the error body every client-go prints well.

use bytes::Bytes;

/// A `v1 Status` failure object with `code`, `reason` (e.g. `NotFound`,
/// `ServiceUnavailable`) and `message`, as JSON; the proxy uses it for its own errors too.
pub fn status_json(code: u16, reason: &str, message: &str) -> Bytes {
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    Bytes::from(status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_a_kubernetes_failure_object() {
        let body = status_json(503, "ServiceUnavailable", "offline: \"x\" not cached");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["kind"], "Status");
        assert_eq!(value["apiVersion"], "v1");
        assert_eq!(value["status"], "Failure");
        assert_eq!(value["code"], 503);
        assert_eq!(value["reason"], "ServiceUnavailable");
        assert_eq!(value["message"], "offline: \"x\" not cached");
    }
}
