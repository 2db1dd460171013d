//! `TCP_NODELAY` on the pulsar crate's broker connections.
//!
//! The pulsar crate opens its TCP connections with Nagle's algorithm on (the Java client turns
//! it off). backstop writes an ack and the next publish at nearly the same moment; with Nagle
//! the second small write waits for the broker's TCP acknowledgement of the first, which the
//! broker delays (delayed ACK, 40 ms on Linux): measured on Pulsar 4.0.7, the end-to-end latency
//! of one message went from 11 ms to 48 ms. The crate gives no access to its sockets, so on
//! Linux the adapter finds them among the process's open sockets (`/proc/self/fd`): TCP
//! sockets whose peer port is the service URL's, and sets `TCP_NODELAY` on them, right after
//! it creates a producer or a consumer and then every second (the crate reconnects on its own).
//! Other platforms keep the crate's behaviour. [`PulsarOptions::tcp_nodelay`] turns it off.
//!
//! [`PulsarOptions::tcp_nodelay`]: crate::PulsarOptions::tcp_nodelay

use std::sync::Weak;
use std::time::Duration;

/// How often the connections are checked again.
const INTERVAL: Duration = Duration::from_secs(1);

/// The port of a `pulsar://` / `pulsar+ssl://` URL (default 6650 / 6651).
pub(crate) fn service_port(url: &str) -> Option<u16> {
    let parsed = url::Url::parse(url).ok()?;
    match parsed.scheme() {
        "pulsar" => Some(parsed.port().unwrap_or(6650)),
        "pulsar+ssl" => Some(parsed.port().unwrap_or(6651)),
        _ => None,
    }
}

/// Sets `TCP_NODELAY` on every TCP socket of this process connected to `port` that does not
/// have it yet; returns how many it changed. Best effort: errors are ignored.
#[cfg(target_os = "linux")]
pub(crate) fn apply(port: u16) -> usize {
    use std::os::fd::BorrowedFd;

    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut changed = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .map(|target| {
                target
                    .as_os_str()
                    .as_encoded_bytes()
                    .starts_with(b"socket:")
            })
            .unwrap_or(false);
        if !is_socket {
            continue;
        }
        // SAFETY: `fd` was open a moment ago and is only borrowed for a few `getsockopt` /
        // `setsockopt` / `getpeername` calls; it is never closed here. Should another thread
        // close it (and the number be reused) in between, the calls fail with an error or set
        // TCP_NODELAY on another TCP socket, which changes only how small writes are packed.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let to_broker = socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == port);
        if to_broker
            && socket.r#type().ok() == Some(socket2::Type::STREAM)
            && socket.tcp_nodelay().ok() == Some(false)
            && socket.set_tcp_nodelay(true).is_ok()
        {
            changed += 1;
        }
    }
    changed
}

/// Other platforms: the crate's sockets are left as they are.
#[cfg(not(target_os = "linux"))]
pub(crate) fn apply(_port: u16) -> usize {
    0
}

/// Applies [`apply`] every second while `alive` can be upgraded (the broker handle exists).
pub(crate) fn keep_applying<T: Send + Sync + 'static>(port: u16, alive: Weak<T>) {
    if cfg!(not(target_os = "linux")) {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(INTERVAL).await;
            if alive.upgrade().is_none() {
                return;
            }
            let changed = tokio::task::spawn_blocking(move || apply(port))
                .await
                .unwrap_or(0);
            if changed > 0 {
                tracing::debug!(port, changed, "TCP_NODELAY set on new broker connections");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_service_urls() {
        assert_eq!(service_port("pulsar://127.0.0.1:6660"), Some(6660));
        assert_eq!(service_port("pulsar://localhost"), Some(6650));
        assert_eq!(service_port("pulsar+ssl://broker.example"), Some(6651));
        assert_eq!(service_port("http://x:1"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sets_nodelay_on_connections_to_the_port_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let ours = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("c");
        let theirs = std::net::TcpStream::connect(other.local_addr().expect("addr")).expect("c");
        assert!(!ours.nodelay().expect("get"));
        assert!(apply(port) >= 1);
        assert!(ours.nodelay().expect("get"));
        assert!(!theirs.nodelay().expect("get"), "other ports untouched");
        assert_eq!(apply(port), 0, "nothing left to change");
    }
}
