"""The Python client against a real local cluster: three ``kimberlite start`` processes on
loopback, formatted and started here. The binary is ``$KIMBERLITE_BINARY``, or the
repository's ``target/release/kimberlite``.

Run: python -m unittest discover -s src/clients/python/tests -v
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import kimberlite

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
BINARY = os.environ.get("KIMBERLITE_BINARY", os.path.join(ROOT, "target", "release", "kimberlite"))
CLUSTER = 91


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """Three replicas of cluster 91 in a scratch directory, killed and removed by ``stop``."""

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="kimberlite-python-")
        self.addresses = ["127.0.0.1:%d" % free_port() for _ in range(3)]
        self.processes = [None, None, None]
        for replica in range(3):
            subprocess.run(
                [BINARY, "format", "--cluster=%d" % CLUSTER, "--replica=%d" % replica,
                 "--replica-count=3", "--grid-size=64MiB", self.path(replica)],
                check=True, stdout=subprocess.DEVNULL)
            self.start(replica)
        for address in self.addresses:
            self.wait_listening(address)

    @staticmethod
    def wait_listening(address):
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def path(self, replica):
        return os.path.join(self.directory, "%d.kimberlite" % replica)

    def start(self, replica):
        self.processes[replica] = subprocess.Popen(
            [BINARY, "start", "--addresses=" + ",".join(self.addresses), "--log-level=warn",
             self.path(replica)])

    def kill(self, replica):
        self.processes[replica].kill()
        self.processes[replica].wait()
        self.processes[replica] = None

    def client(self):
        return kimberlite.Client(CLUSTER, self.addresses, request_timeout=30.0)

    def stop(self):
        for process in self.processes:
            if process is not None:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.cluster = Cluster()
        self.client = self.cluster.client()

    def tearDown(self):
        self.cluster.stop()

    def test_create_append_with_expected_offsets_read_and_info(self):
        # Goal: every operation from Python, with str and bytes, metadata, each kind of
        # expectation, the refusals as RefusedError with the result's name and the stream's
        # next offset, and reads as iterators.
        client = self.client
        client.create_stream(1, tenant=10)
        with self.assertRaises(kimberlite.RefusedError) as refused:
            client.create_stream(1, tenant=10)
        self.assertEqual(refused.exception.args[0], "stream_exists")
        self.assertEqual(client.append(1, [("Opened", "a"), (b"Deposited", b"b", b"m")], 0), 0)
        self.assertEqual(client.append(1, [("Closed", "c")]), 2)
        with self.assertRaises(kimberlite.RefusedError) as refused:
            client.append(1, [("X", "x")], expected=1)
        self.assertEqual(refused.exception.args, ("expected_offset_wrong", 3))
        self.assertEqual(client.append(2, [("T", "z")], expected="no_stream"), 0)
        events = list(client.read_stream(1))
        self.assertEqual([event.type for event in events], [b"Opened", b"Deposited", b"Closed"])
        self.assertEqual((events[1].metadata, events[1].data), (b"m", b"b"))
        self.assertEqual([event.offset for event in events], [0, 1, 2])
        self.assertEqual([event.position for event in client.read_log()], [0, 1, 2, 3])
        info = client.stream_info(1)
        self.assertEqual((info.tenant, info.offset_next, info.chain), (10, 3, events[2].chain))
        with self.assertRaises(kimberlite.RefusedError):
            client.stream_info(9)
        with self.assertRaises(TypeError):
            client.append(1, ["not a tuple"])
        with self.assertRaises(ValueError):
            client.append(1, [("T", "x")], expected="sometimes")
        with self.assertRaises(ValueError):
            client.append(1, [("T" * 256, "x")])
        with self.assertRaises(ValueError):
            kimberlite.Client(CLUSTER, self.cluster.addresses, request_timeout=-1)
        self.assertEqual(client.append(1, [("Reopened", "d")], expected=3), 3)

    def test_readme_example_runs_as_written(self):
        # Goal: the README shows examples/quickstart.py verbatim, and that program, run
        # against a fresh cluster, appends, reads, reports the stream's length and sees a
        # subscribed event.
        path = os.path.join(ROOT, "src", "clients", "python", "examples", "quickstart.py")
        with open(path) as example, open(os.path.join(ROOT, "README.md")) as readme:
            self.assertIn(example.read(), readme.read())
        output = subprocess.run(
            [sys.executable, path, ",".join(self.cluster.addresses), str(CLUSTER)],
            capture_output=True, text=True, timeout=120, check=True)
        self.assertEqual(output.stdout, '0 AccountOpened {"owner":"ada"}\n1 Deposited '
                         '{"amount":10}\nstream 42 holds 2 events\nsubscription: offset 1\n')

    def test_subscription_sees_every_event_once_through_a_primary_failover(self):
        # Goal: a subscription (a generator) to a stream that does not exist yet sees each of
        # 200 events once, in order, while replica 0 (the primary of view 0) is killed half-way
        # and restarted later; the appends retry through the failover.
        seen = []
        subscription = self.client.subscribe(stream=5)

        def follow():
            for event in subscription:
                seen.append(int.from_bytes(event.data, "little"))
                if len(seen) == 200:
                    return

        follower = threading.Thread(target=follow)
        follower.start()
        for index in range(200):
            if index == 100:
                self.cluster.kill(0)
            if index == 150:
                self.cluster.start(0)
            expected = "no_stream" if index == 0 else index
            self.assertEqual(self.client.append(5, [("N", index.to_bytes(8, "little"))], expected), index)
        follower.join(60)
        self.assertEqual(seen, list(range(200)))

    def test_threads_share_requests_and_throughput(self):
        # Goal: 16 Python threads appending single events through one client all succeed in
        # order per stream, and share requests (automatic batching); prints appends/s for
        # single events from one thread and from 16, and for batches of 100.
        client = self.client
        client.append(7, [("N", b"x")], "no_stream")
        count = 500
        started = time.monotonic()
        for _ in range(count):
            client.append(7, [("N", b"x" * 128)])
        single = count / (time.monotonic() - started)

        def appender(thread):
            for index in range(count // 16):
                expected = "no_stream" if index == 0 else index
                client.append(100 + thread, [("N", b"y" * 128)], expected)

        requests_before, appends_before = client.batching()
        threads = [threading.Thread(target=appender, args=(thread,)) for thread in range(16)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        threaded = (count // 16 * 16) / (time.monotonic() - started)
        requests, appends = client.batching()
        self.assertEqual(appends - appends_before, count // 16 * 16)
        self.assertLess(requests - requests_before, appends - appends_before)
        for thread in range(16):
            self.assertEqual(client.stream_info(100 + thread).offset_next, count // 16)
        batch = [("N", b"z" * 128)] * 100
        started = time.monotonic()
        for _ in range(50):
            client.append(7, batch)
        batched = 50 * 100 / (time.monotonic() - started)
        print("\npython client, 128-byte events: %.0f appends/s single from one thread, %.0f "
              "from 16 threads (%d requests), %.0f events/s in batches of 100"
              % (single, threaded, requests - requests_before, batched))


if __name__ == "__main__":
    unittest.main()
