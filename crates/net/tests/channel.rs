//! Real loopback connections: mutual TLS with pinned fingerprints, frames, limits, failures.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use swrepl_net::{connect, init_identity, Fingerprint, FramedStream, Identity, Listener, NetError};
use swrepl_proto::{Message, ProtoError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Generous bound for anything that should happen at once, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

struct Peer {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    identity: Identity,
}

fn peer() -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    init_identity(&path, false).unwrap();
    let identity = Identity::load(&path).unwrap();
    Peer {
        _dir: dir,
        dir: path,
        identity,
    }
}

fn stranger() -> Fingerprint {
    Fingerprint([7; 32])
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took too long"))
}

async fn listen(server: &Peer, trusted: &[Fingerprint]) -> (Listener, String) {
    let listener = Listener::bind("127.0.0.1:0", &server.identity, trusted)
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();
    (listener, addr)
}

/// Connects `client` to `listener` while accepting: (what `connect` returned, what `accept` returned).
async fn handshake(
    listener: &Listener,
    addr: &str,
    client: &Identity,
    client_trusts: &[Fingerprint],
) -> (
    Result<FramedStream, NetError>,
    Result<FramedStream, NetError>,
) {
    within("handshake", async {
        tokio::join!(
            connect(addr, client, client_trusts, DEADLINE),
            listener.accept()
        )
    })
    .await
}

fn chunk(len: usize) -> Message {
    Message::ChunkData {
        seq: 9,
        index: 3,
        data: (0..len).map(|i| (i % 251) as u8).collect(),
    }
}

