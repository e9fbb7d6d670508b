"""Random ids for what the hub writes: UUIDs (version 4 and the time-ordered version 7).

``uuid.uuid4()`` reads 16 bytes from the OS for every id, and CPython lets go of the
interpreter lock around that system call: beside a busy thread the caller then waits to get
the lock back. On the 2 cores of the benchmark machine an id took 48 us beside a busy thread
instead of 6 us alone, and a message needs about ten (its ids, its deliveries', the audit
record's). Here the OS's randomness is read 4 KiB at a time and handed out in slices: the
same cryptographic source, one system call per 256 UUIDs. A forked child never hands out
what its parent's buffer held (two processes would give the same id).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_CHUNK = 4096


class _Randomness:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        """``n`` (at most a chunk's) bytes of the OS's cryptographic source."""
        with self._lock:
            at = self._at
            if at + n > len(self._buffer):
                self._buffer, at = os.urandom(_CHUNK), 0
            self._at = at + n
            return self._buffer[at:at + n]

    def forget(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it
        self._buffer, self._at = b"", 0


_RANDOM = _Randomness()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RANDOM.forget)


def uuid4() -> str:
    return str(uuid.UUID(bytes=_RANDOM.take(16), version=4))


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7), for what the store writes: new rows land at
    the end of the id indexes instead of on random pages (a bulk audit write dirtied a page
    per row with random ids)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(_RANDOM.take(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 \
        | 0b10 << 62 | rand & (2**62 - 1)
    return str(uuid.UUID(int=value))
