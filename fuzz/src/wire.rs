//! Fuzz harness for the in-memory broker's TCP wire server (`backstop_mem::Server`): hostile
//! bytes on a connection — garbage, truncated frames, huge length prefixes, well-framed
//! nonsense and well-formed requests with wild handles and ids. Shared by the `wire`
//! cargo-fuzz target and by `cargo test -p backstop-mem --test fuzz_wire` (which includes this
//! file with `#[path]`): it uses only `backstop_mem`, `serde_json` and `tokio`.
//!
//! The rules: nothing panics (in the connection or in any task it spawned); once the client
//! has sent everything and closed its side, the server ends the connection (with an error for
//! bad input) within a bounded (virtual) time.

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use backstop_mem::{MemBroker, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A broken rule, with what broke it.
pub type Failure = String;

static PANICS: Mutex<Vec<(std::thread::ThreadId, String)>> = Mutex::new(Vec::new());

/// Records panics (tokio swallows those of spawned tasks; the harness's current-thread runtime
/// runs them all on the calling thread), then runs the hook that was there (libFuzzer's
/// aborts).
fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut p) = PANICS.lock() {
                p.push((std::thread::current().id(), info.to_string()));
            }
            previous(info);
        }));
    });
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request as the wire format spells it, chosen and filled from `chunk`.
fn request(chunk: &[u8]) -> Vec<u8> {
    let b = |i: usize| chunk.get(i).copied().unwrap_or(0);
    let id = u64::from(b(1) % 8);
    let handle = u64::from(b(2) % 6);
    let text = String::from_utf8_lossy(chunk.get(3..).unwrap_or_default()).into_owned();
    let kind = ["shared", "exclusive", "failover", "key_shared", "bogus"][usize::from(b(2) % 5)];
    let op = match b(0) % 10 {
        0 => serde_json::json!("ping"),
        1 => serde_json::json!({"create_producer": {"topic": text}}),
        2 => serde_json::json!({"send": {"producer": handle, "message": {
            "payload": hex(chunk.get(3..).unwrap_or_default()), "key": text, "properties": {text.clone(): text}
        }}}),
        3 => serde_json::json!({"subscribe": {"topic": "t", "subscription": text,
            "kind": kind,
            "nack_delay_nanos": u64::from(b(4)) << (b(5) % 64)}}),
        4 => serde_json::json!({"receive": {"subscription": handle}}),
        5 => serde_json::json!({"cancel": {"request": handle}}),
        6 => {
            serde_json::json!({"ack": {"subscription": handle, "id": hex(chunk.get(3..).unwrap_or_default())}})
        }
        7 => serde_json::json!({"nack": {"subscription": handle, "id": text}}),
        8 => serde_json::json!({"close": {"subscription": handle}}),
        _ => serde_json::json!({"create_producer": {"topic": "t"}}),
    };
    frame(&serde_json::to_vec(&serde_json::json!({"id": id, "op": op})).unwrap_or_default())
}

/// The bytes a client sends, from the fuzzer's `data`: its first byte picks how the rest is
/// used.
pub fn client_bytes(data: &[u8]) -> Vec<u8> {
    let (mode, rest) = match data.split_first() {
        Some((m, r)) => (*m, r),
        None => return Vec::new(),
    };
    let chunks = rest.split(|b| *b == 0xff);
    match mode % 4 {
        // Raw bytes, whatever they are.
        0 => rest.to_vec(),
        // Well-framed garbage.
        1 => chunks.flat_map(frame).collect(),
        // Requests, then maybe a truncated frame.
        2 => {
            let mut out: Vec<u8> = chunks.flat_map(request).collect();
            if mode & 0x80 != 0 {
                out.extend_from_slice(&[0, 0, 1, 0, b'{']);
            }
            out
        }
        // A length prefix from the data (up to 4 GiB), then a little of a body.
        _ => {
            let mut out = rest.get(..4).unwrap_or(&[0xff; 4]).to_vec();
            out.resize(4, 0xff);
            out.extend_from_slice(rest.get(4..).unwrap_or_default());
            out
        }
    }
}

/// Serves one connection that receives `client_bytes(data)` and then EOF.
pub fn check(data: &[u8]) -> Result<(), Failure> {
    watch_panics();
    let bytes = client_bytes(data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let ended = rt.block_on(async move {
        let broker = MemBroker::new();
        let server = Server::new(Arc::new(broker));
        let (mut client, server_side) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(async move { server.serve_connection(server_side).await });
        let talk = async {
            // Write and read at once: the server answers while we send.
            let (mut rd, mut wr) = tokio::io::split(&mut client);
            let writer = async {
                let _ = wr.write_all(&bytes).await;
                let _ = wr.shutdown().await;
            };
            let reader = async {
                let mut sink = vec![0u8; 64 * 1024];
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            tokio::join!(writer, reader);
        };
        // The reader ends when the server closes its side: that is the rule.
        let finished = tokio::time::timeout(Duration::from_secs(600), talk).await;
        if finished.is_err() {
            serving.abort();
            return (false, Ok(()));
        }
        (true, serving.await.map(|_| ()).map_err(|e| e.to_string()))
    });
    drop(rt);
    let me = std::thread::current().id();
    let mine: Vec<String> = {
        let mut all = PANICS.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, others) = all.drain(..).partition(|(t, _)| *t == me);
        *all = others;
        mine.into_iter().map(|(_, p)| p).collect()
    };
    if let Some(p) = mine.first() {
        return Err(format!("the wire server panicked: {p}"));
    }
    match ended {
        (_, Err(e)) => Err(format!("the connection task failed: {e}")),
        (false, _) => Err("the server kept the connection open after the client's EOF".into()),
        (true, Ok(_)) => Ok(()),
    }
}
