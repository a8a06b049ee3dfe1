//! The connection handshake, sans-IO.
//!
//! The connecting side sends [`hello`](crate::hello); the accepting side answers with the
//! [`Welcome`] from [`accept_hello`] or, on failure, the `Error` message from
//! [`ProtoError::to_message`] and closes. The connecting side checks the answer with
//! [`check_welcome`]. Roles: a sender connects to a receiver; a verifier connects to a receiver.

use crate::version::{negotiate, truncate_text, validate_message};
use crate::{ErrorCode, Hello, Message, ProtoError, Role, Welcome, MIN_VERSION, PROTOCOL_VERSION};

/// Acceptor side: checks the peer's `Hello` (magic, text limits, a common version, a role in
/// `acceptable_roles`) and builds the `Welcome` to send, speaking as `our_role`.
pub fn accept_hello(
    peer: &Hello,
    acceptable_roles: &[Role],
    our_role: Role,
    software: &str,
) -> Result<Welcome, ProtoError> {
    validate_message(&Message::Hello(peer.clone()))?;
    let version = negotiate(peer)?;
    if !acceptable_roles.contains(&peer.role) {
        return Err(ProtoError::RoleRejected {
            theirs: peer.role,
            expected: acceptable_roles.to_vec(),
        });
    }
    Ok(Welcome {
        version,
        role: our_role,
        software: truncate_text(software).to_string(),
    })
}

/// Connector side: checks the acceptor's `Welcome`: the chosen version must be one we offered
/// and the acceptor must speak as `expected_role`. Returns the session's protocol version.
pub fn check_welcome(welcome: &Welcome, expected_role: Role) -> Result<u16, ProtoError> {
    validate_message(&Message::Welcome(welcome.clone()))?;
    if !(MIN_VERSION..=PROTOCOL_VERSION).contains(&welcome.version) {
        return Err(ProtoError::VersionMismatch {
            ours_min: MIN_VERSION,
            ours_max: PROTOCOL_VERSION,
            theirs_min: welcome.version,
            theirs_max: welcome.version,
        });
    }
    if welcome.role != expected_role {
        return Err(ProtoError::RoleRejected {
            theirs: welcome.role,
            expected: vec![expected_role],
        });
    }
    Ok(welcome.version)
}

impl ProtoError {
    /// The wire code to send in an `Error` message when this error ends a connection.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtoError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            ProtoError::RoleRejected { .. } => ErrorCode::RoleRejected,
            ProtoError::FrameTooLarge { .. }
            | ProtoError::Malformed(_)
            | ProtoError::BadMagic
            | ProtoError::InvalidPath { .. }
            | ProtoError::Limit(_) => ErrorCode::ProtocolViolation,
        }
    }

    /// The `Error` message telling the peer why the connection is being closed.
    pub fn to_message(&self) -> Message {
        Message::Error {
            code: self.error_code(),
            message: truncate_text(&self.to_string()).to_string(),
        }
    }
}
