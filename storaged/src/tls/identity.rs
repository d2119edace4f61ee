//! Who a certificate speaks for: the `Identity` (`node:<id>`, `storage-node:<name>`,
//! `csi-node:<name>`, `controller`, `admin`) and reading it back from a peer's certificate (URI SAN `cairn:...`).

use std::fmt;
use std::str::FromStr;

/// The scheme of the URI SAN that carries an identity: `cairn:node:1`.
pub const URI_SCHEME: &str = "cairn:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A storaged node (`node:<id>`).
    Node(u64),
    /// The storaged of one Kubernetes node, whatever Raft id it has (`storage-node:<node
    /// name>`): issued before the id exists; it speaks for the id its name is registered
    /// under (`service::raft_sender::speaks_for`).
    StorageNode(String),
    /// The CSI node plugin of one Kubernetes node (`csi-node:<node name>`).
    CsiNode(String),
    /// cairn-csi's controller and cairn-provisioner.
    Controller,
    /// An operator (cairnctl).
    Admin,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node:{id}"),
            Identity::StorageNode(name) => write!(f, "storage-node:{name}"),
            Identity::CsiNode(name) => write!(f, "csi-node:{name}"),
            Identity::Controller => f.write_str("controller"),
            Identity::Admin => f.write_str("admin"),
        }
    }
}

impl FromStr for Identity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not an identity (node:<id>, storage-node:<node name>, \
                 csi-node:<node name>, controller or admin)"
            )
        };
        match s.split_once(':') {
            None if s == "controller" => Ok(Identity::Controller),
            None if s == "admin" => Ok(Identity::Admin),
            Some(("node", id)) => match id.parse::<u64>() {
                Ok(id) if id > 0 => Ok(Identity::Node(id)),
                _ => Err(bad()),
            },
            Some(("storage-node", name)) if valid_node_name(name) => {
                Ok(Identity::StorageNode(name.to_string()))
            }
            Some(("csi-node", name)) if valid_node_name(name) => {
                Ok(Identity::CsiNode(name.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

/// A Kubernetes node name: a DNS subdomain.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl Identity {
    /// The identity a certificate (DER) carries in its `cairn:` URI SAN, if any.
    pub fn from_cert_der(der: &[u8]) -> Option<Identity> {
        san_uris(der)?
            .into_iter()
            .find_map(|uri| uri.strip_prefix(URI_SCHEME)?.parse().ok())
    }
}

/// One DER element: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed value's contents.
fn elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, body, rest) = tlv(input)?;
        input = rest;
        Some((tag, body))
    })
}

const SEQUENCE: u8 = 0x30;
const EXTENSIONS: u8 = 0xa3;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const URI_NAME: u8 = 0x86;
/// subjectAltName, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// The URI entries of a certificate's subjectAltName extension.
fn san_uris(der: &[u8]) -> Option<Vec<String>> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let (_, exts) = elements(tbs).find(|(tag, _)| *tag == EXTENSIONS)?;
    let (SEQUENCE, exts, _) = tlv(exts)? else {
        return None;
    };
    let san = elements(exts).find_map(|(_, ext)| {
        let mut parts = elements(ext);
        match parts.next()? {
            (OID, oid) if oid == SAN_OID => {}
            _ => return None,
        }
        parts.find(|(tag, _)| *tag == OCTET_STRING).map(|(_, v)| v)
    })?;
    let (SEQUENCE, names, _) = tlv(san)? else {
        return None;
    };
    Some(
        elements(names)
            .filter(|(tag, _)| *tag == URI_NAME)
            .filter_map(|(_, v)| String::from_utf8(v.to_vec()).ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_text() {
        for s in [
            "node:1",
            "storage-node:node-2.zone-a",
            "csi-node:node-2.zone-a",
            "controller",
            "admin",
        ] {
            assert_eq!(s.parse::<Identity>().unwrap().to_string(), s);
        }
        for bad in [
            "node:0",
            "node:x",
            "csi-node:",
            "csi-node:Bad_Name",
            "storage-node:",
            "storage-node:Bad_Name",
            "root",
            "node",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn truncated_or_garbage_der_has_no_identity() {
        assert_eq!(Identity::from_cert_der(&[]), None);
        assert_eq!(Identity::from_cert_der(&[0x30, 0x84, 0xff, 0xff]), None);
        assert_eq!(Identity::from_cert_der(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
