#!/usr/bin/env python3
"""Smoke/interop check with the official Apache Pulsar Python client (pip: pulsar-client).

  pulsar_py_smoke.py [roundtrip]           produce N messages to a fresh topic, consume them back
  pulsar_py_smoke.py produce  -t TOPIC -n N   send "<prefix>-<i>" (property i=<i>) for i in 0..N-1
  pulsar_py_smoke.py consume  -t TOPIC -n N   receive N (from the earliest), ack, check payloads
  pulsar_py_smoke.py dlq      -t TOPIC -n N   receive N dead-letter records (from the earliest), ack,
                                              check the Java DLQ properties and the JSON body
  pulsar_py_smoke.py retry    -t TOPIC -n N   receive N retry-topic copies (from the earliest), ack,
                                              check the Java retry properties, print them and the body

produce options: --json sends {"i": i, "prefix": PREFIX} instead of text; --batching turns on
producer-side batching (messages sent asynchronously, then flushed, so they share batches);
--raw TEXT (repeatable) sends TEXT as is after the N messages; --print-ids prints one line
`JSON {"ids": {"<i>": "<id>"}, "raw_ids": ["<id>", ...]}` with each message id in the Java
client's form (ledger:entry:partition[:batchIndex]).

dlq checks every record has REAL_TOPIC, ORIGIN_MESSAGE_ID and RECONSUMETIMES and a JSON body,
then prints `JSON {"records": [{"properties": {...}, "body": {...}, "key": ..., "id": ...}]}`.

Service URL: --url, else $PULSAR_SERVICE_URL, else pulsar://127.0.0.1:6650 (scripts/pulsar start).
Exit 0 on success, 1 on a missing/wrong message. Interop tests pair produce/consume with another client.
"""
import argparse
import json
import os
import sys
import threading
import time

import pulsar

JAVA_DLQ_PROPERTIES = ("REAL_TOPIC", "ORIGIN_MESSAGE_ID", "RECONSUMETIMES")
JAVA_RETRY_PROPERTIES = ("REAL_TOPIC", "RETRY_TOPIC", "ORIGIN_MESSAGE_ID", "RECONSUMETIMES", "DELAY_TIME")


def java_id(msg_id) -> str:
    """The Java client's MessageId.toString(): ledger:entry:partition[:batchIndex]."""
    s = f"{msg_id.ledger_id()}:{msg_id.entry_id()}:{msg_id.partition()}"
    if msg_id.batch_index() >= 0:
        s += f":{msg_id.batch_index()}"
    return s


def produce(client, a) -> dict:
    producer = client.create_producer(
        a.topic,
        batching_enabled=a.batching,
        batching_max_messages=max(a.count, 1),
        batching_max_publish_delay_ms=50,
    )
    ids, raw_ids = {}, []
    payloads = []
    for i in range(a.count):
        body = json.dumps({"i": i, "prefix": a.prefix}) if a.json else f"{a.prefix}-{i}"
        payloads.append((str(i), body.encode(), {"i": str(i)}))
    for n, raw in enumerate(a.raw or []):
        payloads.append((f"raw-{n}", raw.encode(), {"raw": str(n)}))
    if a.batching:
        done = threading.Event()
        lock = threading.Lock()
        results = {}

        def callback_for(name):
            def callback(res, msg_id):
                with lock:
                    results[name] = (res, msg_id)
                    if len(results) == len(payloads):
                        done.set()
            return callback

        for name, body, props in payloads:
            producer.send_async(body, callback_for(name), properties=props)
        producer.flush()
        if not done.wait(a.timeout_ms / 1000):
            raise TimeoutError(f"only {len(results)} of {len(payloads)} sends confirmed")
        for name, (res, msg_id) in results.items():
            if res != pulsar.Result.Ok:
                raise RuntimeError(f"send of {name} failed: {res}")
    else:
        results = {name: (pulsar.Result.Ok, producer.send(body, properties=props))
                   for name, body, props in payloads}
    producer.close()
    for name, (_, msg_id) in results.items():
        if name.startswith("raw-"):
            raw_ids.append((int(name[4:]), java_id(msg_id)))
        else:
            ids[name] = java_id(msg_id)
    return {"ids": ids, "raw_ids": [i for _, i in sorted(raw_ids)]}


