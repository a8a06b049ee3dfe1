//! [`NetError`]: everything that can go wrong with identities and connections, each as one line
//! that says what happened and what to do; and the mapping from TLS failures to those lines.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use rustls::{AlertDescription, CertificateError};

use crate::Fingerprint;

/// Errors of this crate. `Display` gives one line meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "peer {addr} presented certificate {fingerprint}, which is not trusted: \
         if it is the right peer, add --trust {fingerprint}"
    )]
    UntrustedPeer {
        fingerprint: Fingerprint,
        addr: SocketAddr,
    },

    #[error("peer {addr} refused our certificate {ours}: add --trust {ours} on the peer")]
    PeerRejectedUs { addr: SocketAddr, ours: Fingerprint },

    #[error(
        "peer {addr} presented no certificate and was refused: \
         only swrepl peers whose fingerprint is trusted with --trust may connect"
    )]
    NoPeerCertificate { addr: SocketAddr },

    #[error(
        "no trusted peer fingerprint given: pass --trust sha256:… with the fingerprint \
         that `swrepl fingerprint` prints on the peer"
    )]
    NoTrustedFingerprints,

    #[error("cannot resolve {addr}: {source} (expected HOST:PORT, e.g. slave.example.com:7802)")]
    Resolve { addr: String, source: io::Error },

    #[error("cannot connect to {addr}: {source} (is the peer running and listening there?)")]
    Connect { addr: String, source: io::Error },

    #[error(
        "timed out connecting to {addr}: check that the peer is running, the address and port, \
         and any firewall between the two machines"
    )]
    Timeout { addr: String },

    #[error("peer {addr} did not complete the TLS handshake in time; connection dropped")]
    HandshakeTimeout { addr: SocketAddr },

    #[error("peer {addr} closed the connection without sending anything (a port probe?)")]
    ClosedSilently { addr: SocketAddr },

    #[error("cannot listen on {addr}: {}", bind_reason(source))]
    Bind { addr: String, source: io::Error },

    #[error("TLS failure with peer {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: rustls::Error,
    },

    #[error("cannot set up TLS with this identity: {0}")]
    TlsConfig(rustls::Error),

    #[error("connection with {addr} failed: {source}")]
    ConnectionLost { addr: SocketAddr, source: io::Error },

    #[error("peer {addr} closed the connection in the middle of a frame")]
    TruncatedFrame { addr: SocketAddr },

    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    #[error("peer sent an invalid frame: {0}")]
    Frame(#[from] swrepl_proto::ProtoError),

    #[error("refusing to send a message that breaks the protocol limits (a bug in swrepl: please report it): {0}")]
    Encode(swrepl_proto::ProtoError),

    #[error(
        "an identity already exists in {dir}: keep it (peers have pinned its fingerprint), \
         or pass --force to replace it"
    )]
    IdentityExists { dir: PathBuf },

    #[error("no identity in {dir}: run `swrepl init --dir {dir}` first")]
    IdentityMissing { dir: PathBuf },

    #[error("cannot use the identity in {dir}: {reason}")]
    Identity { dir: PathBuf, reason: String },

    #[error(
        "invalid fingerprint {input:?}: expected sha256: followed by 64 hex digits, \
         as printed by `swrepl fingerprint --dir DIR`"
    )]
    BadFingerprint { input: String },
}

impl NetError {
    /// True for a connection that was opened and closed without a byte: a port probe (load
    /// balancer, monitoring, `Test-NetConnection`), not worth a warning.
    pub fn is_silent_probe(&self) -> bool {
        matches!(self, NetError::ClosedSilently { .. })
    }

    /// True when the peers do not (or cannot) trust each other: retrying cannot help, an
    /// operator must act.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            NetError::UntrustedPeer { .. }
                | NetError::PeerRejectedUs { .. }
                | NetError::NoPeerCertificate { .. }
                | NetError::NoTrustedFingerprints
        )
    }
}

/// The operator's reading of a failed `bind`.
fn bind_reason(source: &io::Error) -> String {
    match source.kind() {
        io::ErrorKind::AddrInUse => "address already in use (is another swrepl receiver running? \
                                     choose another --listen port)"
            .to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges: \
                                            choose another --listen port)"
            .to_owned(),
        io::ErrorKind::AddrNotAvailable => "this machine has no such address (use one of its own \
                                            addresses, or 0.0.0.0 for all)"
            .to_owned(),
        _ => source.to_string(),
    }
}

/// Carried inside the rustls error when our verifier refuses a certificate, so the refusal can
/// name the fingerprint the operator may want to trust.
#[derive(Debug)]
pub(crate) struct UntrustedCertificate(pub(crate) Fingerprint);

impl std::fmt::Display for UntrustedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "certificate {} is not trusted", self.0)
    }
}

impl std::error::Error for UntrustedCertificate {}

/// Turns an I/O error from a TLS stream into the most precise [`NetError`]: tokio-rustls wraps
/// every TLS failure (our refusal of the peer, the peer's alert refusing us) in an `io::Error`.
pub(crate) fn classify_io(err: io::Error, addr: SocketAddr, ours: Fingerprint) -> NetError {
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match tls {
        Some(tls) => classify_tls(tls, addr, ours),
        None => NetError::ConnectionLost { addr, source: err },
    }
}

/// Maps a TLS failure to a [`NetError`], recognising both sides of a refused certificate.
pub(crate) fn classify_tls(err: rustls::Error, addr: SocketAddr, ours: Fingerprint) -> NetError {
    match &err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<UntrustedCertificate>() {
                Some(untrusted) => NetError::UntrustedPeer {
                    fingerprint: untrusted.0,
                    addr,
                },
                None => NetError::Tls { addr, source: err },
            }
        }
        rustls::Error::NoCertificatesPresented => NetError::NoPeerCertificate { addr },
        rustls::Error::AlertReceived(alert) if is_refusal_alert(*alert) => {
            NetError::PeerRejectedUs { addr, ours }
        }
        _ => NetError::Tls { addr, source: err },
    }
}

/// Alerts a TLS peer sends when it does not accept our certificate. Our own verifier sends
/// `certificate_unknown`; the others cover a peer that refuses for another certificate reason.
fn is_refusal_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
    )
}
