#!/usr/bin/env python3
"""Smoke/interop check with the official Apache Pulsar Python client (pip: pulsar-client).

  pulsar_py_smoke.py [roundtrip]           produce N messages to a fresh topic, consume them back
  pulsar_py_smoke.py produce  -t TOPIC -n N   send "<prefix>-<i>" (property i=<i>) for i in 0..N-1
  pulsar_py_smoke.py consume  -t TOPIC -n N   receive N (from the earliest), ack, check payloads

Service URL: --url, else $PULSAR_SERVICE_URL, else pulsar://127.0.0.1:6650 (scripts/pulsar start).
Exit 0 on success, 1 on a missing/wrong message. Interop tests pair produce/consume with another client.
"""
import argparse
import os
import sys
import time

import pulsar


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="roundtrip", choices=["roundtrip", "produce", "consume"])
    ap.add_argument("--url", default=os.environ.get("PULSAR_SERVICE_URL", "pulsar://127.0.0.1:6650"))
    ap.add_argument("-t", "--topic", default=f"persistent://public/default/py-smoke-{int(time.time() * 1000)}")
    ap.add_argument("-n", "--count", type=int, default=10)
    ap.add_argument("-s", "--subscription", default="py-smoke")
    ap.add_argument("--prefix", default="py-smoke")
    ap.add_argument("--timeout-ms", type=int, default=10000)
    a = ap.parse_args()

    client = pulsar.Client(a.url, operation_timeout_seconds=30,
                           logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    try:
        consumer = None
        if a.mode in ("roundtrip", "consume"):
            consumer = client.subscribe(a.topic, a.subscription,
                                        initial_position=pulsar.InitialPosition.Earliest)
        if a.mode in ("roundtrip", "produce"):
            producer = client.create_producer(a.topic)
            for i in range(a.count):
                producer.send(f"{a.prefix}-{i}".encode(), properties={"i": str(i)})
            producer.close()
        if consumer is not None:
            for i in range(a.count):
                msg = consumer.receive(timeout_millis=a.timeout_ms)
                consumer.acknowledge(msg)
                want = f"{a.prefix}-{i}".encode()
                if msg.data() != want:
                    print(f"FAIL: message {i}: got {msg.data()!r}, want {want!r}", file=sys.stderr)
                    return 1
            consumer.close()
    except Exception as e:  # timeout on receive, connection refused, ...
        print(f"FAIL: {a.mode} on {a.topic} via {a.url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"OK {a.mode} {a.count} messages on {a.topic} (pulsar-client {pulsar.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
