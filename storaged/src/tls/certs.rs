//! Issuing the cluster's certificates (rcgen, no OpenSSL): a CA (`ca.crt`, `ca.key`) and
//! per-identity leaf certificates in a `--tls-dir` layout (`ca.crt`, `tls.crt`, `tls.key`).

use std::net::IpAddr;
use std::path::Path;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::identity::{Identity, URI_SCHEME};
use crate::{Error, Result};

const CA_NAME: &str = "cairn cluster CA";
const CA_YEARS: i32 = 10;
const LEAF_YEARS: i32 = 1;

/// What to put in a leaf certificate besides its identity.
#[derive(Debug, Clone)]
pub struct Issue {
    pub identity: Identity,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

fn cert_err(what: &str, e: rcgen::Error) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

/// The current year (UTC), to start validity on 1 January of it.
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

fn validity(params: &mut CertificateParams, years: i32) {
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years + 1, 1, 1);
}

/// The CA's parameters; rebuilt to sign (its subject is all an issuer needs).
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Writes `file` readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Creates a CA in `dir` (`ca.crt`, `ca.key`); refuses to replace an existing one.
pub fn init_ca(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        return Err(Error::AlreadyExists(format!(
            "{} exists: a CA is already there",
            key_path.display()
        )));
    }
    let key = KeyPair::generate().map_err(|e| cert_err("CA key", e))?;
    let mut params = ca_params();
    validity(&mut params, CA_YEARS);
    let cert = params
        .self_signed(&key)
        .map_err(|e| cert_err("CA certificate", e))?;
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(dir.join("ca.crt"), cert.pem())?;
    Ok(())
}

/// Issues a certificate for `req.identity`, signed by the CA in `ca_dir`, into `out`
/// (`ca.crt`, `tls.crt`, `tls.key`).
pub fn issue(ca_dir: &Path, req: &Issue, out: &Path) -> Result<()> {
    let ca_cert = std::fs::read_to_string(ca_dir.join("ca.crt"))?;
    let ca_key = std::fs::read_to_string(ca_dir.join("ca.key"))?;
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|e| cert_err("ca.key", e))?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let identity = req.identity.to_string();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, &identity);
    let ia5 = |s: String| -> Result<Ia5String> {
        Ia5String::try_from(s.as_str())
            .map_err(|_| Error::invalid("dns", format!("`{s}` is not an ASCII name")))
    };
    params.subject_alt_names = vec![SanType::URI(ia5(format!("{URI_SCHEME}{identity}"))?)];
    if matches!(req.identity, Identity::Node(_) | Identity::StorageNode(_)) {
        // Clients verify every storaged as this one name (see cairn_client::SERVER_NAME).
        let name = cairn_client::SERVER_NAME.to_string();
        params.subject_alt_names.push(SanType::DnsName(ia5(name)?));
    }
    for d in &req.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(ia5(d.clone())?));
    }
    params
        .subject_alt_names
        .extend(req.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_YEARS);
    let key = KeyPair::generate().map_err(|e| cert_err("key", e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| cert_err("certificate", e))?;

    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("ca.crt"), ca_cert)?;
    std::fs::write(out.join("tls.crt"), cert.pem())?;
    write_private(&out.join("tls.key"), &key.serialize_pem())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca).unwrap();
        assert!(matches!(init_ca(&ca), Err(Error::AlreadyExists(_))));
        for identity in [
            Identity::Node(3),
            Identity::CsiNode("node-b".into()),
            Identity::Controller,
            Identity::Admin,
        ] {
            let out = dir.path().join(identity.to_string());
            let req = Issue {
                identity: identity.clone(),
                ips: vec!["127.0.0.1".parse().unwrap()],
                dns: vec!["storaged-0".into()],
            };
            issue(&ca, &req, &out).unwrap();
            let files = cairn_client::TlsFiles::load(&out).unwrap();
            let pem = String::from_utf8(files.cert).unwrap();
            let der = pem_body(&pem);
            assert_eq!(Identity::from_cert_der(&der), Some(identity));
        }
    }

    /// The DER inside one PEM block (test-only base64 decoder).
    fn pem_body(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let bytes: Vec<u8> = b64.bytes().filter(|&c| c != b'=').map(val).collect();
        bytes
            .chunks(4)
            .flat_map(|c| {
                let n =
                    c.iter().fold(0u32, |acc, &v| (acc << 6) | u32::from(v)) << (6 * (4 - c.len()));
                let out = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
                out.into_iter().take(c.len() - 1)
            })
            .collect()
    }
}
