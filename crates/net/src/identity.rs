//! Identities: an ECDSA P-256 private key and a self-signed certificate in a directory
//! (`key.pem`, `cert.pem`). Peers know each other only by the certificate's [`Fingerprint`].

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Fingerprint, NetError};

/// File holding the certificate, PEM.
pub const CERT_FILE: &str = "cert.pem";
/// File holding the private key (PKCS#8), PEM; readable by its owner only.
pub const KEY_FILE: &str = "key.pem";
/// The one name in every swrepl certificate; peers never check it (they pin fingerprints).
pub const SERVER_NAME: &str = "swrepl";
/// Certificates outlive the installation: a fingerprint is pinned on the peer, so a certificate
/// that expired would stop replication for no security gain.
const VALIDITY_YEARS: i32 = 100;

/// Creates a new identity in `dir` and returns its fingerprint.
///
/// `dir` is created (mode 0700 on unix) if needed. Refuses with [`NetError::IdentityExists`] when
/// `cert.pem` or `key.pem` is already there, unless `force`. Each file is written to a temporary
/// beside it and renamed into place, so a crash never leaves half a key; the key is created with
/// mode 0600 from the start, never world-readable even briefly.
pub fn init_identity(dir: &Path, force: bool) -> Result<Fingerprint, NetError> {
    let fail = |reason: String| NetError::Identity {
        dir: dir.to_owned(),
        reason,
    };
    create_private_dir(dir).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
    if !force && (dir.join(CERT_FILE).exists() || dir.join(KEY_FILE).exists()) {
        return Err(NetError::IdentityExists {
            dir: dir.to_owned(),
        });
    }

    let (cert_pem, key_pem, fingerprint) =
        generate_self_signed().map_err(|e| fail(format!("cannot generate a certificate: {e}")))?;
    write_atomically(dir, KEY_FILE, key_pem.as_bytes(), 0o600)
        .map_err(|e| fail(format!("cannot write {KEY_FILE}: {e}")))?;
    write_atomically(dir, CERT_FILE, cert_pem.as_bytes(), 0o644)
        .map_err(|e| fail(format!("cannot write {CERT_FILE}: {e}")))?;
    sync_dir(dir).map_err(|e| fail(format!("cannot sync the directory: {e}")))?;
    tracing::info!(dir = %dir.display(), %fingerprint, "created identity");
    Ok(fingerprint)
}

/// A loaded identity: certificate chain and private key, checked to belong together.
#[derive(Clone)]
pub struct Identity {
    cert_chain: Arc<Vec<CertificateDer<'static>>>,
    key: Arc<PrivateKeyDer<'static>>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the identity `init_identity` wrote in `dir`.
    pub fn load(dir: &Path) -> Result<Identity, NetError> {
        let fail = |reason: String| NetError::Identity {
            dir: dir.to_owned(),
            reason,
        };
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let exists = |path: &Path| {
            path.try_exists()
                .map_err(|e| fail(format!("cannot look for {}: {e}", path.display())))
        };
        let missing = match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => None,
            (false, false) => {
                return Err(NetError::IdentityMissing {
                    dir: dir.to_owned(),
                })
            }
            (true, false) => Some(KEY_FILE),
            (false, true) => Some(CERT_FILE),
        };
        if let Some(missing) = missing {
            return Err(fail(format!(
                "{missing} is missing: restore it from backup, or create a new identity with \
                 `swrepl init --force` and trust its fingerprint on the peer"
            )));
        }
        warn_if_key_exposed(&key_path);

        let cert_chain = CertificateDer::pem_file_iter(&cert_path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(format!("cannot read a certificate from {CERT_FILE}: {e}")))?;
        if cert_chain.is_empty() {
            return Err(fail(format!("{CERT_FILE} holds no certificate")));
        }
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| fail(format!("cannot read a private key from {KEY_FILE}: {e}")))?;
        check_key_matches(&cert_chain, &key).map_err(|e| {
            fail(format!(
                "{KEY_FILE} does not belong to {CERT_FILE} ({e}): restore the pair"
            ))
        })?;

        let fingerprint = Fingerprint::of_der(&cert_chain[0]);
        Ok(Identity {
            cert_chain: Arc::new(cert_chain),
            key: Arc::new(key),
            fingerprint,
        })
    }

    /// The fingerprint peers pin for this identity.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The certificate chain, end-entity first.
    pub(crate) fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        self.cert_chain.as_ref().clone()
    }

    /// A copy of the private key, as the rustls config builders take ownership of it.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// Generates key and certificate; returns (cert PEM, key PEM, fingerprint).
fn generate_self_signed() -> Result<(String, String, Fingerprint), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, SERVER_NAME);
    params.distinguished_name = name;
    let this_year = current_year();
    // A year of slack before today keeps a peer with a wrong clock from seeing "not yet valid"
    // in any tool that inspects the certificate.
    params.not_before = rcgen::date_time_ymd(this_year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(this_year + VALIDITY_YEARS, 1, 1);
    let cert = params.self_signed(&key)?;
    let fingerprint = Fingerprint::of_der(cert.der());
    Ok((cert.pem(), key.serialize_pem(), fingerprint))
}

/// The calendar year now (UTC), close enough for validity dates.
fn current_year() -> i32 {
    const SECONDS_PER_YEAR: u64 = 31_556_952; // mean Gregorian year
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + i32::try_from(secs / SECONDS_PER_YEAR).unwrap_or(0)
}

fn check_key_matches(
    cert_chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(cert_chain.to_vec(), key.clone_key(), &provider).map(|_| ())
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Writes `name` in `dir` through a temporary created with `mode` (unix), fsynced, then renamed.
fn write_atomically(dir: &Path, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))
}

/// Makes the renames durable (unix; Windows has no directory handles to sync).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An identity key others can read is no secret any more: say so (but keep working, as a
/// restore from backup may have widened the mode).
fn warn_if_key_exposed(key_path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(key_path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %key_path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "private key is readable by other users: run chmod 600 on it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = key_path;
}
