"""The README's Python example, on a fresh cluster:
python quickstart.py [ADDRESSES] [CLUSTER]   (default 127.0.0.1:3001 and 7)."""

import sys

import kimberlite

addresses = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:3001").split(",")
cluster = int(sys.argv[2]) if len(sys.argv) > 2 else 7
client = kimberlite.Client(cluster, addresses)

# The first append creates the stream ("no_stream" expected); the next expects offset 1.
client.append(42, [("AccountOpened", '{"owner":"ada"}')], expected="no_stream")
client.append(42, [("Deposited", '{"amount":10}', "teller=7")], expected=1)

for event in client.read_stream(42):
    print(event.offset, event.type.decode(), event.data.decode())
print("stream 42 holds", client.stream_info(42).offset_next, "events")

# Events as they commit, from offset 1 on (blocks until one comes; never ends by itself).
for event in client.subscribe(stream=42, offset=1):
    print("subscription: offset", event.offset)
    break
