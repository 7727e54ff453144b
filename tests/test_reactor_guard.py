"""pynetdicom's reactor race (pydicom/pynetdicom#875), forced, and compacs's guard for it.

The reactor thread is held for a moment right after each checkpoint wait, and the sending
thread right after it sent, as a busy machine deschedules threads: the reactor's "paused"
flag is stale, a send_c_store starts at once, and the reactor takes the response off the
queue before the sender looks. Unguarded, the sender waits out its DIMSE timeout and the
association is aborted; guarded, every store gets its response.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from compacs.net.reactor_guard import keep_responses
from compacs.synthetic import ct_series
from tests.support.scu import status_of


class SlowCheckpoint(threading.Event):
    """A checkpoint whose waiter is held 0.1 s after the wait, with the flag stale."""

    def wait(self, timeout: float | None = None) -> bool:
        done = super().wait(timeout)
        time.sleep(0.1)
        return done


def slow_after(send: Callable[..., Any]) -> Callable[..., Any]:
    """``send``, then 0.3 s before the sender goes on to wait for the response."""

    def sent(*args: Any) -> Any:
        out = send(*args)
        time.sleep(0.3)
        return out

    return sent


def stores_with_a_slow_reactor(port: int, guarded: bool) -> list[int | None]:
    ae = AE(ae_title="RACE")
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = 3
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="COMPACS")
    assert assoc.is_established
    checkpoint = SlowCheckpoint()
    checkpoint.set()
    assoc._reactor_checkpoint = checkpoint
    assoc.dimse.send_msg = slow_after(assoc.dimse.send_msg)
    if guarded:
        keep_responses(assoc)
    statuses = []
    try:
        for ds in ct_series(8, 16, 16, seed=11 if guarded else 12):
            if not assoc.is_established:
                statuses.append(None)
                continue
            statuses.append(status_of(assoc.send_c_store(ds)))
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "guarded"])
def test_the_guard_gives_the_sender_its_response(plain_node, guarded):
    statuses = stores_with_a_slow_reactor(plain_node.port, guarded)
    if guarded:
        assert statuses == [0x0000] * 8
    else:  # the race is real: a response went to the reactor, the association aborted
        assert None in statuses
