"""A guard for a race in pynetdicom's association reactor (pynetdicom 3.0.x).

Each association runs a reactor thread that takes incoming DIMSE messages off the queue
and serves them as requests. A ``send_*()`` pauses the reactor (clears its checkpoint)
and waits until the reactor says it is paused, then sends and takes the response off the
same queue. The reactor's "paused" flag is stale between its checkpoint wait returning
and its next loop: a ``send_*()`` that starts in that window sends at once, and when the
reactor thread is descheduled long enough (several busy associations on two cores), it
takes the response itself, logs "Received unexpected C-STORE service message" and drops
it; the sender then waits its DIMSE timeout and aborts the association
(pydicom/pynetdicom#875, #850). Seen by compacs's 8-association load test.

:func:`keep_responses` makes the reactor hand such a response back to the queue whenever
a ``send_*()`` is waiting (the checkpoint is cleared), so the sender gets it. The node
applies it to every association it accepts or requests, through the EVT_CONN_OPEN
handler :func:`keep_responses_on_open` (in ``server.ACCEPTOR_HANDLERS`` and
``server.REQUESTOR_HANDLERS``).
"""

from __future__ import annotations

from typing import Any


def keep_responses(assoc: Any) -> Any:
    """Guard ``assoc`` (a pynetdicom Association) against the race; returns it."""
    serve = assoc._serve_request

    def _serve_request(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not assoc._reactor_checkpoint.is_set():
            assoc.dimse.msg_queue.put((context_id, msg))  # for the waiting send_*()
            return
        serve(msg, context_id)

    assoc._serve_request = _serve_request
    return assoc


def keep_responses_on_open(event: Any) -> None:
    """EVT_CONN_OPEN handler: the guard, before the association's reactor runs."""
    keep_responses(event.assoc)
