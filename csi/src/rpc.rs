//! What every RPC handler shares: the result type on the wire, the one conversion of the
//! driver's result into it, and required-field checks. The request log is `cairn_proto::rpclog`.

use tonic::{Response, Status};

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
}
