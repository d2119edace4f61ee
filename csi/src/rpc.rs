//! What every RPC handler shares: the result type on the wire, the one conversion of the
//! driver's result into it, and required-field checks. The request log is `cairn_proto::rpclog`.

use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::error::{CsiError, Result};

/// What a CSI handler returns to tonic.
pub type RpcResult<T> = std::result::Result<Response<T>, Status>;

/// The driver's result on the wire (errors through `From<CsiError> for Status`).
pub fn reply<T>(result: Result<T>) -> RpcResult<T> {
    result.map(Response::new).map_err(Status::from)
}

/// INVALID_ARGUMENT naming `field` when it is empty.
pub fn require(value: &str, field: &str) -> Result<()> {
    if value.is_empty() {
        Err(CsiError::InvalidArgument(format!("{field} is required")))
    } else {
        Ok(())
    }
}

/// The value of an optional message field, or INVALID_ARGUMENT naming it.
pub fn require_some<'a, T>(value: Option<&'a T>, field: &str) -> Result<&'a T> {
    value.ok_or_else(|| CsiError::InvalidArgument(format!("{field} is required")))
}

/// The caller's deadline, from the `grpc-timeout` header (gRPC over HTTP/2: at most 8
/// digits and a unit, H M S m u n); None when the caller set none or sent one unreadable.
pub fn caller_deadline<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_are_named() {
        assert!(require("x", "name").is_ok());
        let e = require("", "volume_id").unwrap_err();
        assert_eq!(e.to_string(), "volume_id is required");
        let e = require_some::<u8>(None, "capacity_range").unwrap_err();
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
        assert_eq!(require_some(Some(&7), "x").unwrap(), &7);
    }

    #[test]
    fn replies_carry_the_driver_code() {
        assert_eq!(reply(Ok(3)).unwrap().into_inner(), 3);
        let s = reply::<()>(Err(CsiError::Aborted("busy".into()))).unwrap_err();
        assert_eq!((s.code(), s.message()), (tonic::Code::Aborted, "busy"));
    }

    #[test]
    fn the_callers_deadline_is_read_from_grpc_timeout() {
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
            caller_deadline(&r)
        };
        assert_eq!(caller_deadline(&Request::new(())), None);
        assert_eq!(with("2M"), Some(Duration::from_secs(120)));
        assert_eq!(with("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(with("3S"), Some(Duration::from_secs(3)));
        assert_eq!(with("S"), None);
        assert_eq!(with("123456789S"), None);
        assert_eq!(with("5x"), None);
        // What tonic's own client sends for a timeout reads back as that timeout.
        let mut r = Request::new(());
        r.set_timeout(Duration::from_secs(120));
        assert_eq!(caller_deadline(&r), Some(Duration::from_secs(120)));
    }
}
