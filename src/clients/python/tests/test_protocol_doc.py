"""A client written in plain Python from docs/client-protocol.md, docs/data-file.md ("The
message header", "Each command's fields") and docs/event-store.md alone, against a real
cluster: it checks that those documents are enough to talk to a cluster. It shares no code with
the Rust client; only XXH3-128 comes from a library (the `xxhash` package).

Run: python -m unittest discover -s src/clients/python/tests -v
"""

import os
import random
import socket
import struct
import unittest

from xxhash import xxh3_128_intdigest

from test_client import CLUSTER, Cluster

PROTOCOL = 8
HEADER_SIZE = 256
# Commands (docs/data-file.md) and operations (docs/event-store.md).
PING_CLIENT, PONG_CLIENT, REQUEST, REPLY = 3, 4, 5, 8
REGISTER, CREATE_STREAM, APPEND, READ_STREAM, STREAM_INFO = 2, 128, 129, 130, 132
EXPECTED_NO_STREAM = 2**64 - 2


def checksum(data):
    """XXH3-128, stored as a little-endian u128 like every integer."""
    return xxh3_128_intdigest(data).to_bytes(16, "little")


def header(command, cluster, client=0, request=0, operation=0, view=0, commit=0,
           parent=b"\0" * 16, context=b"\0" * 16, timestamp=0):
    data = bytearray(HEADER_SIZE)
    data[32:48], data[48:64] = parent, context
    struct.pack_into("<QQQ", data, 64, cluster, 0, commit)
    struct.pack_into("<HBB", data, 88, PROTOCOL, command, 0)
    struct.pack_into("<Q", data, 96, timestamp)
    struct.pack_into("<Q", data, 104, client)
    struct.pack_into("<I", data, 128, view)
    struct.pack_into("<I", data, 132, request)
    data[140] = operation
    return data


def seal(data, body):
    """Sets size, then checksum_body, then checksum (over bytes 16..256)."""
    struct.pack_into("<I", data, 92, HEADER_SIZE + len(body))
    data[16:32] = checksum(body)
    data[0:16] = checksum(bytes(data[16:256]))
    return bytes(data) + body


class Message:
    def __init__(self, data, body):
        self.data, self.body = data, body
        self.cluster, self.op, self.commit = struct.unpack_from("<QQQ", data, 64)
        self.protocol, self.command, self.replica = struct.unpack_from("<HBB", data, 88)
        self.client, = struct.unpack_from("<Q", data, 104)
        self.view, self.request = struct.unpack_from("<II", data, 128)
        self.operation = data[140]
        self.context = data[48:64]


def receive(connection):
    """One message, its checksums checked; None if the replica closed the connection."""
    data = b""
    while len(data) < HEADER_SIZE:
        chunk = connection.recv(HEADER_SIZE - len(data))
        if not chunk:
            return None
        data += chunk
    size, = struct.unpack_from("<I", data, 92)
    body = b""
    while len(body) < size - HEADER_SIZE:
        chunk = connection.recv(size - HEADER_SIZE - len(body))
        if not chunk:
            return None
        body += chunk
    assert data[0:16] == checksum(data[16:256]), "header checksum"
    assert data[16:32] == checksum(body), "body checksum"
    return Message(data, body)


class DocClient:
    """The session rules of docs/client-protocol.md, without retries: enough for a test."""

    def __init__(self, addresses, cluster):
        self.addresses, self.cluster = addresses, cluster
        self.client = random.getrandbits(64) | 1
        self.view, self.commit, self.request = 0, 0, 0
        self.chain = b"\0" * 16
        self.connections = {}

    def connection(self, replica):
        if replica not in self.connections:
            host, port = self.addresses[replica].rsplit(":", 1)
            self.connections[replica] = socket.create_connection((host, int(port)), timeout=10)
        return self.connections[replica]

    def send(self, replica, operation, body, read=False):
        """Sends a request to `replica`; returns its reply, following `pong_client` redirects."""
        request = self.request + 1 if read or operation != REGISTER else 0
        parent = os.urandom(16) if read else self.chain
        data = header(REQUEST, self.cluster, client=self.client, request=request,
                      operation=operation, view=self.view, commit=self.commit if read else 0,
                      parent=parent)
        message = seal(data, body)
        request_checksum = message[0:16]
        connection = self.connection(replica)
        connection.sendall(message)
        while True:
            answer = receive(connection)
            assert answer is not None, "the replica closed the connection"
            self.view = max(self.view, answer.view)
            if answer.command == PONG_CLIENT:
                # A backup names its view: the request goes to that view's primary.
                return self.send(self.view % len(self.addresses), operation, body, read)
            if (answer.command, answer.context, answer.operation, answer.request) != (
                    REPLY, request_checksum, operation, request):
                continue
            self.commit = max(self.commit, answer.commit)
            if not read:
                self.request = request
                self.chain = checksum(struct.pack("<QQ", self.client, answer.op))
            return answer

    def close(self):
        for connection in self.connections.values():
            connection.close()

    def write(self, operation, body, replica=None):
        return self.send(self.view % len(self.addresses) if replica is None else replica,
                         operation, body)

    def read(self, operation, body):
        return self.send(self.view % len(self.addresses), operation, body, read=True)


