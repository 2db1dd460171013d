//! A Pulsar broker a test binary starts, crashes, restarts and stops on its own ports and run
//! dir (with `scripts/pulsar`), so crash tests never disturb the shared broker at
//! `BACKSTOP_PULSAR_URL`. It is stopped when the guard drops, also when the test panics.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Instant;

use super::say;

/// The `scripts/pulsar` of this repository.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pulsar")
}

/// A broker owned by this test process. Start it with [`OwnedBroker::start`]; dropping it stops
/// it (`scripts/pulsar stop`) and removes its run dir, unless the thread is panicking: then the
/// run dir (with `pulsar.log`) is kept for a post-mortem.
#[derive(Debug)]
pub struct OwnedBroker {
    name: String,
    broker_port: u16,
    web_port: u16,
    bookie_port: u16,
    run_dir: PathBuf,
    version: String,
}

/// Whether a TCP port on 127.0.0.1 can be bound now.
fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The first trio (broker 67xx, web 81xx, bookie 32xx) from `offset` on whose ports are all
/// free. Fixed ranges below the ephemeral range, so no client connection can hold them.
fn free_ports(offset: u16) -> Option<(u16, u16, u16)> {
    (offset..100)
        .map(|i| (6700 + i, 8100 + i, 3200 + i))
        .find(|&(b, w, k)| port_free(b) && port_free(w) && port_free(k))
}

impl OwnedBroker {
    /// Starts a fresh broker (wiped data) for test `name` on free ports of its own, waiting
    /// until it is ready. Panics loudly (with the script's output and the log tail) if it cannot:
    /// these tests never skip.
    pub fn start(name: &str, port_offset: u16) -> OwnedBroker {
        let mut offset = port_offset;
        let mut last = String::new();
        for _ in 0..3 {
            let Some((broker_port, web_port, bookie_port)) = free_ports(offset) else {
                panic!(
                    "no free port trio in 6700-6799 / 8100-8199 / 3200-3299 for the {name} broker"
                );
            };
            let run_dir =
                std::env::temp_dir().join(format!("backstop-pulsar-{name}-{broker_port}"));
            let mut broker = OwnedBroker {
                name: name.to_string(),
                broker_port,
                web_port,
                bookie_port,
                run_dir,
                version: String::new(),
            };
            say(&format!(
                "{name}: starting an own Pulsar broker at {} (run dir {}) ...",
                broker.url(),
                broker.run_dir.display()
            ));
            let started = Instant::now();
            let out = broker.run(&["start"]);
            if out.status.success() {
                broker.version = broker.fetch_version();
                say(&format!(
                    "{name}: own broker Apache Pulsar {} ready at {} (admin {}) in {:.1?}",
                    broker.version,
                    broker.url(),
                    broker.admin(),
                    started.elapsed()
                ));
                return broker;
            }
            last = describe(&out);
            // Someone took one of the ports between the check and the start: try the next trio.
            if last.contains("already in use") {
                offset = broker_port - 6700 + 1;
                std::mem::forget(broker); // nothing of ours runs there
                continue;
            }
            // Stop whatever half-started, keep the run dir for the log.
            let _ = broker.run(&["stop"]);
            let dir = broker.run_dir.clone();
            std::mem::forget(broker);
            panic!(
                "\n\n*** {name}: could not start an own Pulsar broker with {} start (run dir {}):\n{last}\n\
                 *** It needs Java 17+ and the jar cache (`scripts/pulsar resolve`, done by \
                 scripts/ensure-deps). These tests never skip.\n\n",
                script().display(),
                dir.display()
            );
        }
        panic!("{name}: could not start an own Pulsar broker: {last}");
    }

    /// `pulsar://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.broker_port)
    }

    /// `http://127.0.0.1:PORT` (admin API).
    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.web_port)
    }

    /// The broker version the admin API reported at start.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(script());
        c.args(args)
            .env("PULSAR_BROKER_PORT", self.broker_port.to_string())
            .env("PULSAR_WEB_PORT", self.web_port.to_string())
            .env("PULSAR_BOOKIE_PORT", self.bookie_port.to_string())
            .env("BACKSTOP_PULSAR_RUN", &self.run_dir)
            .env("PULSAR_STOP_GRACE", "20");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()))
    }

    /// Runs `scripts/pulsar ARGS` for this broker (blocking), panicking with its output and the
    /// log tail if it fails.
    pub fn ctl(&self, args: &[&str]) {
        let started = Instant::now();
        let out = self.run(args);
        if !out.status.success() {
            panic!(
                "{}: scripts/pulsar {} failed:\n{}",
                self.name,
                args.join(" "),
                describe(&out)
            );
        }
        say(&format!(
            "{}: scripts/pulsar {} took {:.1?}",
            self.name,
            args.join(" "),
            started.elapsed()
        ));
    }

    /// [`OwnedBroker::ctl`] off the async runtime's threads.
    pub async fn ctl_async(&self, args: &[&str]) {
        let mut command = self.command(args);
        let name = self.name.clone();
        let shown = args.join(" ");
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
        if !out.status.success() {
            panic!("{name}: scripts/pulsar {shown} failed:\n{}", describe(&out));
        }
        say(&format!(
            "{name}: scripts/pulsar {shown} took {:.1?}",
            started.elapsed()
        ));
    }

    /// SIGKILL the broker (data kept).
    pub async fn kill9(&self) {
        self.ctl_async(&["kill9"]).await;
    }

    /// Graceful stop (SIGTERM; data kept).
    pub async fn stop(&self) {
        self.ctl_async(&["stop"]).await;
    }

    /// Starts again on the same data, waiting until ready.
    pub async fn start_keep_data(&self) {
        self.ctl_async(&["start", "--keep-data"]).await;
    }

    /// Starts it again on its data if it is not running and ready (after a failed scenario).
    pub fn ensure_running(&self) {
        if !self.run(&["status"]).status.success() {
            say(&format!(
                "{}: broker not running; starting it again",
                self.name
            ));
            self.ctl(&["start", "--keep-data"]);
        }
    }

    fn fetch_version(&self) -> String {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("{}/admin/v2/brokers/version", self.admin()))
            .output();
        match out {
            Ok(o) if o.status.success() && !o.stdout.is_empty() => {
                String::from_utf8_lossy(&o.stdout).trim().to_string()
            }
            _ => panic!(
                "{}: the own broker's admin API at {} did not report a version",
                self.name,
                self.admin()
            ),
        }
    }
}

impl Drop for OwnedBroker {
    fn drop(&mut self) {
        let out = self.run(&["stop"]);
        let ok = out.status.success();
        if std::thread::panicking() || !ok {
            say(&format!(
                "{}: own broker stopped ({}); its run dir with pulsar.log is kept: {}",
                self.name,
                if ok { "ok" } else { "stop FAILED" },
                self.run_dir.display()
            ));
            if !ok {
                say(&describe(&out));
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.run_dir);
            say(&format!("{}: own broker stopped", self.name));
        }
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
