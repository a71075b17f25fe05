//! Which HTTP/2 requests are Konnectivity calls (pure).

/// The one method served (the proto has no package).
pub const PROXY_PATH: &str = "/ProxyService/Proxy";

/// Why a request is not served, and how to say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a gRPC request at all: a plain HTTP status and text.
    Http { status: u16, message: String },
    /// A gRPC request we cannot serve: a gRPC status.
    Grpc { code: u32, message: String },
}

/// Checks method, content type and path of a request.
pub fn check_request(method: &str, path: &str, content_type: Option<&str>) -> Result<(), Refusal> {
    let is_grpc = content_type.is_some_and(|ct| {
        ct == "application/grpc"
            || ct.starts_with("application/grpc+")
            || ct.starts_with("application/grpc;")
    });
    if !is_grpc {
        return Err(Refusal::Http {
            status: 415,
            message: format!(
                "this endpoint serves gRPC ({PROXY_PATH}, content-type application/grpc) and HTTP CONNECT; got content-type {:?}",
                content_type.unwrap_or("")
            ),
        });
    }
    if method != "POST" {
        return Err(Refusal::Http {
            status: 405,
            message: format!("method {method} is not allowed for gRPC; use POST"),
        });
    }
    if path != PROXY_PATH {
        return Err(Refusal::Grpc {
            code: proto::grpc::status::UNIMPLEMENTED,
            message: format!("unknown method {path}; only {PROXY_PATH} is served"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn konnectivity_calls_pass() {
        assert_eq!(
            check_request("POST", PROXY_PATH, Some("application/grpc")),
            Ok(())
        );
        assert_eq!(
            check_request("POST", PROXY_PATH, Some("application/grpc+proto")),
            Ok(())
        );
    }

    #[test]
    fn others_are_refused_with_the_right_kind_of_answer() {
        assert!(matches!(
            check_request("GET", "/", None),
            Err(Refusal::Http { status: 415, .. })
        ));
        assert!(matches!(
            check_request("GET", PROXY_PATH, Some("application/grpc")),
            Err(Refusal::Http { status: 405, .. })
        ));
        assert!(matches!(
            check_request(
                "POST",
                "/grpc.health.v1.Health/Check",
                Some("application/grpc")
            ),
            Err(Refusal::Grpc { code: 12, .. })
        ));
        assert!(matches!(
            check_request("POST", PROXY_PATH, Some("application/grpcfoo")),
            Err(Refusal::Http { status: 415, .. })
        ));
    }
}
