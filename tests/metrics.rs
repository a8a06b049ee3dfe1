//! `--metrics`: the receiver serves its status as Prometheus text over HTTP.

mod common;

use std::io::{Read, Write};

use common::*;

fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page
}

#[test]
fn receiver_serves_its_figures_as_prometheus_metrics() {
    let pair = Pair::new();
    write(&pair.master, "a.txt", b"hello");
    let metrics = format!("127.0.0.1:{}", free_port());
    let _receiver = pair.start_receiver(&["--metrics", &metrics]);
    wait_until("metrics served", || {
        std::net::TcpStream::connect(&metrics).is_ok()
    });
    assert!(scrape(&metrics).contains("\nswrepl_up 1\n"));

    let out = pair.send_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = scrape(&metrics);
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        page.contains("# TYPE swrepl_pending_changes gauge"),
        "{page}"
    );
    assert!(page.contains("\nswrepl_pending_changes 0\n"), "{page}");
    let acked: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("swrepl_last_ack_seq "))
        .expect("last ack metric")
        .parse()
        .unwrap();
    assert!(acked >= 1.0, "{page}");
}
