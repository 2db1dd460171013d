#!/usr/bin/env python3
"""Writes a dead-letter topic with the official Pulsar Python client's dead-letter policy.

  py_dlq.py --url URL --topic T --dlq D -n N

Produces N messages "py-<i>" (key "k<i>", property i=<i>) to T, then a Shared consumer with
dead_letter_policy(max_redeliver_count=1, dead_letter_topic=D) negatively acks every delivery
until all N went to D (the client moves a message there after its last redelivery). Exits 0
when the consumer saw every message more than once and nothing for a few seconds.
"""
import argparse
import time

import pulsar

a = argparse.ArgumentParser()
a.add_argument("--url", required=True)
a.add_argument("--topic", required=True)
a.add_argument("--dlq", required=True)
a.add_argument("-n", type=int, required=True)
a = a.parse_args()

client = pulsar.Client(a.url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
consumer = client.subscribe(
    a.topic,
    "py-svc",
    consumer_type=pulsar.ConsumerType.Shared,
    negative_ack_redelivery_delay_ms=100,
    dead_letter_policy=pulsar.ConsumerDeadLetterPolicy(
        max_redeliver_count=1, dead_letter_topic=a.dlq
    ),
)
producer = client.create_producer(a.topic, batching_enabled=False)
for i in range(a.n):
    producer.send(f"py-{i}".encode(), properties={"i": str(i)}, partition_key=f"k{i}")
deliveries = {}
idle_since = time.time()
while time.time() - idle_since < 4:
    try:
        m = consumer.receive(timeout_millis=500)
    except pulsar.Timeout:
        continue
    idle_since = time.time()
    deliveries[m.data()] = deliveries.get(m.data(), 0) + 1
    consumer.negative_acknowledge(m)
assert len(deliveries) == a.n, f"saw {len(deliveries)} of {a.n}"
assert all(c >= 2 for c in deliveries.values()), deliveries
consumer.close()
client.close()
print(f"OK {a.n} messages dead-lettered by the Python client to {a.dlq}")
