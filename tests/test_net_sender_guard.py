"""Network plumbing: presentation contexts batched by SOP class for an association
(net/sender.py, at most 128 per association, PS3.8 9.3.2.2) and guard.recv_whole read
against pynetdicom's own socket reads (net/guard.py)."""

from __future__ import annotations

import socket
import threading
import types

import pytest
from pynetdicom.transport import AssociationSocket

from compacs.net.guard import recv_whole


def test_context_batches_keep_each_sop_class_whole():
    from pynetdicom import build_context

    from compacs.net.sender import batches

    contexts = []
    for n in range(70):
        uid = f"1.2.3.{n}"
        contexts += [
            build_context(uid, ["1.2.840.10008.1.2.4.80"]),
            build_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
        ]
    groups = batches(contexts)
    assert [len(g) for g in groups] == [128, 12]
    for group in groups:
        classes = [str(cx.abstract_syntax) for cx in group]
        assert all(classes.count(c) == 2 for c in classes)


def test_recv_whole_reads_what_pynetdicom_reads():
    """guard.recv_whole: all ``n`` bytes across partial sends, fewer when the peer closes,
    a timeout raised (as pynetdicom's AssociationSocket.recv: dul.py turns both into
    Evt17); the bytes are pynetdicom's own read of the same stream."""
    payload = bytes(range(256)) * 3000  # 768,000 bytes

    def read_with(reader) -> bytes:
        ours, theirs = socket.socketpair()
        ours.settimeout(5)

        def send() -> None:
            for start in range(0, len(payload), 70_001):
                theirs.sendall(payload[start : start + 70_001])
            theirs.close()

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return bytes(reader(ours, len(payload) + 10))
        finally:
            sender.join()
            ours.close()

    ours = read_with(lambda s, n: recv_whole(types.SimpleNamespace(socket=s), n))
    theirs = read_with(lambda s, n: AssociationSocket.recv(types.SimpleNamespace(socket=s), n))
    assert ours == theirs == payload  # short by the 10 bytes never sent: the peer closed

    quiet, peer = socket.socketpair()
    quiet.settimeout(0.2)
    peer.sendall(b"\x04\x00")
    with pytest.raises(TimeoutError):
        recv_whole(types.SimpleNamespace(socket=quiet), 6)
    quiet.close()
    peer.close()
