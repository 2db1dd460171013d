//! The parser fuzz harness (`fuzz/src/parsers.rs`) run by plain `cargo test`: random bytes as
//! dead-letter records with properties and as message ids, the seed corpora, and hand-written
//! foreign and malformed records. Needs no broker.
//! `BACKSTOP_FUZZ_CASES=<n>` changes the number of random cases (default 2000);
//! `BACKSTOP_FUZZ_SEED=<seed>` replays one.

#[path = "../../../fuzz/src/parsers.rs"]
mod harness;

use backstop_engine::core::splitmix64;
use backstop_pulsar::PulsarMessageId;

fn bytes(seed: u64, max_len: u64) -> Vec<u8> {
    let mut x = splitmix64(seed ^ 0x6964_6c71);
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
                .unwrap_or(2000);
            (0..n).collect()
        }
    }
}

/// A JSON dead-letter record around random text, so random cases get past the JSON parser.
fn record_json(seed: u64) -> Vec<u8> {
    let noise = bytes(seed, 3000);
    let text = String::from_utf8_lossy(&noise).into_owned();
    let payload = if seed % 2 == 0 {
        format!(
            "\"payload_text\": {}",
            serde_json::to_string(&text).unwrap()
        )
    } else {
        format!(
            "\"payload_bytes\": {}",
            serde_json::to_string(&noise).unwrap()
        )
    };
    let mut out = format!(
        "{{\"origin_topic\":\"t\",\"subscription\":null,\"reason\":\"exhausted\",\"error_kind\":\"x\",\
         \"error\":{},\"attempts\":{},\"first_failure_ms\":1,\"last_failure_ms\":2,\
         \"origin_message_id\":\"zz\",{payload},\"args\":{{\"a\":[1,2,{}]}}}}",
        serde_json::to_string(&text.chars().rev().collect::<String>()).unwrap(),
        seed % 7,
        serde_json::to_string(&text).unwrap(),
    )
    .into_bytes();
    out.push(0xff);
    out.extend_from_slice(&bytes(seed ^ 1, 64));
    out
}

#[test]
fn random_dlq_records_and_properties() {
    for seed in seeds() {
        for data in [bytes(seed, 400), record_json(seed)] {
            if let Err(e) = harness::check_dlq(&data) {
                panic!("seed {seed}: {e}\nreplay: BACKSTOP_FUZZ_SEED={seed} cargo test -p backstop-pulsar --test fuzz_parsers");
            }
        }
    }
}

#[test]
fn random_message_ids() {
    for seed in seeds() {
        let id = PulsarMessageId {
            ledger_id: splitmix64(seed),
            entry_id: splitmix64(seed + 1),
            partition: (seed % 5) as i32 - 1,
            batch_index: (seed % 3) as i32 - 1,
            batch_size: (seed % 4) as i32,
        };
        let mut near = id.to_message_id().0;
        let at = (seed as usize) % (near.len() + 1);
        if seed % 3 == 0 && at < near.len() {
            near[at] ^= 0x5a;
        } else if seed % 3 == 1 {
            near.truncate(at);
        }
        for data in [bytes(seed, 40), id.to_message_id().0, near] {
            harness::check_message_id(&data).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    }
}

#[test]
fn foreign_and_malformed_inputs() {
    let cases: Vec<&[u8]> = vec![
        b"",
        b"{}",
        b"[]",
        b"null",
        br#"{"origin_topic":"t"}"#,
        // A Java client's DLQ message body is the original payload, not our record.
        b"plain text from the Java client",
        br#"{"origin_topic":"t","subscription":"s","reason":"decode","error_kind":"decode","error":"","attempts":4294967295,"first_failure_ms":18446744073709551615,"last_failure_ms":0,"origin_message_id":"","payload_text":null,"payload_bytes":[0,255,256],"args":null}"#,
        b"\xffORIGIN_MESSAGE_ID=1:2:3\nREAL_TOPIC=\xc3\x28\n=\n==",
        b"\xffORIGIN_MESSAGE_ID=0\nORIGIN_MESSAGE_ID=zz",
    ];
    for c in cases {
        harness::check_dlq(c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        harness::check_message_id(c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

#[test]
fn the_seed_corpora_pass() {
    for (target, check) in [
        (
            "dlq_record",
            harness::check_dlq as fn(&[u8]) -> Result<(), String>,
        ),
        ("message_id", harness::check_message_id),
    ] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("the corpus dir exists") {
            let path = entry.unwrap().path();
            check(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 2, "{target} has seeds");
    }
}
