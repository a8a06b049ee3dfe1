//! Remote verify: ask a running receiver for its tree over the replication channel.

use std::time::Duration;

use swrepl_net::Identity;
use swrepl_proto::{FileEntry, Message, Role};

use crate::{Fingerprint, SyncError, PEER_TIMEOUT, SOFTWARE};

/// Connects to the receiver at `addr` as a verifier and returns its tree (hashed by the receiver).
pub async fn remote_listing(
    addr: &str,
    identity: &Identity,
    trusted: &[Fingerprint],
    timeout: Duration,
) -> Result<Vec<FileEntry>, SyncError> {
    let mut stream = swrepl_net::connect(addr, identity, trusted, timeout).await?;
    stream
        .send(&Message::Hello(swrepl_proto::hello(
            Role::Verifier,
            SOFTWARE,
        )))
        .await?;
    stream.flush().await?;
    match recv(&mut stream).await? {
        Message::Welcome(_) => {}
        Message::Error { code, message } => return Err(SyncError::PeerError { code, message }),
        _ => {
            return Err(SyncError::Protocol(
                "receiver did not answer Hello with Welcome".into(),
            ))
        }
    }
    stream.send(&Message::ListRequest).await?;
    stream.flush().await?;
    let mut entries = Vec::new();
    loop {
        match recv(&mut stream).await? {
            Message::ListEntry(entry) => {
                swrepl_proto::validate_entry(&entry)
                    .map_err(|e| SyncError::Protocol(e.to_string()))?;
                entries.push(entry);
            }
            Message::ListEnd { entries: count } if count == entries.len() as u64 => {
                return Ok(entries)
            }
            Message::ListEnd { entries: count } => {
                return Err(SyncError::Protocol(format!(
                    "listing announced {count} entries, sent {}",
                    entries.len()
                )))
            }
            Message::Heartbeat(_) => {}
            Message::Error { code, message } => return Err(SyncError::PeerError { code, message }),
            _ => {
                return Err(SyncError::Protocol(
                    "unexpected message in a listing".into(),
                ))
            }
        }
    }
}

async fn recv(stream: &mut swrepl_net::FramedStream) -> Result<Message, SyncError> {
    // The receiver hashes its whole tree before answering: allow it time on a big tree.
    match tokio::time::timeout(PEER_TIMEOUT * 20, stream.recv()).await {
        Err(_) => Err(SyncError::PeerSilent),
        Ok(Ok(Some(msg))) => Ok(msg),
        Ok(Ok(None)) => Err(SyncError::Protocol("receiver closed the connection".into())),
        Ok(Err(e)) => Err(e.into()),
    }
}
