"""Type hints of the native module (see ``kimberlite``)."""

from typing import Iterable, Iterator, Literal, Optional, Sequence, Tuple, Union

_Bytes = Union[str, bytes]
EventInput = Union[Tuple[_Bytes, _Bytes], Tuple[_Bytes, _Bytes, _Bytes]]

class KimberliteError(Exception):
    """Any error of the client."""

class TimeoutError(KimberliteError):
    """No replica answered in time; a write's outcome is unknown (read to find out)."""

class WrongClusterError(KimberliteError):
    """The replicas close the connection unanswered: wrong cluster id, or no client slot."""

class EvictedError(KimberliteError):
    """The cluster ended the session; the next call opens a new one."""

class TooLargeError(KimberliteError):
    """The request is larger than a message: append fewer or smaller events."""

class RefusedError(KimberliteError):
    """The cluster refused the operation; ``args`` is ``(code_name, next_offset)``."""

class RecordedEvent:
    """An event as the cluster holds it."""

    stream: int
    offset: int
    """Its index in its stream, from 0."""
    position: int
    """Its index in the whole log, from 0."""
    timestamp: int
    """When the op that committed it was prepared, in ns since the epoch."""
    chain: int
    """The stream's chain checksum (128 bits) after this event."""
    type: bytes
    metadata: bytes
    data: bytes

class StreamInfo:
    """A stream's state."""

    stream: int
    tenant: int
    offset_next: int
    """The offset the next event will get: the number of events."""
    chain: int
    grid_used_bytes: int
    grid_room_bytes: int

class Events(Iterator[RecordedEvent]):
    """The events of a read, fetched as the iteration goes; ends at the end of the stream."""

    def __iter__(self) -> "Events": ...
    def __next__(self) -> RecordedEvent: ...

class Subscription(Iterator[RecordedEvent]):
    """Events as they commit; ``next`` blocks until one comes, through replica failures."""

    position: int
    """Where it continues: the next offset of its stream, or position of the log."""

    def __iter__(self) -> "Subscription": ...
    def __next__(self) -> RecordedEvent: ...
    def next_timeout(self, timeout: float) -> Optional[RecordedEvent]:
        """The next event, or None if none came within about ``timeout`` seconds."""

class Client:
    """A session with a cluster, for any number of threads.

    ``cluster`` is the cluster id (``kimberlite format --cluster``), ``addresses`` every
    replica's ``HOST:PORT`` in replica order. A call retries other replicas with backoff until
    ``request_timeout`` seconds pass (then ``TimeoutError``).
    """

    def __init__(
        self,
        cluster: int,
        addresses: Sequence[str],
        request_timeout: float = 30.0,
        subscription_wait: float = 1.0,
    ) -> None: ...
    def create_stream(self, stream: int, tenant: int = 0) -> None:
        """Creates a stream (any id but 0 and 2**64 - 1); ``RefusedError`` if it exists."""
    def append(
        self,
        stream: int,
        events: Iterable[EventInput],
        expected: Union[int, Literal["any", "no_stream"], None] = None,
    ) -> int:
        """Appends ``(type, data[, metadata])`` events, all or none; returns the first offset.

        ``expected``: the offset the first event must get, ``"no_stream"`` (the append creates
        the stream, atomically) or ``"any"`` (the default; the stream must exist).
        """
    def stream_info(self, stream: int) -> StreamInfo:
        """The stream's tenant, length and chain."""
    def read_stream(self, stream: int, offset: int = 0) -> Events:
        """The stream's events from ``offset`` on."""
    def read_log(self, position: int = 0) -> Events:
        """The whole log's events from ``position`` on, in log order."""
    def subscribe(
        self, stream: Optional[int] = None, offset: int = 0, position: int = 0
    ) -> Subscription:
        """Events of ``stream`` from ``offset`` (or of the log from ``position``) as they
        commit, each once, in order; a generator that never ends by itself."""
    def batching(self) -> Tuple[int, int]:
        """(requests, appends): append requests sent, and the appends they carried."""