#[tokio::test]
async fn messages_flow_both_ways_and_are_counted() {
    let (client, server) = (peer(), peer());
    let (listener, addr) = listen(&server, &[client.identity.fingerprint()]).await;
    let (connected, accepted) = handshake(
        &listener,
        &addr,
        &client.identity,
        &[server.identity.fingerprint()],
    )
    .await;
    let mut client_side = connected.unwrap();
    let server_side = accepted.unwrap();
    assert_eq!(
        client_side.peer_fingerprint(),
        server.identity.fingerprint()
    );
    assert_eq!(
        server_side.peer_fingerprint(),
        client.identity.fingerprint()
    );
    assert_eq!(client_side.peer_addr(), listener.local_addr());

    let outbound = vec![
        Message::PassBegin {
            pass: 1,
            full: true,
        },
        chunk(1024 * 1024),
        Message::ListRequest,
        chunk(0),
        Message::Ack { seq: u64::MAX },
    ];
    let inbound = vec![
        Message::Ack { seq: 1 },
        chunk(300_000),
        Message::ListEnd { entries: 2 },
    ];

    // Both directions at once: neither side may wait for the other to finish sending.
    let client_task = async {
        for msg in &outbound {
            client_side.feed(msg).await.unwrap();
        }
        client_side.flush().await.unwrap();
        let mut got = Vec::new();
        for _ in 0..inbound.len() {
            got.push(client_side.recv().await.unwrap().unwrap());
        }
        (client_side, got)
    };
    let server_task = async {
        let (mut reader, mut writer) = server_side.split();
        for msg in &inbound {
            writer.send(msg).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..outbound.len() {
            got.push(reader.recv().await.unwrap().unwrap());
        }
        writer.shutdown().await.unwrap();
        (reader, got)
    };
    let ((mut client_side, client_got), (mut reader, server_got)) =
        within("exchange", async { tokio::join!(client_task, server_task) }).await;
    assert_eq!(client_got, inbound);
    assert_eq!(server_got, outbound);

    let frame_bytes = |msgs: &[Message]| {
        msgs.iter()
            .map(|m| swrepl_proto::encode_frame(m).unwrap().len() as u64)
            .sum::<u64>()
    };
    let counters = client_side.counters();
    assert_eq!(counters.bytes_sent(), frame_bytes(&outbound));
    assert_eq!(counters.bytes_received(), frame_bytes(&inbound));

    // The server shut down its side cleanly: the client sees the end, not an error.
    assert!(within("eof", client_side.recv()).await.unwrap().is_none());
    client_side.shutdown().await.unwrap();
    assert!(within("eof", reader.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn server_refuses_an_untrusted_client_and_both_sides_say_so() {
    let (client, server) = (peer(), peer());
    let (listener, addr) = listen(&server, &[stranger()]).await;
    let (connected, accepted) = handshake(
        &listener,
        &addr,
        &client.identity,
        &[server.identity.fingerprint()],
    )
    .await;

    let client_err = connected.unwrap_err();
    assert!(client_err.is_auth_failure(), "{client_err}");
    assert!(
        matches!(client_err, NetError::PeerRejectedUs { ours, .. } if ours == client.identity.fingerprint())
    );
    assert!(client_err.to_string().contains(&format!(
        "add --trust {} on the peer",
        client.identity.fingerprint()
    )));

    let server_err = accepted.unwrap_err();
    assert!(
        matches!(server_err, NetError::UntrustedPeer { fingerprint, .. } if fingerprint == client.identity.fingerprint()),
        "{server_err}"
    );
    assert!(server_err
        .to_string()
        .contains(&format!("add --trust {}", client.identity.fingerprint())));
    assert!(!server_err.to_string().contains('\n'));

    // The listener survives a refused peer.
    let trusted_client = peer();
    drop(listener);
    let (listener, addr) = listen(&server, &[trusted_client.identity.fingerprint()]).await;
    let (connected, accepted) = handshake(
        &listener,
        &addr,
        &client.identity,
        &[server.identity.fingerprint()],
    )
    .await;
    assert!(connected.unwrap_err().is_auth_failure());
    assert!(accepted.unwrap_err().is_auth_failure());
    let (connected, accepted) = handshake(
        &listener,
        &addr,
        &trusted_client.identity,
        &[server.identity.fingerprint()],
    )
    .await;
    connected.unwrap();
    accepted.unwrap();
}

#[tokio::test]
async fn client_refuses_an_untrusted_server_and_both_sides_say_so() {
    let (client, server) = (peer(), peer());
    let (listener, addr) = listen(&server, &[client.identity.fingerprint()]).await;
    let (connected, accepted) = handshake(&listener, &addr, &client.identity, &[stranger()]).await;

    let client_err = connected.unwrap_err();
    assert!(
        matches!(client_err, NetError::UntrustedPeer { fingerprint, .. } if fingerprint == server.identity.fingerprint()),
        "{client_err}"
    );
    let server_err = accepted.unwrap_err();
    assert!(server_err.is_auth_failure(), "{server_err}");
    assert!(
        matches!(server_err, NetError::PeerRejectedUs { ours, .. } if ours == server.identity.fingerprint()),
        "{server_err}"
    );
}

#[tokio::test]
async fn a_client_without_certificate_is_refused() {
    let server = peer();
    let (listener, addr) = listen(&server, &[stranger()]).await;
    let config = raw_client_config(None);
    let (raw, accepted) = within("handshake", async {
        tokio::join!(
            async {
                let mut tls = raw_connect(&addr, config).await?;
                // The refusal reaches an anonymous client as an alert on its first read.
                let mut byte = [0u8; 1];
                tls.read(&mut byte).await
            },
            listener.accept()
        )
    })
    .await;
    let server_err = accepted.unwrap_err();
    assert!(
        matches!(server_err, NetError::NoPeerCertificate { .. }),
        "{server_err}"
    );
    assert!(server_err.is_auth_failure());
    assert!(
        raw.is_err(),
        "the anonymous client must not get a working connection: {raw:?}"
    );
}

#[tokio::test]
async fn a_frame_announced_over_the_limit_is_refused_before_its_body_arrives() {
    let (client, server) = (peer(), peer());
    let (listener, addr) = listen(&server, &[client.identity.fingerprint()]).await;
    let config = raw_client_config(Some(&client));
    let (raw, accepted) = within("handshake", async {
        tokio::join!(raw_connect(&addr, config), listener.accept())
    })
    .await;
    let mut raw = raw.unwrap();
    let mut server_side = accepted.unwrap();

    // Claims 1 GiB and sends nothing more, keeping the connection open: a reader that tried to
    // buffer the body would wait (or allocate) instead of refusing.
    raw.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    raw.flush().await.unwrap();
    let err = within("refusal", server_side.recv()).await.unwrap_err();
    assert!(
        matches!(err, NetError::Frame(ProtoError::FrameTooLarge { len, .. }) if len == 1 << 30),
        "{err}"
    );
    drop(raw);
}

#[tokio::test]
async fn a_frame_cut_short_is_an_error_and_a_clean_close_is_not() {
    let (client, server) = (peer(), peer());
    let (listener, addr) = listen(&server, &[client.identity.fingerprint()]).await;
    let config = raw_client_config(Some(&client));
    let (raw, accepted) = within("handshake", async {
        tokio::join!(raw_connect(&addr, config), listener.accept())
    })
    .await;
    let mut raw = raw.unwrap();
    let mut server_side = accepted.unwrap();

    let frame = swrepl_proto::encode_frame(&chunk(1000)).unwrap();
    raw.write_all(&frame).await.unwrap();
    raw.write_all(&frame[..500]).await.unwrap();
    raw.shutdown().await.unwrap();
    assert_eq!(
        within("first frame", server_side.recv()).await.unwrap(),
        Some(chunk(1000))
    );
    let err = within("cut frame", server_side.recv()).await.unwrap_err();
    assert!(matches!(err, NetError::TruncatedFrame { .. }), "{err}");
}

#[tokio::test]
async fn a_silent_peer_does_not_hold_up_other_connections() {
    let (client, server) = (peer(), peer());
    let (listener, addr) = listen(&server, &[client.identity.fingerprint()]).await;
    let _silent = TcpStream::connect(&addr).await.unwrap();
    let (connected, accepted) = handshake(
        &listener,
        &addr,
        &client.identity,
        &[server.identity.fingerprint()],
    )
    .await;
    connected.unwrap();
    assert_eq!(
        accepted.unwrap().peer_fingerprint(),
        client.identity.fingerprint()
    );
}

#[tokio::test]
async fn binding_a_port_in_use_says_so() {
    let server = peer();
    let (_listener, addr) = listen(&server, &[stranger()]).await;
    let err = Listener::bind(&addr, &server.identity, &[stranger()])
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Bind { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot listen on {addr}: address already in use")),
        "{text}"
    );
    assert!(text.contains("--listen"), "{text}");
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_fast() {
    let client = peer();
    let closed = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().to_string()
    };
    let err = within(
        "refused connect",
        connect(&closed, &client.identity, &[stranger()], DEADLINE),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NetError::Connect { .. }), "{err}");
    assert!(!err.is_auth_failure());
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to {closed}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out() {
    let client = peer();
    // Accepts TCP but never speaks TLS.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = mute.local_addr().unwrap().to_string();
    let err = within(
        "timeout",
        connect(
            &addr,
            &client.identity,
            &[stranger()],
            Duration::from_millis(300),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NetError::Timeout { .. }), "{err}");
    assert!(!err.is_auth_failure());
}

#[tokio::test]
async fn an_empty_trust_list_is_refused_up_front() {
    let me = peer();
    let err = Listener::bind("127.0.0.1:0", &me.identity, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::NoTrustedFingerprints), "{err}");
    let err = connect("127.0.0.1:1", &me.identity, &[], DEADLINE)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::NoTrustedFingerprints), "{err}");
}

/// A TLS 1.3 client that accepts any server, optionally presenting `client`'s certificate:
/// a peer that does not follow swrepl's rules.
fn raw_client_config(client: Option<&Peer>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(peer) => {
            let chain = vec![CertificateDer::from_pem_file(peer.dir.join("cert.pem")).unwrap()];
            let key = PrivateKeyDer::from_pem_file(peer.dir.join("key.pem")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

async fn raw_connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("swrepl").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
