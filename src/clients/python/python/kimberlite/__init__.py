"""Client for Kimberlite, a replicated append-only event store.

    import kimberlite

    client = kimberlite.Client(cluster=7, addresses=["127.0.0.1:3001"])
    client.append(5, [("Greeted", b"hello")], expected="no_stream")
    for event in client.read_stream(5):
        print(event.offset, event.type, event.data)
    for event in client.subscribe(stream=5, offset=1):   # blocks, as events commit
        print(event.offset, event.data)

The client runs the same session core as the Rust client (``kimberlite-client``): one session
per ``Client``, shared by every thread that uses it; appends from concurrent threads are
batched into shared requests automatically. Calls release the GIL while they wait. Errors are
subclasses of ``KimberliteError``; ``RefusedError.args`` is ``(code, next_offset)`` with the
result code's name (``"expected_offset_wrong"``, ``"stream_not_found"``, ...).
"""

from ._native import (
    Client,
    EvictedError,
    Events,
    KimberliteError,
    RecordedEvent,
    RefusedError,
    StreamInfo,
    Subscription,
    TimeoutError,
    TooLargeError,
    WrongClusterError,
)

__all__ = [
    "Client",
    "EvictedError",
    "Events",
    "KimberliteError",
    "RecordedEvent",
    "RefusedError",
    "StreamInfo",
    "Subscription",
    "TimeoutError",
    "TooLargeError",
    "WrongClusterError",
]
