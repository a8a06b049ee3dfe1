//! Framed message streams over an authenticated TLS connection.
//!
//! A frame is a 4-byte big-endian body length and a postcard body (see `swrepl_proto::frame`).
//! The announced length is checked against [`MAX_FRAME_LEN`] before anything is allocated, and
//! the body buffer grows only as bytes actually arrive, so a hostile peer cannot make us reserve
//! memory it does not send.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BufMut;
use swrepl_proto::limits::{FRAME_HEADER_LEN, MAX_FRAME_LEN};
use swrepl_proto::{decode_message, encode_frame, Message, ProtoError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use crate::error::classify_io;
use crate::{Fingerprint, NetError};

/// Body bytes reserved before any of them has arrived; larger bodies grow geometrically.
/// One full-size `ChunkData` fits without reallocating.
const INITIAL_BODY_CAPACITY: usize = 1024 * 1024 + 1024;

type Tls = TlsStream<TcpStream>;

/// Frame bytes (headers included) sent and received on one connection; clones share the counts.
#[derive(Clone, Default, Debug)]
pub struct Counters {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Counters {
    /// Frame bytes written so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Frame bytes read so far.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Who is on the other end, and who we are (for error messages).
#[derive(Clone, Copy, Debug)]
struct Peer {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    ours: Fingerprint,
}

/// An authenticated connection carrying [`Message`]s, from [`crate::connect`] or
/// [`crate::Listener::accept`].
pub struct FramedStream {
    stream: Tls,
    peer: Peer,
    counters: Counters,
}

impl std::fmt::Debug for FramedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl FramedStream {
    /// Wraps a stream whose handshake is complete and whose peer certificate was verified.
    pub(crate) fn new(stream: Tls, addr: SocketAddr, ours: Fingerprint) -> Result<Self, NetError> {
        let fingerprint = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| Fingerprint::of_der(cert))
            .ok_or(NetError::NoPeerCertificate { addr })?;
        let peer = Peer {
            addr,
            fingerprint,
            ours,
        };
        Ok(FramedStream {
            stream,
            peer,
            counters: Counters::default(),
        })
    }

    /// The fingerprint of the certificate the peer presented (one of the trusted ones).
    pub fn peer_fingerprint(&self) -> Fingerprint {
        self.peer.fingerprint
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// Byte counters of this connection (shared with the halves after [`split`](Self::split)).
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Writes one frame and pushes it to the socket.
    pub async fn send(&mut self, msg: &Message) -> Result<(), NetError> {
        write_frame(&mut self.stream, msg, &self.peer, &self.counters).await?;
        flush(&mut self.stream, &self.peer).await
    }

    /// Writes one frame without waiting for it to reach the socket; call [`flush`](Self::flush)
    /// after a batch.
    pub async fn feed(&mut self, msg: &Message) -> Result<(), NetError> {
        write_frame(&mut self.stream, msg, &self.peer, &self.counters).await
    }

    /// Pushes every written frame to the socket.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        flush(&mut self.stream, &self.peer).await
    }

    /// The next message; `None` when the peer closed the connection between frames.
    pub async fn recv(&mut self) -> Result<Option<Message>, NetError> {
        read_frame(&mut self.stream, &self.peer, &self.counters).await
    }

    /// Closes our direction cleanly (TLS close_notify, then TCP FIN).
    pub async fn shutdown(&mut self) -> Result<(), NetError> {
        shutdown(&mut self.stream, &self.peer).await
    }

    /// Separates reading from writing so each can live in its own task.
    pub fn split(self) -> (FrameReader, FrameWriter) {
        let (read, write) = tokio::io::split(self.stream);
        let reader = FrameReader {
            read,
            peer: self.peer,
            counters: self.counters.clone(),
        };
        let writer = FrameWriter {
            write,
            peer: self.peer,
            counters: self.counters,
        };
        (reader, writer)
    }
}

/// The receiving half of a [`FramedStream`].
pub struct FrameReader {
    read: ReadHalf<Tls>,
    peer: Peer,
    counters: Counters,
}

impl FrameReader {
    /// The next message; `None` when the peer closed the connection between frames.
    pub async fn recv(&mut self) -> Result<Option<Message>, NetError> {
        read_frame(&mut self.read, &self.peer, &self.counters).await
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// The fingerprint of the certificate the peer presented.
    pub fn peer_fingerprint(&self) -> Fingerprint {
        self.peer.fingerprint
    }
}

/// The sending half of a [`FramedStream`].
pub struct FrameWriter {
    write: WriteHalf<Tls>,
    peer: Peer,
    counters: Counters,
}

impl FrameWriter {
    /// Writes one frame and pushes it to the socket.
    pub async fn send(&mut self, msg: &Message) -> Result<(), NetError> {
        write_frame(&mut self.write, msg, &self.peer, &self.counters).await?;
        flush(&mut self.write, &self.peer).await
    }

    /// Writes one frame without waiting for it to reach the socket; call
    /// [`flush`](Self::flush) after a batch.
    pub async fn feed(&mut self, msg: &Message) -> Result<(), NetError> {
        write_frame(&mut self.write, msg, &self.peer, &self.counters).await
    }

    /// Pushes every written frame to the socket.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        flush(&mut self.write, &self.peer).await
    }

    /// Closes our direction cleanly (TLS close_notify, then TCP FIN).
    pub async fn shutdown(&mut self) -> Result<(), NetError> {
        shutdown(&mut self.write, &self.peer).await
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// The fingerprint of the certificate the peer presented.
    pub fn peer_fingerprint(&self) -> Fingerprint {
        self.peer.fingerprint
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    write: &mut W,
    msg: &Message,
    peer: &Peer,
    counters: &Counters,
) -> Result<(), NetError> {
    let frame = encode_frame(msg).map_err(NetError::Encode)?;
    write
        .write_all(&frame)
        .await
        .map_err(|e| classify_io(e, peer.addr, peer.ours))?;
    counters.add_sent(frame.len());
    Ok(())
}

async fn flush<W: AsyncWrite + Unpin>(write: &mut W, peer: &Peer) -> Result<(), NetError> {
    write
        .flush()
        .await
        .map_err(|e| classify_io(e, peer.addr, peer.ours))
}

async fn shutdown<W: AsyncWrite + Unpin>(write: &mut W, peer: &Peer) -> Result<(), NetError> {
    write
        .shutdown()
        .await
        .map_err(|e| classify_io(e, peer.addr, peer.ours))
}

async fn read_frame<R: AsyncRead + Unpin>(
    read: &mut R,
    peer: &Peer,
    counters: &Counters,
) -> Result<Option<Message>, NetError> {
    let Some(header) = read_header(read, peer).await? else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(NetError::Frame(ProtoError::FrameTooLarge {
            len,
            limit: MAX_FRAME_LEN,
        }));
    }
    let body = read_body(read, len, peer).await?;
    counters.add_received(FRAME_HEADER_LEN + len);
    Ok(Some(decode_message(&body)?))
}

/// The 4 header bytes, or `None` when the connection ends cleanly before the first of them.
/// A peer that closes without TLS close_notify between frames counts as a clean end: nothing
/// was lost, and a crashed peer is reported by whatever the session was waiting for.
async fn read_header<R: AsyncRead + Unpin>(
    read: &mut R,
    peer: &Peer,
) -> Result<Option<[u8; FRAME_HEADER_LEN]>, NetError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < FRAME_HEADER_LEN {
        match read.read(&mut header[filled..]).await {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(NetError::TruncatedFrame { addr: peer.addr }),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && filled == 0 => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(NetError::TruncatedFrame { addr: peer.addr })
            }
            Err(e) => return Err(classify_io(e, peer.addr, peer.ours)),
        }
    }
    Ok(Some(header))
}

/// Exactly `len` body bytes, the buffer growing (doubling) only as they arrive. Bytes are read
/// into the buffer's spare capacity, never zeroed first (a GiB of chunk data would be a GiB of
/// `memset`).
async fn read_body<R: AsyncRead + Unpin>(
    read: &mut R,
    len: usize,
    peer: &Peer,
) -> Result<Vec<u8>, NetError> {
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    while body.len() < len {
        let have = body.len();
        if have == body.capacity() {
            let grown = len.min(have.saturating_mul(2).max(INITIAL_BODY_CAPACITY));
            body.reserve_exact(grown - have);
        }
        let room = (body.capacity() - have).min(len - have);
        match read.read_buf(&mut BufMut::limit(&mut body, room)).await {
            Ok(0) => return Err(NetError::TruncatedFrame { addr: peer.addr }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(NetError::TruncatedFrame { addr: peer.addr })
            }
            Err(e) => return Err(classify_io(e, peer.addr, peer.ours)),
        }
    }
    Ok(body)
}
