//! The broker conformance suite, run against `MemBroker` in process and over TCP on loopback
//! (`Server` + `RemoteBroker`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backstop_conformance::{unique_prefix, Case, ConnectionFaults, Env, Features, Harness};
use backstop_mem::{ClientConfig, Faults, MemBroker, RemoteBroker, Server};

/// `MemBroker` called directly; connection loss is an injected outage.
struct InProcess;

struct Outage(Faults);

#[async_trait]
impl ConnectionFaults for Outage {
    async fn break_connection(&self) {
        self.0.set_offline(true);
    }
    async fn heal(&self) {
        self.0.set_offline(false);
    }
}

#[async_trait]
impl Harness for InProcess {
    fn features(&self) -> Features {
        Features::default()
    }

    async fn env(&self, case: Case) -> Env {
        let broker = MemBroker::new();
        let faults = Arc::new(Outage(broker.faults()));
        Env::new(Arc::new(broker), unique_prefix(case.name())).with_faults(faults)
    }
}

/// `MemBroker` behind a `Server` on 127.0.0.1, used through a `RemoteBroker`; connection loss
/// is the server dropping every connection and the client's connects being refused.
struct OverTcp;

struct Cut {
    server: Server,
    refuse: Arc<AtomicBool>,
}

#[async_trait]
impl ConnectionFaults for Cut {
    async fn break_connection(&self) {
        self.refuse.store(true, Ordering::SeqCst);
        self.server.disconnect_all();
    }
    async fn heal(&self) {
        self.refuse.store(false, Ordering::SeqCst);
    }
}

/// Aborts the server task when the case ends.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl Harness for OverTcp {
    fn features(&self) -> Features {
        Features::default()
    }

    async fn env(&self, case: Case) -> Env {
        let broker = MemBroker::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new(Arc::new(broker));
        let task = tokio::spawn({
            let server = server.clone();
            async move { server.serve(listener).await }
        });
        let refuse = Arc::new(AtomicBool::new(false));
        let connect = {
            let refuse = refuse.clone();
            move || {
                let refuse = refuse.load(Ordering::SeqCst);
                async move {
                    if refuse {
                        return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
                    }
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    Ok(stream)
                }
            }
        };
        let config = ClientConfig {
            call_timeout: Some(Duration::from_secs(5)),
            receive_timeout: None,
            keepalive: Some(Duration::from_millis(500)),
        };
        let remote = RemoteBroker::with_config(connect, config);
        Env::new(Arc::new(remote), unique_prefix(case.name()))
            .with_faults(Arc::new(Cut { server, refuse }))
            .keep(AbortOnDrop(task.abort_handle()))
    }
}

mod in_process {
    use super::*;
    backstop_conformance::conformance_tests!(InProcess);
}

mod over_tcp {
    use super::*;
    backstop_conformance::conformance_tests!(OverTcp);
}
