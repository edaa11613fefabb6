//! `shardpay gen-cert`: a local certificate authority and server certificates signed by it, for
//! development and tests (rcgen; ECDSA P-256 keys). Never for production: the CA key sits
//! unprotected beside the certificates.
//!
//! Files in the directory: `ca.pem` and `ca-key.pem` (made once, reused by later runs so that
//! clients keep trusting the same CA), `server.pem` (the server certificate) and
//! `server-key.pem`. Every file is written atomically (a temporary file renamed over it), so a
//! server reloading on SIGHUP never reads half a file; keys are readable by their owner only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The CA certificate's file name.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "ca-key.pem";
/// The server certificate's file name.
pub const SERVER_CERT: &str = "server.pem";
/// The server key's file name.
pub const SERVER_KEY: &str = "server-key.pem";
/// Longest server certificate validity: browsers and the Mozilla guidelines allow 398 days at
/// most; sslyze's "intermediate" check wants 366 at most.
pub const SERVER_DAYS_MAX: u32 = 366;
/// Validity of a new CA.
const CA_DAYS: u64 = 5 * 365;
/// A certificate is valid from a little before it is made, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Why no certificate was made.
#[derive(Debug, thiserror::Error)]
pub enum CertgenError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen refused the parameters or an existing CA.
    #[error("{0}")]
    Certificate(String),
}

impl From<rcgen::Error> for CertgenError {
    fn from(error: rcgen::Error) -> Self {
        CertgenError::Certificate(error.to_string())
    }
}

/// A certificate authority that can sign server certificates.
pub struct Authority {
    certificate: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    /// A new CA named `common_name`, valid for five years from an hour ago.
    pub fn new(common_name: &str) -> Result<Authority, CertgenError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "shardpay development");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + Duration::from_secs(CA_DAYS * 86_400)).into();
        params.serial_number = Some(serial_number()?);
        let certificate = params.self_signed(&key)?;
        Ok(Authority { certificate, key })
    }

    /// A CA from its PEM certificate and key.
    pub fn from_pem(certificate: &str, key: &str) -> Result<Authority, CertgenError> {
        let key = KeyPair::from_pem(key)?;
        let params = CertificateParams::from_ca_cert_pem(certificate)?;
        // Signing needs rcgen's certificate object; re-signing the same parameters with the same
        // key gives one with the same subject and key, which is all a child's chain refers to.
        let certificate = params.self_signed(&key)?;
        Ok(Authority { certificate, key })
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> String {
        self.certificate.pem()
    }

    /// The CA key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from `not_before` to
    /// `not_after`: (certificate PEM, key PEM).
    pub fn issue(
        &self,
        names: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(String, String), CertgenError> {
        if names.is_empty() {
            return Err(CertgenError::Certificate(
                "a server certificate needs at least one name".to_string(),
            ));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial_number()?);
        let certificate = params.signed_by(&key, &self.certificate, &self.key)?;
        Ok((certificate.pem(), key.serialize_pem()))
    }
}

/// A random positive 16-byte serial number (RFC 5280 §4.1.2.2: positive, at most 20 bytes;
/// rcgen's own random serials may have the top bit set, which DER reads as negative).
fn serial_number() -> Result<rcgen::SerialNumber, CertgenError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|error| CertgenError::Certificate(format!("no randomness for a serial number: {error}")))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Whether the CA was made now (otherwise the directory's CA was reused).
    pub ca_created: bool,
    /// The CA certificate (give it to clients: `curl --cacert`).
    pub ca_cert: PathBuf,
    /// The server certificate (`tls.cert_path`).
    pub server_cert: PathBuf,
    /// The server key (`tls.key_path`).
    pub server_key: PathBuf,
}

/// Makes (or reuses) the CA in `dir` and writes a new server certificate for `names`, valid for
/// `days` from now.
pub fn generate(dir: &Path, names: &[String], days: u32) -> Result<Generated, CertgenError> {
    if days == 0 || days > SERVER_DAYS_MAX {
        return Err(CertgenError::Certificate(format!(
            "--days must be from 1 to {SERVER_DAYS_MAX}"
        )));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertgenError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_cert = dir.join(CA_CERT);
    let ca_key = dir.join(CA_KEY);
    let (authority, ca_created) = if ca_cert.exists() && ca_key.exists() {
        let certificate = std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
        let key = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        let authority = Authority::from_pem(&certificate, &key).map_err(|error| {
            CertgenError::Certificate(format!(
                "the CA in {} cannot be used ({error}); remove {CA_CERT} and {CA_KEY} to make a new one",
                dir.display()
            ))
        })?;
        (authority, false)
    } else {
        let authority = Authority::new("shardpay development CA")?;
        write_atomic(&ca_key, authority.key_pem().as_bytes(), 0o600)?;
        write_atomic(&ca_cert, authority.certificate_pem().as_bytes(), 0o644)?;
        (authority, true)
    };
    let now = SystemTime::now();
    let not_after = now + Duration::from_secs(u64::from(days) * 86_400);
    let (certificate, key) = authority.issue(names, now - BACKDATE, not_after)?;
    let server_cert = dir.join(SERVER_CERT);
    let server_key = dir.join(SERVER_KEY);
    write_atomic(&server_key, key.as_bytes(), 0o600)?;
    write_atomic(&server_cert, certificate.as_bytes(), 0o644)?;
    Ok(Generated {
        ca_created,
        ca_cert,
        server_cert,
        server_key,
    })
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, syncs it, and renames it over
/// `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertgenError> {
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let fail = |source| CertgenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(fail)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    if let Err(error) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(fail(error));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_reuses_the_ca_and_replaces_the_server_pair() {
        let dir = std::env::temp_dir().join(format!("shardpay-certgen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = generate(&dir, &names, 30).unwrap();
        assert!(first.ca_created);
        let ca = std::fs::read(&first.ca_cert).unwrap();
        let server = std::fs::read(&first.server_cert).unwrap();
        let second = generate(&dir, &names, 30).unwrap();
        assert!(!second.ca_created);
        assert_eq!(std::fs::read(&second.ca_cert).unwrap(), ca);
        assert_ne!(std::fs::read(&second.server_cert).unwrap(), server);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&second.server_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(generate(&dir, &names, SERVER_DAYS_MAX + 1).is_err());
        assert!(generate(&dir, &[], 30).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
