//! TLS configuration: TLS 1.3 only, ring provider, both sides present their certificate, and
//! each side accepts exactly the pinned fingerprints (no CA, no name check, no expiry check:
//! the pin is the trust).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::StoresServerSessions;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::UntrustedCertificate;
use crate::{Fingerprint, Identity, NetError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client side: presents `identity`, accepts a server only by pinned fingerprint.
pub(crate) fn client_config(
    identity: &Identity,
    trusted: &[Fingerprint],
) -> Result<Arc<ClientConfig>, NetError> {
    let provider = provider();
    let verifier = PinnedVerifier::new(trusted, &provider)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(NetError::TlsConfig)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.cert_chain(), identity.key())
        .map_err(NetError::TlsConfig)?;
    // Every connection is verified in full: a resumed session would skip the pin check.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The server side: presents `identity`, requires a client certificate with a pinned fingerprint.
pub(crate) fn server_config(
    identity: &Identity,
    trusted: &[Fingerprint],
) -> Result<Arc<ServerConfig>, NetError> {
    let provider = provider();
    let verifier = PinnedVerifier::new(trusted, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(NetError::TlsConfig)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.cert_chain(), identity.key())
        .map_err(NetError::TlsConfig)?;
    // The server sends one session ticket after it has verified the client's certificate; the
    // client waits for it (see `connect`) so that a refusal is reported by `connect` itself.
    // Tickets are never honoured: each connection is verified in full.
    config.session_storage = Arc::new(ForgetfulSessionStore);
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// Accepts exactly the end-entity certificates whose fingerprint is pinned; verifies handshake
/// signatures as TLS 1.3 requires. Used for both directions.
#[derive(Debug)]
struct PinnedVerifier {
    trusted: Vec<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    fn new(trusted: &[Fingerprint], provider: &CryptoProvider) -> Result<Self, NetError> {
        if trusted.is_empty() {
            return Err(NetError::NoTrustedFingerprints);
        }
        Ok(PinnedVerifier {
            trusted: trusted.to_vec(),
            algorithms: provider.signature_verification_algorithms,
        })
    }

    fn check_pinned(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        let fingerprint = Fingerprint::of_der(end_entity);
        if self.trusted.contains(&fingerprint) {
            tracing::debug!(%fingerprint, "peer certificate is pinned");
            Ok(())
        } else {
            Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(UntrustedCertificate(fingerprint))),
            )))
        }
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

/// TLS 1.2 is not configured; should a handshake reach this anyway, refuse it.
fn tls12_refused() -> Result<HandshakeSignatureValid, Error> {
    Err(Error::General("swrepl speaks TLS 1.3 only".into()))
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check_pinned(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check_pinned(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts session tickets so rustls issues them, and never gives one back, so no session is
/// ever resumed.
#[derive(Debug)]
struct ForgetfulSessionStore;

impl StoresServerSessions for ForgetfulSessionStore {
    fn put(&self, _key: Vec<u8>, _value: Vec<u8>) -> bool {
        true
    }

    fn get(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn take(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn can_cache(&self) -> bool {
        true
    }
}
