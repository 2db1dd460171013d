//! The wire-server fuzz harness (`fuzz/src/wire.rs`) run by plain `cargo test`: random client
//! byte streams as libFuzzer would make them, the seed corpus, and hand-written hostile cases
//! (garbage, truncated frames, a 4 GiB length prefix, a flood of parked requests). The server
//! must close such connections without panicking or holding unbounded memory.
//! `BACKSTOP_FUZZ_CASES=<n>` changes the number of random cases (default 300);
//! `BACKSTOP_FUZZ_SEED=<seed>` replays one.

#[path = "../../../fuzz/src/wire.rs"]
mod harness;

use std::sync::Arc;
use std::time::Duration;

use backstop_engine::core::splitmix64;
use backstop_mem::{MemBroker, Server, MAX_IN_FLIGHT};
use tokio::io::AsyncWriteExt;

fn bytes(seed: u64, max_len: u64) -> Vec<u8> {
    let mut x = splitmix64(seed ^ 0x7769_7265);
    let len = (x % (max_len + 1)) as usize;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = splitmix64(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn seeds() -> Vec<u64> {
    match std::env::var("BACKSTOP_FUZZ_SEED") {
        Ok(v) => vec![v.parse().expect("BACKSTOP_FUZZ_SEED is a u64")],
        Err(_) => {
            let n = std::env::var("BACKSTOP_FUZZ_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300);
            (0..n).collect()
        }
    }
}

#[test]
fn random_client_streams_never_panic_and_end() {
    for seed in seeds() {
        for mode in 0..4u8 {
            let mut data = bytes(seed, 600);
            data.insert(0, mode | ((seed as u8) & 0x80));
            if let Err(e) = harness::check(&data) {
                panic!(
                    "seed {seed} mode {mode}: {e}\nreplay: BACKSTOP_FUZZ_SEED={seed} cargo test -p backstop-mem --test fuzz_wire"
                );
            }
        }
    }
}

#[test]
fn the_seed_corpus_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wire");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/wire exists") {
        let path = entry.unwrap().path();
        harness::check(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 4, "the corpus has its seeds");
}

#[test]
fn hostile_cases() {
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0xff, 0xff, 0xff, 0xff, b'{'], // 4 GiB length prefix
        vec![3, 0x04, 0x00, 0x00, 0x01],       // 64 MiB + 1
        vec![0, 0, 0, 0, 9, b'{', b'"'],       // truncated frame
        vec![1, b'n', b'u', b'l', b'l', 0xff, 0xc3], // framed non-JSON / bad UTF-8
        vec![0, 0, 0, 0, 0],                   // empty frame
    ];
    for c in cases {
        harness::check(&c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

async fn serve(bytes: Vec<u8>) -> std::io::Result<()> {
    serve_in_parts(vec![bytes]).await
}

/// Sends `parts` with a pause between them (so the server finishes what a part asked), keeps
/// the connection open, and returns how the server ended it.
async fn serve_in_parts(parts: Vec<Vec<u8>>) -> std::io::Result<()> {
    let server = Server::new(Arc::new(MemBroker::new()));
    let (mut client, side) = tokio::io::duplex(4 << 20);
    let serving = tokio::spawn(async move { server.serve_connection(side).await });
    for bytes in parts {
        client.write_all(&bytes).await.ok();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Keep the client open: the server must close on its own.
    let r = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("the server closes a hostile connection by itself")
        .unwrap();
    drop(client);
    r
}

#[tokio::test(start_paused = true)]
async fn a_huge_length_prefix_closes_the_connection_without_allocating() {
    let e = serve(vec![0xff, 0xff, 0xff, 0xf0, 1, 2, 3])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("exceeds"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn garbage_json_closes_the_connection() {
    let mut b = 3u32.to_be_bytes().to_vec();
    b.extend_from_slice(b"}{[");
    assert_eq!(
        serve(b).await.unwrap_err().kind(),
        std::io::ErrorKind::InvalidData
    );
}

fn frame(json: serde_json::Value) -> Vec<u8> {
    let body = serde_json::to_vec(&json).unwrap();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_parked_requests_closes_the_connection() {
    let subscribe = frame(serde_json::json!({"id": 1, "op": {"subscribe": {
        "topic": "t", "subscription": "s", "kind": "shared", "nack_delay_nanos": 0}}}));
    let mut bytes = Vec::new();
    for i in 0..(MAX_IN_FLIGHT as u64 + 10) {
        bytes.extend(frame(
            serde_json::json!({"id": i + 2, "op": {"receive": {"subscription": 1}}}),
        ));
    }
    let e = serve_in_parts(vec![subscribe, bytes]).await.unwrap_err();
    assert!(e.to_string().contains("in flight"), "{e}");
}
