//! Making and accepting authenticated connections: [`connect`] and [`Listener`].

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::AsyncBufRead;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{client, TlsAcceptor, TlsConnector, TlsStream};

use crate::error::classify_io;
use crate::identity::SERVER_NAME;
use crate::{tls, Fingerprint, FramedStream, Identity, NetError};

/// How long an accepted peer has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress, plus accepted connections not yet taken by [`Listener::accept`],
/// beyond which the listener stops accepting (the kernel backlog holds the rest).
const MAX_PENDING_CONNECTIONS: usize = 32;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Connects to `addr` (`HOST:PORT`), authenticates both ways, and returns the stream.
///
/// The server must present a certificate whose fingerprint is in `trusted`; we present
/// `identity`. Returns only once the server has accepted our certificate too, so a refusal is
/// reported here as [`NetError::PeerRejectedUs`]. The whole attempt (name resolution, TCP, TLS)
/// is bounded by `timeout`.
pub async fn connect(
    addr: &str,
    identity: &Identity,
    trusted: &[Fingerprint],
    timeout: Duration,
) -> Result<FramedStream, NetError> {
    let config = tls::client_config(identity, trusted)?;
    let attempt = connect_within(addr, TlsConnector::from(config), identity.fingerprint());
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_elapsed) => Err(NetError::Timeout {
            addr: addr.to_owned(),
        }),
    }
}

async fn connect_within(
    addr: &str,
    connector: TlsConnector,
    ours: Fingerprint,
) -> Result<FramedStream, NetError> {
    let tcp = connect_tcp(addr).await?;
    let peer_addr = tcp.peer_addr().map_err(|source| NetError::Connect {
        addr: addr.to_owned(),
        source,
    })?;
    let name = ServerName::try_from(SERVER_NAME)
        .map_err(|e| NetError::TlsConfig(rustls::Error::General(e.to_string())))?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| classify_io(e, peer_addr, ours))?;
    wait_until_accepted(&mut tls)
        .await
        .map_err(|e| classify_io(e, peer_addr, ours))?;
    tracing::debug!(peer = %peer_addr, "connected");
    FramedStream::new(TlsStream::Client(tls), peer_addr, ours)
}

/// Tries every address `addr` resolves to, in order; TCP_NODELAY on, as frames are often small
/// and latency-bound (acks, chunk requests).
async fn connect_tcp(addr: &str) -> Result<TcpStream, NetError> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| NetError::Resolve {
            addr: addr.to_owned(),
            source,
        })?;
    let mut last_error = None;
    for candidate in resolved {
        match TcpStream::connect(candidate).await {
            Ok(tcp) => {
                tcp.set_nodelay(true).map_err(|source| NetError::Connect {
                    addr: addr.to_owned(),
                    source,
                })?;
                return Ok(tcp);
            }
            Err(e) => {
                tracing::debug!(%candidate, error = %e, "connect attempt failed");
                last_error = Some(e);
            }
        }
    }
    let source = last_error.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address")
    });
    Err(NetError::Connect {
        addr: addr.to_owned(),
        source,
    })
}

/// In TLS 1.3 the client finishes its handshake before the server has checked the client's
/// certificate. The server sends a session ticket only after that check passes (see
/// `tls::server_config`), and an alert if it fails; wait for one or the other. Application data
/// from the server also proves acceptance; it stays buffered for the first `recv`.
async fn wait_until_accepted(tls: &mut client::TlsStream<TcpStream>) -> io::Result<()> {
    poll_fn(|cx| {
        if tls.get_ref().1.tls13_tickets_received() > 0 {
            return Poll::Ready(Ok(()));
        }
        let data_pending = match Pin::new(&mut *tls).poll_fill_buf(cx) {
            Poll::Ready(Ok(buffered)) => !buffered.is_empty(),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                return if tls.get_ref().1.tls13_tickets_received() > 0 {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
        };
        if data_pending || tls.get_ref().1.tls13_tickets_received() > 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection right after the TLS handshake, \
                 without accepting our certificate",
            )))
        }
    })
    .await
}

type Accepted = Result<(FramedStream, OwnedSemaphorePermit), NetError>;

/// A listening socket that hands out authenticated connections.
///
/// Handshakes run in the background, several at a time, each bounded by [`HANDSHAKE_TIMEOUT`],
/// so a peer that connects and stays silent delays no one else.
pub struct Listener {
    local_addr: SocketAddr,
    accepted: Mutex<mpsc::Receiver<Accepted>>,
    accept_loop: JoinHandle<()>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Also aborts the handshakes in progress, which the loop owns.
        self.accept_loop.abort();
    }
}

impl Listener {
    /// Listens on `addr` (`HOST:PORT`; port 0 picks a free port, see [`local_addr`](Self::local_addr)).
    pub async fn bind(
        addr: &str,
        identity: &Identity,
        trusted: &[Fingerprint],
    ) -> Result<Listener, NetError> {
        let config = tls::server_config(identity, trusted)?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| NetError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        let local_addr = tcp.local_addr().map_err(|source| NetError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
        let (sender, receiver) = mpsc::channel(MAX_PENDING_CONNECTIONS);
        let accept_loop = tokio::spawn(accept_loop(
            tcp,
            TlsAcceptor::from(config),
            identity.fingerprint(),
            sender,
        ));
        tracing::info!(%local_addr, "listening");
        Ok(Listener {
            local_addr,
            accepted: Mutex::new(receiver),
            accept_loop,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next connection whose handshake finished: an authenticated stream, or the reason a
    /// peer was refused (e.g. [`NetError::UntrustedPeer`]). The listener stays usable either way.
    pub async fn accept(&self) -> Result<FramedStream, NetError> {
        let next = self.accepted.lock().await.recv().await;
        match next {
            Some(Ok((stream, _slot))) => Ok(stream),
            Some(Err(e)) => Err(e),
            None => Err(NetError::Io(io::Error::other(
                "the listener's accept loop stopped",
            ))),
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ours: Fingerprint,
    accepted: mpsc::Sender<Accepted>,
) {
    let slots = Arc::new(Semaphore::new(MAX_PENDING_CONNECTIONS));
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (socket, addr) = match tcp.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let accepted = accepted.clone();
        handshakes.spawn(async move {
            // The slot travels with the stream until `accept` takes it; failures release it here.
            let result = handshake(acceptor, socket, addr, ours)
                .await
                .map(|s| (s, slot));
            if let Err(e) = &result {
                tracing::debug!(peer = %addr, error = %e, "handshake failed");
            }
            // A closed channel means the listener is gone: the stream is simply dropped.
            let _ = accepted.send(result).await;
        });
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    socket: TcpStream,
    addr: SocketAddr,
    ours: Fingerprint,
) -> Result<FramedStream, NetError> {
    socket
        .set_nodelay(true)
        .map_err(|source| NetError::ConnectionLost { addr, source })?;
    let handshake = async {
        // A peer that closes before its first byte is a port probe, not a failed handshake.
        let mut first = [0u8; 1];
        let peeked = socket
            .peek(&mut first)
            .await
            .map_err(|source| NetError::ConnectionLost { addr, source })?;
        if peeked == 0 {
            return Err(NetError::ClosedSilently { addr });
        }
        acceptor
            .accept(socket)
            .await
            .map_err(|e| classify_io(e, addr, ours))
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(result) => result?,
        Err(_elapsed) => return Err(NetError::HandshakeTimeout { addr }),
    };
    tracing::debug!(peer = %addr, "accepted");
    FramedStream::new(TlsStream::Server(tls), addr, ours)
}