def event_bytes(event_type, data, metadata=b""):
    payload = event_type + metadata + data
    padding = (-len(payload)) % 8
    return struct.pack("<IHBB", len(data), len(metadata), len(event_type), 0) + payload + b"\0" * padding


def append_body(stream, expected, events):
    encoded = b"".join(event_bytes(*event) for event in events)
    return struct.pack("<QQII", stream, expected, len(events), len(encoded)) + encoded


def records(body):
    """The ReadReplyHeader and the event records of a read reply."""
    result, count, next_, end = struct.unpack_from("<IIQQ", body, 0)
    at, events = 24, []
    for _ in range(count):
        stream, offset, position, timestamp = struct.unpack_from("<QQQQ", body, at)
        chain = body[at + 32:at + 48]
        data_size, metadata_size, type_size, reserved = struct.unpack_from("<IHBB", body, at + 48)
        payload = body[at + 56:at + 56 + type_size + metadata_size + data_size]
        events.append({
            "stream": stream, "offset": offset, "position": position, "timestamp": timestamp,
            "chain": chain, "fixed": body[at:at + 32], "sizes": body[at + 48:at + 56],
            "type": payload[:type_size], "metadata": payload[type_size:type_size + metadata_size],
            "data": payload[type_size + metadata_size:], "payload": payload,
        })
        at += 56 + len(payload) + (-len(payload)) % 8
    assert at == len(body)
    return (result, next_, end), events


class ProtocolDocTest(unittest.TestCase):
    def setUp(self):
        self.cluster = Cluster()

    def tearDown(self):
        self.cluster.stop()

    def test_a_client_written_from_the_documents_alone(self):
        # Goal: following only the documents, a client registers (to a backup first, which
        # redirects it), creates a stream, appends with and without metadata, is refused for a
        # wrong expected offset with the stream's next offset, reads the events back with the
        # chain recomputed from its definition, and reads stream_info; a client naming another
        # cluster is closed without an answer.
        addresses = self.cluster.addresses
        client = DocClient(addresses, CLUSTER)
        self.addCleanup(client.close)
        registered = client.write(REGISTER, b"", replica=1)
        self.assertGreater(registered.op, 0)
        reply = client.write(CREATE_STREAM, struct.pack("<QQ", 9, 99))
        self.assertEqual(struct.unpack("<II", reply.body), (0, 0))
        events = [(b"Opened", b"hello"), (b"Noted", b"world!", b"meta")]
        reply = client.write(APPEND, append_body(9, 0, events))
        self.assertEqual(struct.unpack("<IIQ", reply.body), (0, 0, 0))
        reply = client.write(APPEND, append_body(9, 7, [(b"X", b"x")]))
        self.assertEqual(struct.unpack("<IIQ", reply.body), (4, 0, 2))
        reply = client.write(APPEND, append_body(10, EXPECTED_NO_STREAM, [(b"Y", b"y")]))
        self.assertEqual(struct.unpack("<IIQ", reply.body), (0, 0, 0))
        reply = client.read(READ_STREAM, struct.pack("<QQII", 9, 0, 100, 0))
        (result, next_, end), read = records(reply.body)
        self.assertEqual((result, next_, end), (0, 2, 2))
        self.assertEqual([(event["type"], event["data"], event["metadata"]) for event in read],
                         [(b"Opened", b"hello", b""), (b"Noted", b"world!", b"meta")])
        chain = checksum(struct.pack("<QQ", 9, 99))
        for event in read:
            chain = checksum(chain + event["fixed"] + event["sizes"] + event["payload"])
            self.assertEqual(chain, event["chain"])
        reply = client.read(STREAM_INFO, struct.pack("<Q", 9))
        result, _, stream, tenant, offset_next, count = struct.unpack_from("<IIQQQQ", reply.body)
        self.assertEqual((result, stream, tenant, offset_next, count), (0, 9, 99, 2, 2))
        self.assertEqual(reply.body[40:56], chain)
        host, port = addresses[0].rsplit(":", 1)
        stranger = socket.create_connection((host, int(port)), timeout=10)
        self.addCleanup(stranger.close)
        ping = header(PING_CLIENT, CLUSTER + 1, client=5, timestamp=1)
        stranger.sendall(seal(ping, b""))
        self.assertIsNone(receive(stranger))


if __name__ == "__main__":
    unittest.main()
