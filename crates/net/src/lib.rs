//! # swrepl-net — identities, mutual TLS with pinned fingerprints, framed message streams
//!
//! This crate owns how two swrepl peers find and trust each other and how messages travel
//! between them. It knows nothing of files or sessions: it moves [`swrepl_proto::Message`]s.
//!
//! - **Identity**: [`init_identity`] writes an ECDSA P-256 key (`key.pem`, owner-only) and a
//!   self-signed certificate (`cert.pem`) into a directory; [`Identity::load`] reads them back.
//!   A peer is known only by its [`Fingerprint`], the SHA-256 of its DER certificate, written
//!   `sha256:<64 lowercase hex>`.
//! - **Channel**: [`connect`] and [`Listener`] speak TLS 1.3 only (rustls, ring provider). Both
//!   sides present their certificate and accept exactly the fingerprints they were given (no
//!   CA, no host names). A refusal is reported on both sides as one actionable line
//!   ([`NetError::UntrustedPeer`] where we refused, [`NetError::PeerRejectedUs`] where the peer
//!   did); [`NetError::is_auth_failure`] tells them from transient network errors.
//! - **Frames**: [`FramedStream`] sends and receives messages as length-prefixed frames, the
//!   length checked against `swrepl_proto::limits::MAX_FRAME_LEN` before any allocation;
//!   [`FramedStream::split`] gives a [`FrameReader`] and a [`FrameWriter`] for two tasks;
//!   [`Counters`] count frame bytes each way.

mod conn;
mod error;
mod fingerprint;
mod identity;
mod stream;
mod tls;

pub use conn::{connect, Listener, HANDSHAKE_TIMEOUT};
pub use error::NetError;
pub use fingerprint::Fingerprint;
pub use identity::{init_identity, Identity, CERT_FILE, KEY_FILE, SERVER_NAME};
pub use stream::{Counters, FrameReader, FrameWriter, FramedStream};
