"""Minimal reproduction: three plain librdkafka consumers in one group, one
SIGKILLed and restarted every 6 s, four times; then: does every partition get
an owner again and does the group's committed offset reach the end?"""
import json, os, signal, subprocess, sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BROKER = os.environ.get("BROKER", "127.0.0.1:29092")
TOPIC, GROUP, PARTS = f"repro-{int(time.time())}", f"g-{int(time.time())}", 8
EXTRA = dict(kv.split("=", 1) for kv in sys.argv[2:]) if len(sys.argv) > 2 else {}

def consumer_main(name):
    c = Consumer({"bootstrap.servers": BROKER, "group.id": GROUP, "auto.offset.reset": "earliest",
                  "enable.auto.commit": True, "auto.commit.interval.ms": 1000, **EXTRA})
    def on_assign(c, parts): print(f"{time.time():.1f} {name} assigned {[p.partition for p in parts]}", flush=True)
    def on_revoke(c, parts): print(f"{time.time():.1f} {name} revoked {[p.partition for p in parts]}", flush=True)
    c.subscribe([TOPIC], on_assign=on_assign, on_revoke=on_revoke)
    while True:
        c.poll(0.5)

if len(sys.argv) > 1 and sys.argv[1].startswith("consumer:"):
    TOPIC, GROUP = os.environ["TOPIC"], os.environ["GROUP"]
    consumer_main(sys.argv[1])
    sys.exit()

admin = AdminClient({"bootstrap.servers": BROKER})
admin.create_topics([NewTopic(TOPIC, PARTS, 1)])["" + TOPIC].result()
env = dict(os.environ, TOPIC=TOPIC, GROUP=GROUP)
args = sys.argv[2:]
def spawn(n): return subprocess.Popen([sys.executable, __file__, f"consumer:{n}", *args], env=env)
procs = [spawn(i) for i in range(3)]
p = Producer({"bootstrap.servers": BROKER, "linger.ms": 5})
produced = [0] * PARTS
def dr(err, msg):
    if err is None: produced[msg.partition()] = max(produced[msg.partition()], msg.offset() + 1)
start = time.time(); kills = 0; n = 0
while time.time() - start < 40:
    for _ in range(2):
        p.produce(TOPIC, key=str(n), value=b"x", partition=n % PARTS, on_delivery=dr); n += 1
    p.poll(0.5)
    if time.time() - start > 6 * (kills + 1) and kills < 4:
        victim = kills % 3
        procs[victim].send_signal(signal.SIGKILL); procs[victim].wait(); procs[victim] = spawn(victim)
        kills += 1; print(f"{time.time():.1f} killed and restarted consumer {victim}", flush=True)
p.flush()
print(f"produced {sum(produced)} messages; stopped killing at {time.time()-start:.0f}s", flush=True)
checker = Consumer({"bootstrap.servers": BROKER, "group.id": GROUP})
for t in range(0, 181, 10):
    committed = checker.committed([TopicPartition(TOPIC, i) for i in range(PARTS)], timeout=10)
    hw = {i: checker.get_watermark_offsets(TopicPartition(TOPIC, i), timeout=5)[1] for i in range(PARTS)}
    if t == 0: print("high watermarks (ListOffsets) vs produced:", [(hw[i], produced[i]) for i in range(PARTS)], flush=True)
    behind = {tp.partition: produced[tp.partition] - max(tp.offset, 0) for tp in committed if produced[tp.partition] - max(tp.offset, 0) > 0}
    desc = admin.describe_consumer_groups([GROUP])[GROUP].result()
    owned = sorted(tp.partition for m in desc.members for tp in m.assignment.topic_partitions)
    print(f"t+{t}s state={desc.state} members={len(desc.members)} owned={owned} behind={behind}", flush=True)
    if not behind: print("RECOVERED"); break
    if t == 60 and os.environ.get("JOIN"):
        procs.append(spawn(3)); print("a fourth member joins", flush=True)
    time.sleep(10)
for q in procs: q.kill()
