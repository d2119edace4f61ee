//! The harness's one error type and its single mapping to the wire:
//! a Kubernetes `Status` object plus the HTTP status code.

use serde_json::{Value, json};

/// One field-level cause of an `Invalid` error, as `Status.details.causes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    pub reason: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid".into(),
            message: message.into(),
        }
    }
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            field: field.into(),
            reason: "FieldValueForbidden".into(),
            message: message.into(),
        }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Cause {
            field: field.into(),
            reason: "FieldValueRequired".into(),
            message: "Required value".into(),
        }
    }
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        resource: String,
        group: String,
        name: String,
    },
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        resource: String,
        group: String,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {message}")]
    Conflict {
        resource: String,
        group: String,
        name: String,
        message: String,
    },
    #[error("{kind} \"{name}\" is invalid: {}", causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>().join(", "))]
    Invalid {
        kind: String,
        group: String,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    /// A credential the API server did not issue, or one no longer valid.
    #[error("Unauthorized")]
    Unauthorized,
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// No media type in the request's Accept can be served; the ones that can.
    #[error("only the following media types are accepted: {0}")]
    NotAcceptable(String),
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<cairn_netns::Error> for Error {
    fn from(e: cairn_netns::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

impl Error {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }

    pub fn code(&self) -> u16 {
        match self {
            Error::NotFound { .. } | Error::NoRoute => 404,
            Error::AlreadyExists { .. } | Error::Conflict { .. } => 409,
            Error::Invalid { .. } => 422,
            Error::BadRequest(_) => 400,
            Error::Forbidden(_) => 403,
            Error::Unauthorized => 401,
            Error::MethodNotAllowed => 405,
            Error::UnsupportedMediaType(_) => 415,
            Error::NotAcceptable(_) => 406,
            Error::Gone { .. } => 410,
            Error::Internal(_) => 500,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotFound { .. } | Error::NoRoute => "NotFound",
            Error::AlreadyExists { .. } => "AlreadyExists",
            Error::Conflict { .. } => "Conflict",
            Error::Invalid { .. } => "Invalid",
            Error::BadRequest(_) => "BadRequest",
            Error::Forbidden(_) => "Forbidden",
            Error::Unauthorized => "Unauthorized",
            Error::MethodNotAllowed => "MethodNotAllowed",
            Error::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Error::NotAcceptable(_) => "NotAcceptable",
            Error::Gone { .. } => "Expired",
            Error::Internal(_) => "InternalError",
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists { .. })
    }

    /// The `Status` object the API server sends for this error.
    pub fn to_status(&self) -> Value {
        let mut details = serde_json::Map::new();
        match self {
            Error::NotFound {
                resource,
                group,
                name,
            }
            | Error::AlreadyExists {
                resource,
                group,
                name,
            }
            | Error::Conflict {
                resource,
                group,
                name,
                ..
            } => {
                details.insert("name".into(), json!(name));
                details.insert("group".into(), json!(group));
                details.insert("kind".into(), json!(resource));
            }
            Error::Invalid {
                kind,
                group,
                name,
                causes,
            } => {
                details.insert("name".into(), json!(name));
                details.insert("group".into(), json!(group));
                details.insert("kind".into(), json!(kind));
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details.insert("causes".into(), Value::Array(causes));
            }
            _ => {}
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        // Go's StatusDetails.group is omitempty: the core group is left out.
        if details.get("group").is_some_and(|g| g == "") {
            details.remove("group");
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_status_names_the_field() {
        let e = Error::Invalid {
            kind: "PersistentVolumeClaim".into(),
            group: "".into(),
            name: "data".into(),
            causes: vec![Cause::invalid(
                "spec.resources.requests.storage",
                "quantities must match the regular expression",
            )],
        };
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(
            s["details"]["causes"][0]["field"],
            "spec.resources.requests.storage"
        );
    }
}
