//! Identities on disk and fingerprints as text.

use std::fs;
use std::path::Path;

use swrepl_net::{init_identity, Fingerprint, Identity, NetError, CERT_FILE, KEY_FILE};

#[test]
fn init_writes_a_loadable_identity_with_an_owner_only_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("id");
    let fingerprint = init_identity(&dir, false).unwrap();

    assert!(dir.join(CERT_FILE).is_file());
    assert!(dir.join(KEY_FILE).is_file());
    assert_eq!(Identity::load(&dir).unwrap().fingerprint(), fingerprint);
    assert_eq!(Fingerprint::of_der(&cert_der(&dir)), fingerprint);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let first = init_identity(tmp.path(), false).unwrap();
    let key_before = fs::read(tmp.path().join(KEY_FILE)).unwrap();

    let err = init_identity(tmp.path(), false).unwrap_err();
    assert!(matches!(err, NetError::IdentityExists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(fs::read(tmp.path().join(KEY_FILE)).unwrap(), key_before);
    assert_eq!(Identity::load(tmp.path()).unwrap().fingerprint(), first);

    let second = init_identity(tmp.path(), true).unwrap();
    assert_ne!(second, first);
    assert_eq!(Identity::load(tmp.path()).unwrap().fingerprint(), second);
}

#[test]
fn init_refuses_when_only_the_key_exists() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(KEY_FILE), "precious").unwrap();
    let err = init_identity(tmp.path(), false).unwrap_err();
    assert!(matches!(err, NetError::IdentityExists { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(tmp.path().join(KEY_FILE)).unwrap(),
        "precious"
    );
}

#[test]
fn load_without_identity_says_to_run_init() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Identity::load(tmp.path()).unwrap_err();
    assert!(matches!(err, NetError::IdentityMissing { .. }), "{err}");
    let expected = format!("run `swrepl init --dir {}` first", tmp.path().display());
    assert!(err.to_string().contains(&expected), "{err}");
}

#[test]
fn load_reports_a_missing_half_garbage_and_a_foreign_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init_identity(&a, false).unwrap();
    init_identity(&b, false).unwrap();

    let only_cert = tmp.path().join("only-cert");
    fs::create_dir(&only_cert).unwrap();
    fs::copy(a.join(CERT_FILE), only_cert.join(CERT_FILE)).unwrap();
    let err = Identity::load(&only_cert).unwrap_err();
    assert!(matches!(err, NetError::Identity { .. }), "{err}");
    assert!(err.to_string().contains("key.pem is missing"), "{err}");

    fs::write(b.join(CERT_FILE), "not a certificate").unwrap();
    let err = Identity::load(&b).unwrap_err();
    assert!(matches!(err, NetError::Identity { .. }), "{err}");
    assert!(err.to_string().contains(CERT_FILE), "{err}");

    // a's certificate with b's key: a pair that does not belong together.
    fs::copy(a.join(CERT_FILE), b.join(CERT_FILE)).unwrap();
    let err = Identity::load(&b).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
}

#[test]
fn fingerprint_text_round_trips_and_accepts_openssl_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let fingerprint = init_identity(tmp.path(), false).unwrap();
    let text = fingerprint.to_string();
    assert!(text.starts_with("sha256:"));
    assert_eq!(text.len(), "sha256:".len() + 64);
    assert_eq!(text, text.to_lowercase());
    assert_eq!(text.parse::<Fingerprint>().unwrap(), fingerprint);

    let hex = &text["sha256:".len()..];
    assert_eq!(
        format!("SHA256:{}", hex.to_uppercase())
            .parse::<Fingerprint>()
            .unwrap(),
        fingerprint
    );
    let pairs: Vec<String> = hex
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    let openssl = format!("sha256:{}", pairs.join(":"));
    assert_eq!(openssl.parse::<Fingerprint>().unwrap(), fingerprint);
}

#[test]
fn bad_fingerprints_are_refused_with_the_expected_form() {
    for input in [
        "",
        "abc",
        "sha256:xyz",
        "md5:0011",
        &format!("sha256:{}", "0".repeat(62)),
    ] {
        let err = input.parse::<Fingerprint>().unwrap_err();
        assert!(
            matches!(err, NetError::BadFingerprint { .. }),
            "{input:?}: {err}"
        );
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }
}

fn cert_der(dir: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(dir.join(CERT_FILE))
        .unwrap()
        .to_vec()
}
