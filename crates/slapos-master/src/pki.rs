//! The master's certificate authority: it signs the server's own HTTPS
//! certificate and the client certificates of nodes (bound to a computer)
//! and users, as the real SlapOS master does. Keys are ECDSA P-256, made
//! with `rcgen`; every issued certificate is recorded in the store by the
//! SHA-256 of its DER, which is what requests are authenticated by (so a
//! revocation takes effect at once).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// What can go wrong with certificates and their files.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable PEM {what}: {message}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, PkiError>;

/// The files of the master's TLS setup (`[slapmaster]` settings).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate (PEM; may hold the chain).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The authority that issues client certificates (PEM).
    pub ca_cert: PathBuf,
    /// Its private key (PEM), needed only to issue certificates.
    pub ca_key: PathBuf,
}

/// Validity of issued certificates.
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 825;
/// Default validity of client certificates.
pub const CLIENT_DAYS: i64 = 365;

/// The hex SHA-256 of a certificate's DER: how the store knows it.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file; private keys are readable by their owner only.
fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as DER integers want.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

fn validity(params: &mut CertificateParams, days: i64) -> i64 {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    (params.not_after.unix_timestamp_nanos() / 1000) as i64
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "SlapOS master");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// What `ensure` made.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Created {
    pub ca: bool,
    pub server: bool,
}

/// Creates the authority and the server certificate when their files are
/// missing (existing files are kept). `hosts` are the server's names and
/// addresses (localhost and the loopback addresses are always included).
pub fn ensure(files: &TlsFiles, hosts: &[String]) -> Result<Created> {
    let mut created = Created::default();
    match (files.ca_cert.exists(), files.ca_key.exists()) {
        (true, true) => {}
        (false, false) => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = name("SlapOS master certificate authority");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.serial_number = Some(random_serial().0);
            validity(&mut params, CA_DAYS);
            let cert = params.self_signed(&key)?;
            write(&files.ca_key, &key.serialize_pem(), true)?;
            write(&files.ca_cert, &cert.pem(), false)?;
            created.ca = true;
        }
        (true, false) | (false, true) => {
            return Err(PkiError::Invalid(format!(
                "only one of {} and {} exists: give both (an authority and its key) or neither",
                files.ca_cert.display(),
                files.ca_key.display()
            )))
        }
    }
    if !(files.cert.exists() && files.key.exists()) {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        for h in hosts {
            let h = h.trim().trim_matches(['[', ']']);
            if !h.is_empty() && h != "0.0.0.0" && h != "::" && !names.iter().any(|n| n == h) {
                names.push(h.to_string());
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("SlapOS master");
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<std::result::Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial().0);
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, SERVER_DAYS);
        let ca = load_issuer(files)?;
        let cert = params.signed_by(&key, &ca)?;
        write(&files.key, &key.serialize_pem(), true)?;
        write(&files.cert, &cert.pem(), false)?;
        created.server = true;
    }
    Ok(created)
}

fn load_issuer(files: &TlsFiles) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::from_pem(&read(&files.ca_key)?).map_err(|e| PkiError::Pem {
        path: files.ca_key.clone(),
        what: "private key",
        message: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&read(&files.ca_cert)?, key).map_err(|e| PkiError::Pem {
        path: files.ca_cert.clone(),
        what: "certificate",
        message: e.to_string(),
    })
}

/// A client certificate just issued: the key is shown once, never stored.
#[derive(Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub fingerprint: String,
    pub serial: String,
    /// Microseconds since the epoch.
    pub not_after: i64,
}

/// Issues a client certificate for `common_name` (a computer reference or a
/// user name), signed by the authority.
pub fn issue_client(files: &TlsFiles, common_name: &str, days: i64) -> Result<Issued> {
    if !(1..=36500).contains(&days) {
        return Err(PkiError::Invalid(format!(
            "a certificate is valid for 1 to 36500 days, not {days}"
        )));
    }
    let issuer = load_issuer(files)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (serial, serial_hex) = random_serial();
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    let not_after = validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        fingerprint: fingerprint(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: serial_hex,
        not_after,
    })
}

/// Writes an issued certificate as `DIR/cert.pem` and `DIR/key.pem` (0600),
/// refusing to overwrite an existing key.
pub fn write_issued(issued: &Issued, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if key.exists() {
        return Err(PkiError::Invalid(format!(
            "{} exists: choose another --out-dir (a key is never overwritten)",
            key.display()
        )));
    }
    write(&key, &issued.key_pem, true)?;
    write(&cert, &issued.cert_pem, false)?;
    Ok((cert, key))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |message: String| PkiError::Pem {
        path: path.to_path_buf(),
        what: "certificate",
        message,
    };
    let certs = CertificateDer::pem_slice_iter(read(path)?.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The server's TLS configuration: its certificate, and client certificates
/// signed by the authority requested but optional (token users still
/// connect; handlers decide what a connection without one may do).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates(&files.cert)?;
    let key =
        PrivateKeyDer::from_pem_slice(read(&files.key)?.as_bytes()).map_err(|e| PkiError::Pem {
            path: files.key.clone(),
            what: "private key",
            message: e.to_string(),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(&files.ca_cert)? {
        roots.add(ca)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_server_and_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            ca_cert: dir.path().join("ca.crt"),
            ca_key: dir.path().join("ca.key"),
        };
        let made = ensure(&files, &["master.example".into()]).unwrap();
        assert_eq!(
            made,
            Created {
                ca: true,
                server: true
            }
        );
        // Kept on the second call.
        let before = std::fs::read(&files.ca_cert).unwrap();
        assert_eq!(ensure(&files, &[]).unwrap(), Created::default());
        assert_eq!(std::fs::read(&files.ca_cert).unwrap(), before);
        server_config(&files).unwrap();
        let issued = issue_client(&files, "COMP-1", 30).unwrap();
        assert_eq!(issued.fingerprint.len(), 64);
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(fingerprint(&der), issued.fingerprint);
        let out = dir.path().join("c");
        write_issued(&issued, &out).unwrap();
        assert!(write_issued(&issued, &out).is_err(), "no overwrite");
        assert!(issue_client(&files, "x", 0).is_err());
        // Half a pair is refused.
        std::fs::remove_file(&files.ca_key).unwrap();
        assert!(ensure(&files, &[]).is_err());
    }
}
