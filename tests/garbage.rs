//! Garbage and authentication: random bytes, a half TLS handshake, a TLS 1.2-only client, no
//! client certificate, a certificate with the wrong fingerprint and a slow-loris peer are all
//! refused with a clear log line, while the receiver keeps serving its real peer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Reads until the receiver closes the connection; panics if it never does.
fn wait_closed(mut tcp: TcpStream, what: &str) {
    tcp.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // an alert, then the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: the receiver did not close the connection: {e}"),
        }
    }
}

/// The receiver's refusal lines, for the test output.
fn refusal_lines(receiver: &Proc) -> String {
    receiver
        .log_text()
        .lines()
        .filter(|l| l.contains("refused a connection"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Counts the receiver's refusal lines.
fn refusals(receiver: &Proc) -> usize {
    receiver.log_text().matches("refused a connection").count()
}

#[test]
fn random_bytes_half_handshakes_and_slow_loris_do_not_stop_the_real_peer() {
    let pair = Pair::new();
    write(&pair.master, "conf/app.xml", b"<app/>");
    write(&pair.master, "data/big.bin", &noise("big", 3_000_000));
    let receiver = pair.start_receiver(&[]);
    let addr = pair.addr();

    // Slow loris: more silent connections than the receiver has handshake slots.
    let loris: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut garbage = Vec::new();
    for i in 0..12 {
        let addr = addr.clone();
        garbage.push(std::thread::spawn(move || {
            let mut tcp = TcpStream::connect(&addr).unwrap();
            // A write may fail once the receiver has already closed: that is a refusal too.
            let _ = tcp.write_all(&noise(&format!("garbage {i}"), 4096 + i * 1000));
            wait_closed(tcp, "random bytes");
        }));
    }
    {
        let addr = addr.clone();
        garbage.push(std::thread::spawn(move || {
            // A TLS record header announcing a 512-byte ClientHello, then a few bytes, then silence.
            let mut tcp = TcpStream::connect(&addr).unwrap();
            tcp.write_all(&[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ])
            .unwrap();
            wait_closed(tcp, "half handshake");
        }));
    }

    // The real peer replicates while all that is going on.
    let out = pair.send_once(&[]);
    assert!(out.status.success(), "real sender failed: {}", stderr(&out));
    pair.assert_identical();

    for thread in garbage {
        thread.join().unwrap();
    }
    for tcp in loris {
        wait_closed(tcp, "slow loris");
    }
    wait_until("every bad peer refused and logged", || {
        refusals(&receiver) >= 40 + 13
    });
    let log = receiver.log_text();
    assert!(
        log.contains("did not complete the TLS handshake in time"),
        "no timeout line:\n{log}"
    );
    // Still serving afterwards.
    write(&pair.master, "conf/after.xml", b"<after/>");
    let out = pair.send_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    pair.assert_identical();
}

#[test]
fn a_port_probe_is_not_logged_as_a_refusal() {
    let pair = Pair::new();
    write(&pair.master, "conf/app.xml", b"<app/>");
    let receiver = pair.start_receiver(&[]);
    let addr = pair.addr();
    let before = refusals(&receiver);
    // Monitoring and load balancers open the port and close it without a word.
    for _ in 0..5 {
        drop(TcpStream::connect(&addr).unwrap());
    }
    // A real refusal after them, to know the probes were dealt with.
    let mut tcp = TcpStream::connect(&addr).unwrap();
    let _ = tcp.write_all(&noise("not tls", 4096));
    wait_closed(tcp, "random bytes");
    wait_until("the garbage connection refused", || {
        refusals(&receiver) > before
    });
    let out = pair.send_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    pair.assert_identical();
    assert_eq!(
        refusals(&receiver),
        before + 1,
        "port probes logged as refusals:\n{}",
        refusal_lines(&receiver)
    );
}

/// Accepts any server certificate: the point is what the receiver does with us.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs a TLS handshake without a client certificate with the given versions, then tries to read
/// one byte. Returns the error the client saw (there must be one).
fn handshake_without_client_cert(
    addr: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("swrepl").unwrap())
            .unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => "closed".to_string(),
        Ok(_) => panic!("the receiver sent data to an unauthenticated client"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_tls12_only_client_is_refused() {
    let pair = Pair::new();
    write(&pair.master, "a.txt", b"a");
    let receiver = pair.start_receiver(&[]);
    let error = handshake_without_client_cert(&pair.addr(), &[&rustls::version::TLS12]);
    eprintln!("TLS 1.2 client saw: {error}");
    // (The harness's bare probe that the port is open is not a refusal.)
    wait_until("the refusal is logged", || refusals(&receiver) >= 1);
    eprintln!("receiver: {}", refusal_lines(&receiver));
    assert!(error.contains("ProtocolVersion"), "{error}");
    assert!(refusal_lines(&receiver).contains("incompatible"));
    let out = pair.send_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let pair = Pair::new();
    write(&pair.master, "a.txt", b"a");
    let receiver = pair.start_receiver(&[]);
    let error = handshake_without_client_cert(&pair.addr(), &[&rustls::version::TLS13]);
    eprintln!("client without certificate saw: {error}");
    // (The harness's bare probe that the port is open is not a refusal.)
    wait_until("the refusal is logged", || refusals(&receiver) >= 1);
    eprintln!("receiver: {}", refusal_lines(&receiver));
    assert!(refusal_lines(&receiver).contains("presented no certificate"));
    let out = pair.send_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    pair.assert_identical();
}

#[test]
fn a_certificate_with_the_wrong_fingerprint_is_refused_both_ways() {
    let pair = Pair::new();
    write(&pair.master, "a.txt", b"a");
    let receiver = pair.start_receiver(&[]);
    let stranger = pair.tmp.path().join("stranger-id");
    let stranger_fp = init_identity(&stranger);

    // A sender the receiver does not trust.
    let out = run(&[
        "send",
        "--once",
        "--timeout",
        "20",
        "--root",
        pair.master.to_str().unwrap(),
        "--connect",
        &pair.addr(),
        "--identity",
        stranger.to_str().unwrap(),
        "--trust",
        &pair.slave_fp,
    ]);
    assert!(!out.status.success(), "an untrusted sender replicated");
    assert!(
        stderr(&out).contains(&stranger_fp),
        "the sender is told which certificate was refused: {}",
        stderr(&out)
    );
    wait_until("the untrusted peer is logged", || {
        receiver.log_text().contains(&stranger_fp)
    });
    assert!(!pair.slave.join("a.txt").exists());

    // A sender that does not trust the receiver's certificate.
    let out = run(&[
        "send",
        "--once",
        "--timeout",
        "20",
        "--root",
        pair.master.to_str().unwrap(),
        "--connect",
        &pair.addr(),
        "--identity",
        pair.master_id.to_str().unwrap(),
        "--trust",
        &stranger_fp,
    ]);
    assert!(!out.status.success(), "replicated to an untrusted receiver");
    assert!(!pair.slave.join("a.txt").exists());

    let out = pair.send_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    pair.assert_identical();
}
