//! TLS material: the configured certificate and key, or a self-signed pair generated
//! with rcgen on first start and kept under the state directory, so its fingerprint
//! stays stable across restarts (phones and labs can pin it). HTTPS and FTPS share it.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}; give a readable PEM file")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what} in PEM form")]
    Pem { path: PathBuf, what: &'static str },
    #[error("cannot write the generated certificate to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate chain and its key, plus where they are on disk (FTPS wants paths).
#[derive(Debug)]
pub struct TlsMaterial {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub generated: bool,
}

/// Loads the configured pair, or the generated one under `state_dir/tls/`, generating
/// it on first use with `names` (host names and IP addresses) as subject alt names.
pub fn load_or_generate(
    cert: Option<&Path>,
    key: Option<&Path>,
    state_dir: &Path,
    names: &[String],
) -> Result<TlsMaterial, TlsError> {
    let (cert_path, key_path, generated) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
        _ => {
            let dir = state_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !(c.is_file() && k.is_file()) {
                generate(&dir, &c, &k, names)?;
            }
            (c, k, true)
        }
    };
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path,
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
        path: key_path.clone(),
        what: "private key",
    })?;
    Ok(TlsMaterial {
        chain,
        key,
        cert_path,
        key_path,
        generated,
    })
}

fn generate(dir: &Path, cert: &Path, key: &Path, names: &[String]) -> Result<(), TlsError> {
    let mut sans: Vec<String> = vec!["provbox".into(), "localhost".into(), "127.0.0.1".into()];
    sans.extend(names.iter().cloned());
    sans.dedup();
    let mut params = rcgen::CertificateParams::new(sans)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "provbox provisioning appliance");
    dn.push(rcgen::DnType::OrganizationName, "provbox");
    params.distinguished_name = dn;
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(86_400)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
    let kp = rcgen::KeyPair::generate()?;
    let c = params.self_signed(&kp)?;
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    // Write both under temporary names and rename, so a crash never leaves half a pair.
    let (ct, kt) = (
        cert.with_extension("pem.tmp"),
        key.with_extension("pem.tmp"),
    );
    std::fs::write(&kt, kp.serialize_pem()).map_err(werr(&kt))?;
    std::fs::write(&ct, c.pem()).map_err(werr(&ct))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&kt, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&kt, key).map_err(werr(key))?;
    std::fs::rename(&ct, cert).map_err(werr(cert))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate");
    Ok(())
}
