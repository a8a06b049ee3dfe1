//! The verifier's side: ask a running receiver, over the replication channel, for its tree or
//! for the state of its registry keys. A verifier changes nothing on the receiver.

use std::time::Duration;

use swrepl_net::{FramedStream, Identity};
use swrepl_proto::{FileEntry, Message, Role};
use swrepl_registry::wire::from_wire_snapshot;
use swrepl_registry::Snapshot;

use crate::{Fingerprint, SyncError, PEER_TIMEOUT, SOFTWARE};

/// The receiver hashes its whole tree before answering a listing: allow it time on a big tree.
const LISTING_TIMEOUT: Duration = Duration::from_secs(PEER_TIMEOUT.as_secs() * 20);

/// Connects to the receiver at `addr` as a verifier and returns its tree (hashed by the receiver).
pub async fn remote_listing(
    addr: &str,
    identity: &Identity,
    trusted: &[Fingerprint],
    timeout: Duration,
) -> Result<Vec<FileEntry>, SyncError> {
    let mut stream = connect_as_verifier(addr, identity, trusted, timeout).await?;
    stream.send(&Message::ListRequest).await?;
    let mut entries = Vec::new();
    loop {
        match recv(&mut stream, LISTING_TIMEOUT).await? {
            Message::ListEntry(entry) => entries.push(entry),
            Message::ListEnd { entries: count } if count == entries.len() as u64 => {
                return Ok(entries)
            }
            Message::ListEnd { entries: count } => {
                return Err(SyncError::Protocol(format!(
                    "listing announced {count} entries, sent {}",
                    entries.len()
                )))
            }
            other => return Err(unexpected(other, "a listing")),
        }
    }
}

/// Connects to the receiver at `addr` as a verifier and returns the state of the registry keys
/// it replicates, or `None` when it replicates none.
pub async fn remote_registry(
    addr: &str,
    identity: &Identity,
    trusted: &[Fingerprint],
    timeout: Duration,
) -> Result<Option<Snapshot>, SyncError> {
    let mut stream = connect_as_verifier(addr, identity, trusted, timeout).await?;
    stream.send(&Message::RegistryRequest).await?;
    match recv(&mut stream, PEER_TIMEOUT).await? {
        Message::RegistrySnapshot(wire) if wire.roots.is_empty() => Ok(None),
        Message::RegistrySnapshot(wire) => from_wire_snapshot(&wire).map(Some).map_err(|e| {
            SyncError::Protocol(format!("bad registry snapshot from the receiver: {e}"))
        }),
        other => Err(unexpected(other, "a registry request")),
    }
}

/// Mutual-TLS connection, `Hello` as a verifier, the receiver's `Welcome` checked.
async fn connect_as_verifier(
    addr: &str,
    identity: &Identity,
    trusted: &[Fingerprint],
    timeout: Duration,
) -> Result<FramedStream, SyncError> {
    let mut stream = swrepl_net::connect(addr, identity, trusted, timeout).await?;
    stream
        .send(&Message::Hello(swrepl_proto::hello(
            Role::Verifier,
            SOFTWARE,
        )))
        .await?;
    match recv(&mut stream, PEER_TIMEOUT).await? {
        Message::Welcome(welcome) => {
            swrepl_proto::check_welcome(&welcome, Role::Receiver)
                .map_err(|e| SyncError::Protocol(e.to_string()))?;
            Ok(stream)
        }
        other => Err(unexpected(other, "the handshake")),
    }
}

/// The next message that is not a heartbeat, validated, within `timeout`.
async fn recv(stream: &mut FramedStream, timeout: Duration) -> Result<Message, SyncError> {
    loop {
        let msg = match tokio::time::timeout(timeout, stream.recv()).await {
            Err(_) => return Err(SyncError::PeerSilent),
            Ok(Ok(Some(msg))) => msg,
            Ok(Ok(None)) => return Err(SyncError::Closed),
            Ok(Err(e)) => return Err(e.into()),
        };
        swrepl_proto::validate_message(&msg).map_err(|e| SyncError::Protocol(e.to_string()))?;
        if !matches!(msg, Message::Heartbeat(_)) {
            return Ok(msg);
        }
    }
}

fn unexpected(msg: Message, during: &str) -> SyncError {
    match msg {
        Message::Error { code, message } => SyncError::PeerError { code, message },
        other => SyncError::Protocol(format!(
            "unexpected {} from the receiver during {during}",
            swrepl_proto::message_name(&other)
        )),
    }
}
