#!/usr/bin/env python3
"""Tansu 0.6.0: a fetch that starts inside a record batch skips the rest of it.

Produces three records in one batch and one more in a batch of its own, then
fetches from each offset. Apache Kafka returns the batch holding the offset
and the client drops the records before it; Tansu returns the next batch.

    tansu broker --listener-url tcp://127.0.0.1:19093 \
        --advertised-listener-url tcp://127.0.0.1:19093 --storage-engine memory://tansu/ &
    python3 scripts/repro/tansu_fetch_mid_batch.py 127.0.0.1:19093

Seen 29 November 2026 (memory storage): from 0 -> [0, 1, 2, 3];
from 1 -> [3, 3, 3]; from 2 -> [3, 3]; from 3 -> [3]: offsets 1 and 2 are
never delivered to a consumer starting there (and 3 comes more than once).
"""
import sys
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

brokers = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
topic = f"mid-batch-{uuid.uuid4().hex[:8]}"
admin = AdminClient({"bootstrap.servers": brokers})
for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
    f.result()
producer = Producer({"bootstrap.servers": brokers, "linger.ms": 200})
for i in range(3):
    producer.produce(topic, b"in-one-batch-%d" % i, key=b"k")
producer.flush(10)
producer.produce(topic, b"alone", key=b"k")
producer.flush(10)
for start in range(4):
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"probe-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, start)])
    got = []
    while True:
        m = consumer.poll(2)
        if m is None:
            break
        if not m.error():
            got.append(m.offset())
    consumer.close()
    print(f"from {start} -> {got}")
