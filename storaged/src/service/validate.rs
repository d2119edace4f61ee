//! Request validation for the volume API: every malformed field is rejected
//! with INVALID_ARGUMENT naming it, before any state is touched.

use std::collections::BTreeMap;

use cairn_proto::VolumeName;
use cairn_proto::cairn::v1 as pb;

use crate::chunks::SECTOR;
use crate::meta::catalog::VolumeKind;
use crate::meta::placement::{Term, validate_term};
use crate::{Error, Result};

/// Page size when a list request gives none, and the most one page holds.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// A list request's page: the key to start after (`None`: from the beginning), read from a
/// `page_token` this server issued with `prefix`, and how many entries to return.
pub fn page(token: &str, prefix: &str, size: u32) -> Result<(Option<String>, usize)> {
    let after = match token {
        "" => None,
        t => Some(t.strip_prefix(prefix).map(str::to_string).ok_or_else(|| {
            Error::invalid("page_token", format!("`{t}` was not issued by storaged"))
        })?),
    };
    let size = match size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    Ok((after, size))
}

/// The `next_page_token` after a page ending at `last`; empty when nothing follows.
pub fn next_page(prefix: &str, more: bool, last: Option<&str>) -> String {
    match (more, last) {
        (true, Some(last)) => format!("{prefix}{last}"),
        _ => String::new(),
    }
}

pub const DEFAULT_REPLICAS: u32 = 3;
pub const MAX_REPLICAS: u32 = 5;

/// A name field (volume, snapshot, node, copy target) under the name rule of [`VolumeName`];
/// INVALID_ARGUMENT naming the field and the part of the rule it breaks otherwise.
pub fn name(field: &'static str, v: &str) -> Result<VolumeName> {
    VolumeName::parse(v).map_err(|e| Error::invalid(field, e.to_string()))
}

pub fn size(v: u64) -> Result<()> {
    if v == 0 {
        return Err(Error::invalid(
            "size_bytes",
            "is required and must be greater than 0",
        ));
    }
    if !v.is_multiple_of(SECTOR) {
        return Err(Error::invalid(
            "size_bytes",
            format!("{v} is not a multiple of {SECTOR}"),
        ));
    }
    Ok(())
}

pub fn kind(v: i32) -> Result<VolumeKind> {
    match pb::VolumeKind::try_from(v) {
        Ok(pb::VolumeKind::Unspecified) | Ok(pb::VolumeKind::Replicated) => {
            Ok(VolumeKind::Replicated)
        }
        Ok(pb::VolumeKind::Local) => Ok(VolumeKind::Local),
        Err(_) => Err(Error::invalid("kind", format!("unknown volume kind {v}"))),
    }
}

pub fn replicas(v: u32, kind: VolumeKind) -> Result<u32> {
    match (kind, v) {
        (VolumeKind::Local, 0 | 1) => Ok(1),
        (VolumeKind::Local, n) => Err(Error::invalid(
            "replicas",
            format!("local volumes have exactly 1 replica, not {n}"),
        )),
        (VolumeKind::Replicated, 0) => Ok(DEFAULT_REPLICAS),
        (VolumeKind::Replicated, n) if n <= MAX_REPLICAS => Ok(n),
        (VolumeKind::Replicated, n) => Err(Error::invalid(
            "replicas",
            format!("{n} is out of range 1..={MAX_REPLICAS}"),
        )),
    }
}

pub fn terms(field: &'static str, v: &[pb::TopologyTerm]) -> Result<Vec<Term>> {
    v.iter()
        .map(|t| {
            let term: Term = t
                .segments
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>();
            validate_term(field, &term)?;
            Ok(term)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named() {
        let field = |r: Result<()>| match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected invalid argument, got {other:?}"),
        };
        let name = |f, v| name(f, v).map(|_| ());
        assert_eq!(field(name("name", "")), "name");
        assert_eq!(field(name("name", "a/b")), "name");
        assert_eq!(field(name("target", "..")), "target");
        assert_eq!(field(size(0)), "size_bytes");
        assert_eq!(field(size(1000)), "size_bytes");
        assert_eq!(
            field(replicas(6, VolumeKind::Replicated).map(|_| ())),
            "replicas"
        );
        assert_eq!(
            field(replicas(2, VolumeKind::Local).map(|_| ())),
            "replicas"
        );
        assert_eq!(replicas(0, VolumeKind::Replicated).unwrap(), 3);
        assert_eq!(field(kind(42).map(|_| ())), "kind");
        assert_eq!(super::name("name", "pvc-1").unwrap().as_str(), "pvc-1");
    }
}
