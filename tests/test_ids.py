"""The hub's ids: valid UUIDs, never the same twice, across threads and forked processes."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from sip_hub import ids


def test_uuid4_and_uuid7_are_well_formed() -> None:
    for value in (ids.uuid4() for _ in range(1000)):
        u = uuid.UUID(value)
        assert str(u) == value and u.version == 4 and u.variant == uuid.RFC_4122
    before = time.time_ns() // 1_000_000
    values = [ids.uuid7() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    for value in values:
        u = uuid.UUID(value)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert before <= u.int >> 80 <= after  # milliseconds since the epoch lead
    assert [v[:13] for v in values] == sorted(v[:13] for v in values)  # time-ordered


def test_ids_never_repeat_across_threads_and_buffer_refills() -> None:
    found: list[list[str]] = [[] for _ in range(8)]

    def make(out: list[str]) -> None:
        for _ in range(3000):  # about twelve refills of the 4 KiB buffer per thread
            out.append(ids.uuid4())
            out.append(ids.uuid7())
    threads = [threading.Thread(target=make, args=(out,)) for out in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [v for out in found for v in out]
    assert len(every) == 8 * 6000 and len(set(every)) == len(every)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_does_not_hand_out_its_parents_ids() -> None:
    ids.uuid4()  # the buffer now holds what the parent will hand out next
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "\n".join(ids.uuid4() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {ids.uuid4() for _ in range(50)}
    assert len(child) == 50 and not child & parent
