//! Kubernetes `Status` errors, shaped exactly like kube-apiserver's so client-go decodes them.

use serde_json::{json, Value};

/// An error the fake apiserver answers with a `Status` object (never a bare text body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404 for a named object that does not exist.
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    /// 404 for a path that names no known resource or endpoint.
    #[error("the server could not find the requested resource")]
    UnknownPath,
    /// 409 on create when the name is taken.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    /// 409 on update when the body's resourceVersion is not the stored one.
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict { resource: String, name: String },
    /// 400 for a body, selector or parameter the server cannot use.
    #[error("{0}")]
    BadRequest(String),
    /// 405 for a verb the path does not support.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 410 for a list at a resourceVersion older than the kept history.
    #[error("The resourceVersion for the provided list is too old.")]
    ListExpired,
    /// 410 for a continue token older than the kept history.
    #[error("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")]
    ContinueExpired,
    /// 410 for a watch from a resourceVersion older than the kept history.
    #[error("too old resource version: {requested} ({oldest})")]
    WatchExpired { requested: u64, oldest: u64 },
    /// 413 for a request body over the limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// 415 for a body format the fake does not decode (protobuf, YAML, JSON patch, apply).
    #[error("the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/strategic-merge-patch+json")]
    UnsupportedMediaType,
    /// 504 for a list at a resourceVersion the server has not reached yet.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: u64, current: u64 },
    /// 422 for an object the validation refuses (e.g. a pod update changing more than it may).
    #[error("{kind} \"{name}\" is invalid: {}", FieldError::join(causes))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<FieldError>,
    },
    /// Any code and reason a test injects with `Fault::Status`.
    #[error("injected failure: {reason}")]
    Injected { code: u16, reason: String },
}

impl ApiError {
    /// The HTTP status code kube-apiserver uses for this error.
    pub fn code(&self) -> u16 {
        match self {
            Self::NotFound { .. } | Self::UnknownPath => 404,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => 409,
            Self::BadRequest(_) => 400,
            Self::MethodNotAllowed => 405,
            Self::ListExpired | Self::ContinueExpired | Self::WatchExpired { .. } => 410,
            Self::TooLarge { .. } => 413,
            Self::UnsupportedMediaType => 415,
            Self::TooLargeResourceVersion { .. } => 504,
            Self::Invalid { .. } => 422,
            Self::Injected { code, .. } => *code,
        }
    }

    /// The `reason` field (a `metav1.StatusReason`).
    pub fn reason(&self) -> String {
        match self {
            Self::NotFound { .. } | Self::UnknownPath => "NotFound".into(),
            Self::AlreadyExists { .. } => "AlreadyExists".into(),
            Self::Conflict { .. } => "Conflict".into(),
            Self::BadRequest(_) => "BadRequest".into(),
            Self::MethodNotAllowed => "MethodNotAllowed".into(),
            Self::ListExpired | Self::ContinueExpired | Self::WatchExpired { .. } => {
                "Expired".into()
            }
            Self::TooLarge { .. } => "RequestEntityTooLarge".into(),
            Self::UnsupportedMediaType => "UnsupportedMediaType".into(),
            Self::TooLargeResourceVersion { .. } => "Timeout".into(),
            Self::Invalid { .. } => "Invalid".into(),
            Self::Injected { reason, .. } => reason.clone(),
        }
    }

    /// The full `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            Self::NotFound { resource, name }
            | Self::AlreadyExists { resource, name }
            | Self::Conflict { resource, name } => Some(json!({ "name": name, "kind": resource })),
            Self::UnknownPath => Some(json!({})),
            Self::Invalid { kind, name, causes } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": causes.iter().map(FieldError::to_cause).collect::<Vec<_>>(),
            })),
            Self::TooLargeResourceVersion { .. } => Some(json!({
                "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }],
                "retryAfterSeconds": 1,
            })),
            _ => None,
        };
        if let (Some(details), Some(map)) = (details, status.as_object_mut()) {
            map.insert("details".into(), details);
        }
        status
    }
}

/// One field's validation error, as apimachinery's `field.Error` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.tolerations[0].effect`.
    pub field: String,
    pub kind: FieldErrorKind,
    pub detail: String,
}

/// The error types the fake's validation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    Forbidden,
    /// With the refused value, printed quoted.
    Invalid(String),
    /// With the refused value and the supported ones.
    Unsupported(String, Vec<String>),
}

impl FieldError {
    fn body(&self) -> String {
        match &self.kind {
            FieldErrorKind::Forbidden => format!("Forbidden: {}", self.detail),
            FieldErrorKind::Invalid(v) => format!("Invalid value: {v:?}: {}", self.detail),
            FieldErrorKind::Unsupported(v, ok) => {
                let ok: Vec<String> = ok.iter().map(|o| format!("{o:?}")).collect();
                format!(
                    "Unsupported value: {v:?}: supported values: {}",
                    ok.join(", ")
                )
            }
        }
    }

    /// `field: Type: detail`.
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.body())
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::Unsupported(..) => "FieldValueNotSupported",
        }
    }

    fn to_cause(&self) -> Value {
        json!({ "reason": self.reason(), "message": self.body(), "field": self.field })
    }

    /// One error as is, several as `[a, b]` (apimachinery's `ErrorList.ToAggregate`).
    fn join(errors: &[FieldError]) -> String {
        match errors {
            [one] => one.message(),
            many => {
                let all: Vec<String> = many.iter().map(FieldError::message).collect();
                format!("[{}]", all.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_the_apiserver_shape() {
        let status = ApiError::NotFound {
            resource: "pods".into(),
            name: "x".into(),
        }
        .to_status();
        assert_eq!(
            status,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"pods \"x\" not found","reason":"NotFound",
                "details":{"name":"x","kind":"pods"},"code":404})
        );
    }

    #[test]
    fn watch_expiry_is_a_410_with_reason_expired() {
        let err = ApiError::WatchExpired {
            requested: 3,
            oldest: 9,
        };
        assert_eq!(err.code(), 410);
        assert_eq!(err.to_status()["reason"], "Expired");
        assert_eq!(
            err.to_status()["message"],
            "too old resource version: 3 (9)"
        );
    }

    #[test]
    fn injected_errors_keep_the_test_s_code_and_reason() {
        let err = ApiError::Injected {
            code: 429,
            reason: "TooManyRequests".into(),
        };
        assert_eq!(err.to_status()["code"], 429);
        assert_eq!(err.to_status()["reason"], "TooManyRequests");
    }
}
