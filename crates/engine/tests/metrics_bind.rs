//! `/metrics` is bound to loopback unless the application says otherwise: checked through the
//! default constructor, not with an explicit address. (Port 9464 must be free while this runs.)

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream, UdpSocket};
use std::sync::Arc;

use backstop_engine::runtime::{Metrics, MetricsServer, DEFAULT_METRICS_ADDR};

/// This host's address toward the outside (no packet is sent), if it has one.
fn outward_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.254:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_metrics_server_listens_on_loopback_only() {
    let server = MetricsServer::start_default(Arc::new(Metrics::new()))
        .await
        .unwrap_or_else(|e| {
            panic!("binding the default {DEFAULT_METRICS_ADDR}: {e} (is the port taken?)")
        });
    let addr = server.addr();
    assert!(addr.ip().is_loopback(), "bound to {addr}");
    assert_eq!(addr.to_string(), DEFAULT_METRICS_ADDR);

    let port = addr.port();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    if let Some(ip) = outward_ip() {
        let refused = tokio::task::spawn_blocking(move || TcpStream::connect((ip, port)).is_err())
            .await
            .unwrap();
        assert!(refused, "/metrics must not answer on {ip}");
    }
    server.stop();
}