def consume(consumer, a) -> None:
    for i in range(a.count):
        msg = consumer.receive(timeout_millis=a.timeout_ms)
        consumer.acknowledge(msg)
        want = f"{a.prefix}-{i}".encode()
        if msg.data() != want:
            raise ValueError(f"message {i}: got {msg.data()!r}, want {want!r}")


def read_dlq(consumer, a) -> dict:
    records = []
    for n in range(a.count):
        msg = consumer.receive(timeout_millis=a.timeout_ms)
        props = msg.properties()
        missing = [p for p in JAVA_DLQ_PROPERTIES if p not in props]
        if missing:
            raise ValueError(f"record {n} ({java_id(msg.message_id())}) lacks {missing}: {props}")
        try:
            body = json.loads(msg.data())
        except ValueError as e:
            raise ValueError(f"record {n}: body is not JSON ({e}): {msg.data()!r}")
        consumer.acknowledge(msg)
        records.append({
            "properties": props,
            "body": body,
            "key": msg.partition_key() or None,
            "id": java_id(msg.message_id()),
        })
    return {"records": records}


def read_retry(consumer, a) -> dict:
    copies = []
    for n in range(a.count):
        msg = consumer.receive(timeout_millis=a.timeout_ms)
        props = msg.properties()
        missing = [p for p in JAVA_RETRY_PROPERTIES if p not in props]
        if missing:
            raise ValueError(f"copy {n} ({java_id(msg.message_id())}) lacks {missing}: {props}")
        consumer.acknowledge(msg)
        copies.append({
            "properties": props,
            "body": json.loads(msg.data()),
            "key": msg.partition_key() or None,
            "id": java_id(msg.message_id()),
        })
    return {"copies": copies}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="roundtrip",
                    choices=["roundtrip", "produce", "consume", "dlq", "retry"])
    ap.add_argument("--url", default=os.environ.get("PULSAR_SERVICE_URL", "pulsar://127.0.0.1:6650"))
    ap.add_argument("-t", "--topic", default=f"persistent://public/default/py-smoke-{int(time.time() * 1000)}")
    ap.add_argument("-n", "--count", type=int, default=10)
    ap.add_argument("-s", "--subscription", default="py-smoke")
    ap.add_argument("--prefix", default="py-smoke")
    ap.add_argument("--timeout-ms", type=int, default=10000)
    ap.add_argument("--json", action="store_true", help="produce JSON bodies")
    ap.add_argument("--batching", action="store_true", help="produce with batching")
    ap.add_argument("--raw", action="append", help="extra raw payload to produce (repeatable)")
    ap.add_argument("--print-ids", action="store_true", help="print the produced message ids")
    a = ap.parse_args()

    client = pulsar.Client(a.url, operation_timeout_seconds=30,
                           logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    out = None
    try:
        consumer = None
        if a.mode in ("roundtrip", "consume", "dlq", "retry"):
            consumer = client.subscribe(a.topic, a.subscription,
                                        initial_position=pulsar.InitialPosition.Earliest)
        if a.mode in ("roundtrip", "produce"):
            produced = produce(client, a)
            if a.print_ids:
                out = produced
        if a.mode in ("roundtrip", "consume"):
            consume(consumer, a)
        if a.mode == "dlq":
            out = read_dlq(consumer, a)
        if a.mode == "retry":
            out = read_retry(consumer, a)
        if consumer is not None:
            consumer.close()
    except Exception as e:  # timeout on receive, connection refused, wrong payload, ...
        print(f"FAIL: {a.mode} on {a.topic} via {a.url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if out is not None:
        print("JSON " + json.dumps(out, sort_keys=True))
    print(f"OK {a.mode} {a.count} messages on {a.topic} (pulsar-client {pulsar.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
