"""Event-driven associations: pynetdicom's two reactors wait for work instead of polling.

pynetdicom 3.0.x runs two threads per association, and both poll:

- the DUL reactor (``dul.DULServiceProvider.run_reactor``) sleeps ``_run_loop_delay``
  (1 ms) whenever its queues are empty, then checks the socket with a zero-timeout
  ``select``;
- the association reactor (``association.Association._run_reactor``) sleeps 1 ms on every
  loop before it looks for a DIMSE request, a release or abort, a dead DUL and the
  network (idle) timeout.

Every request/response pair, every C-FIND response and every C-MOVE sub-operation waited
on those sleeps (200 C-FIND responses took ~1.2 ms each), and an idle association cost
two threads waking 1000 times a second. Known upstream: pydicom/pynetdicom#650 (the
reactor's latency and CPU) and #139 (make the DUL event driven).

Here each association the node accepts or requests is made event driven, per instance
(the pynetdicom modules are not patched), by :func:`make_event_driven`, applied through
the EVT_CONN_OPEN handler :func:`event_driven_on_open` (in ``server.ACCEPTOR_HANDLERS``
and ``server.REQUESTOR_HANDLERS``, like ``reactor_guard``):

- the DUL and the association become instances of the subclasses below
  (``__class__`` is swapped on the instance: a requestor's threads are already running
  at EVT_CONN_OPEN, so a new object cannot replace them);
- the DUL's ``_is_transport_event`` first blocks in ``poll()`` on the socket and on a
  wake-up pipe, with the ARTIM timer's remaining time as the timeout, unless there is
  work already (an event, a primitive to send, a kill, TLS bytes buffered, Sta13);
  ``to_provider_queue`` and ``event_queue`` write the pipe on ``put`` while the DUL
  waits, and so does setting its kill flag. ``_run_loop_delay`` becomes 0: the loop's
  sleep is then a mere yield, and the loop otherwise runs unchanged;
- the association's ``_run_reactor`` is pynetdicom's own loop with the 1 ms sleep
  replaced by a wait on a Condition, notified when a DIMSE message (``msg_queue``) or
  an ACSE primitive (``to_user_queue``) arrives, when the association is killed, when
  the DUL returns to Sta1 or its thread ends; the wait's timeout is the network (idle)
  timer's remaining time. ``_is_paused`` is True while it waits, so a ``send_*()`` from
  another thread goes ahead at once, as it does when pynetdicom's reactor sits at its
  checkpoint; the race ``reactor_guard`` covers is unchanged and still covered;
- ``kill()`` and ``stop_dul()`` wait for the DUL's state change and thread end instead
  of sleeping 10 ms and 1 ms at a time.

The DIMSE timeout needs nothing: a ``send_*()`` waits in ``msg_queue.get(timeout=...)``.

Pinned: :func:`require_supported` checks the pynetdicom version (3.0.4 up to 3.1) and every
internal relied on (attributes, signatures, and the names the replaced or wrapped loops
use, which change whenever their code does), and raises :class:`UnsupportedPynetdicom`;
the node calls it at start-up (``server.build_ae``), so a pynetdicom upgrade that changes
them stops the node instead of silently going back to polling.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import queue
import select
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import Any, cast

import pynetdicom
from pynetdicom import evt, fsm
from pynetdicom.acse import ACSE
from pynetdicom.association import LOGGER as ASSOCIATION_LOGGER
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.timer import Timer
from pynetdicom.transport import AssociationSocket

from compacs.net.pdata import CoalescingDIMSE, wire_of

SUPPORTED = ((3, 0, 4), (3, 1, 0))
"""pynetdicom versions this module was written for: >= 3.0.4, < 3.1."""


class UnsupportedPynetdicom(RuntimeError):
    """pynetdicom is not the version, or lacks the internals, this module was written for."""


# -- what pynetdicom must provide ------------------------------------------------------


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


_LOOP_NAMES: dict[tuple[object, str], frozenset[str]] = {
    # the DUL loop that keeps running, with our _is_transport_event and _kill_thread
    (DULServiceProvider, "run_reactor"): _names(
        "A_ABORT_RQ Empty Exception LOGGER _dul_ready _idle_timer _is_transport_event _kill "
        "_kill_thread _process_recv_primitive _run_loop_delay artim_timer assoc cast "
        "do_action encode error event_queue exception expired get is_aborted "
        "is_established is_set put queue reason_diagnostic restart send set sleep socket "
        "source start state_machine time"
    ),
    # called after our wait, unchanged
    (DULServiceProvider, "_is_transport_event"): _names(
        "_read_pdu_data cast close current_state ready socket state_machine"
    ),
    # replaced by EventDrivenDUL.stop_dul (same steps, join instead of a sleep loop)
    (DULServiceProvider, "stop_dul"): _names(
        "_kill_thread _run_loop_delay current_state is_alive sleep state_machine time"
    ),
    # replaced by EventDrivenAssociation._run_reactor (same steps, a wait for the sleep)
    (Association, "_run_reactor"): _names(
        "EVT_ABORTED EVT_RELEASED LOGGER _is_paused _kill _reactor_checkpoint "
        "_serve_request abort acse cast dimse dul error evt get_msg idle_timer_expired info "
        "int is_aborted is_alive is_established is_release_requested is_released kill "
        "network_timeout_response receive_pdu release send_release sleep time trigger "
        "wait"
    ),
    # replaced by pdata.CoalescingDIMSE.send_msg (same steps, the PDUs in batches)
    (DIMSEServiceProvider, "send_msg"): _names(
        "EVT_DIMSE_SENT MessageIDBeingRespondedTo _RQ_TO_MESSAGE _RSP_TO_MESSAGE __class__ "
        "assoc context_id dul encode_msg evt maximum_pdu_size primitive_to_message send_pdu "
        "trigger"
    ),
    # extended by EventDrivenDUL._send; DT-1 hands it P_DATA_TF(primitive), whose PDV values
    # are the primitive's as they are (the batches of pdata.WireBytes)
    (DULServiceProvider, "_send"): _names(
        "EVT_PDU_SENT LOGGER assoc encode evt send socket trigger warning"
    ),
    (fsm, "DT_1"): _names("P_DATA_TF _send cast get to_provider_queue"),
    (P_DATA_TF, "from_primitive"): _names(
        "PresentationDataValueItem append presentation_context_id presentation_data_value "
        "presentation_data_value_items presentation_data_value_list"
    ),
    # replaced by EventDrivenAssociation.kill (same steps, a wait for the sleep)
    (Association, "kill"): _names(
        "_is_paused _kill _reactor_checkpoint dul is_alive is_established set sleep stop_dul time"
    ),
}

_SET_IN_INIT: dict[tuple[type, str], frozenset[str]] = {
    (DULServiceProvider, "__init__"): _names(
        "_idle_timer _kill_thread _run_loop_delay artim_timer event_queue socket "
        "state_machine to_provider_queue to_user_queue"
    ),
    (Association, "__init__"): _names(
        "_is_paused _kill _reactor_checkpoint acse dimse dul network_timeout_response"
    ),
    (DIMSEServiceProvider, "__init__"): frozenset({"msg_queue"}),
    (Timer, "__init__"): frozenset({"_start_time", "_end_time", "_timeout"}),
    (AssociationSocket, "__init__"): frozenset({"socket", "_is_connected"}),
}

_SIGNATURES: dict[tuple[type, str], tuple[str, ...]] = {
    (DULServiceProvider, "_is_transport_event"): ("self",),
    (DULServiceProvider, "stop_dul"): ("self",),
    (DULServiceProvider, "idle_timer_expired"): ("self",),
    (DULServiceProvider, "receive_pdu"): ("self", "wait", "timeout"),
    (Association, "_run_reactor"): ("self",),
    (Association, "_serve_request"): ("self", "msg", "context_id"),
    (Association, "kill"): ("self",),
    (Association, "abort"): ("self", "block"),
    (Association, "release"): ("self",),
    (DIMSEServiceProvider, "get_msg"): ("self", "block"),
    (ACSE, "is_release_requested"): ("self",),
    (ACSE, "is_aborted"): ("self", "abort_type"),
    (ACSE, "send_release"): ("self", "is_response"),
    (StateMachine, "do_action"): ("self", "event"),
    (StateMachine, "transition"): ("self", "state"),
    (queue.Queue, "put"): ("self", "item", "block", "timeout"),
}


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def problems() -> list[str]:
    """What in the installed pynetdicom differs from what this module was written for."""
    found = []
    version = str(getattr(pynetdicom, "__version__", "unknown"))
    low, high = SUPPORTED
    if not low <= _version(version) < high:
        found.append(f"pynetdicom {version} (written for >=3.0.4,<3.1)")
    for (cls, name), params in _SIGNATURES.items():
        method = getattr(cls, name, None)
        if not callable(method):
            found.append(f"{cls.__name__}.{name} missing")
            continue
        got = tuple(inspect.signature(method).parameters)
        if got != params:
            found.append(f"{cls.__name__}.{name}{got}: expected parameters {params}")
    for (owner, name), names in _LOOP_NAMES.items():
        code = getattr(getattr(owner, name, None), "__code__", None)
        if code is None or frozenset(code.co_names) != names:
            where = getattr(owner, "__name__", owner)
            found.append(f"{where}.{name} changed (its code uses other names)")
    for (cls, name), names in _SET_IN_INIT.items():
        code = getattr(getattr(cls, name, None), "__code__", None)
        missing = names - frozenset(code.co_names if code else ())
        if missing:
            found.append(f"{cls.__name__}.{name} no longer sets {sorted(missing)}")
    if not isinstance(getattr(Timer, "remaining", None), property):
        found.append("Timer.remaining missing")
    return found


@functools.cache
def _checked() -> tuple[str, ...]:
    return tuple(problems())


def require_supported() -> None:
    """Raise :class:`UnsupportedPynetdicom` unless pynetdicom is what this was written for."""
    found = _checked()
    if found:
        raise UnsupportedPynetdicom(
            "compacs's event-driven associations (net/event_reactor.py) do not support "
            "this pynetdicom: " + "; ".join(found)
        )


# -- the wake-ups ----------------------------------------------------------------------


class _Waker:
    """A pipe the DUL thread polls beside its socket; ``wake()`` writes it while the DUL
    waits (``waiting``), so a busy DUL costs no system call per queued item."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)
        self.waiting = False
        self._lock = threading.Lock()
        self._closed = False
        self._close = weakref.finalize(self, _close_fds, self.read_fd, self._write_fd)

    def wake(self) -> None:
        if not self.waiting:
            return
        with self._lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):  # full: it is readable already
                    os.write(self._write_fd, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.read_fd, 4096):
                pass

    def close(self) -> None:
        """Once the DUL thread polls no more; later ``wake()`` calls write nothing."""
        with self._lock:
            self._closed = True
            self._close()


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Activity:
    """What the association reactor waits for: a count of happenings and a Condition."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.count = 0

    def notify(self) -> None:
        """Something happened the reactor must look at once (an ACSE primitive, a kill)."""
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def recheck(self) -> None:
        """Wake the reactor to re-evaluate what it waits for (a message, the checkpoint)."""
        with self.changed:
            self.changed.notify_all()


class _NotifyingQueue(queue.Queue[Any]):
    """A pynetdicom queue (its class swapped on the instance) that calls ``_on_put``."""

    _on_put: Callable[[], None]

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._on_put()


def _notify_on_put(q: queue.Queue[Any], on_put: Callable[[], None]) -> None:
    if type(q) is not queue.Queue:
        raise UnsupportedPynetdicom(f"expected a queue.Queue, found {type(q).__name__}")
    q._on_put = on_put  # type: ignore[attr-defined]  # _NotifyingQueue's, the class it becomes
    q.__class__ = _NotifyingQueue


class _NotifyingEvent(threading.Event):
    """The reactor checkpoint (its class swapped on the instance) calling ``_on_set``."""

    _on_set: Callable[[], None]

    def set(self) -> None:
        super().set()
        self._on_set()


def _notify_on_set(event: threading.Event, on_set: Callable[[], None]) -> None:
    if type(event) is not threading.Event:
        raise UnsupportedPynetdicom(f"expected a threading.Event, found {type(event).__name__}")
    event._on_set = on_set  # type: ignore[attr-defined]  # _NotifyingEvent's, the class it becomes
    event.__class__ = _NotifyingEvent


def _seconds_left(timer: Timer) -> float | None:
    """Seconds until ``timer`` expires, or None when it is not running (PS3.8 9.1.5)."""
    if timer.timeout is None or timer._start_time is None or timer._end_time is not None:
        return None
    return max(0.0, timer.remaining)


# -- the DUL ---------------------------------------------------------------------------


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL whose reactor blocks until its socket, its queues or its timer
    have something for it (PS3.8 9.2: the state machine, unchanged)."""

    _waker: _Waker
    _activity: _Activity
    _exiting: bool

    @property
    def _kill_thread(self) -> bool:
        value = cast(bool, self.__dict__["_kill_thread"])
        if value and not self._exiting and threading.current_thread() is self:
            # the reactor read its kill flag: it leaves its loop and polls no more
            self._exiting = True
            self._waker.close()
            self._activity.notify()
        return value

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self.__dict__["_kill_thread"] = value
        if value:
            self._waker.wake()

    def _is_transport_event(self) -> bool:
        self._wait_for_work()
        return super()._is_transport_event()

    def _send(self, pdu: Any) -> None:
        """pynetdicom's, except that the PDUs a :class:`~compacs.net.pdata.CoalescingDIMSE`
        encoded are written as they are (net/pdata.py)."""
        wire = wire_of(pdu)
        if wire is None:
            super()._send(pdu)
        elif self.socket is not None:
            self.socket.send(wire)
            evt.trigger(self.assoc, evt.EVT_PDU_SENT, {"pdu": pdu})

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            if threading.current_thread() is not self:
                self.join()
            return True
        return False

    def _wait_for_work(self) -> None:
        """Block until the socket is readable, something is queued, the kill flag is set
        or the ARTIM timer is due; at once when there is work already."""
        if self.state_machine.current_state == "Sta13":
            return  # pynetdicom reads what is left, then closes: no waiting
        fd = self._socket_fd()
        waker = self._waker
        waker.waiting = True
        try:
            if (
                self.__dict__["_kill_thread"]
                or self.event_queue.queue
                or self.to_provider_queue.queue
                or self._has_tls_bytes()
            ):
                return
            left = _seconds_left(self.artim_timer)
            poller = select.poll()
            poller.register(waker.read_fd, select.POLLIN)
            if fd is not None:
                poller.register(fd, select.POLLIN)
            with contextlib.suppress(InterruptedError):
                poller.poll(None if left is None else math.ceil(left * 1000))
        finally:
            waker.waiting = False
            waker.drain()

    def _socket_fd(self) -> int | None:
        assoc_socket = self.socket
        if assoc_socket is None or not assoc_socket._is_connected:
            return None
        sock = assoc_socket.socket
        try:
            fd = sock.fileno() if sock is not None else -1
        except OSError:
            return None
        return fd if fd >= 0 else None

    def _has_tls_bytes(self) -> bool:
        """A TLS socket may hold decrypted bytes that ``poll`` cannot see (pynetdicom#528)."""
        sock = getattr(self.socket, "socket", None)
        if isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):
                return bool(sock.pending())
        return False


# -- the association -------------------------------------------------------------------


class EventDrivenAssociation(Association):
    """pynetdicom's Association whose reactor waits on a Condition instead of sleeping."""

    _activity: _Activity
    dul: EventDrivenDUL

    @property
    def _kill(self) -> bool:
        return cast(bool, self.__dict__["_kill"])

    @_kill.setter
    def _kill(self, value: bool) -> None:
        self.__dict__["_kill"] = value
        if value:
            self._activity.notify()

    def _wait_for_activity(self, seen: int) -> int:
        """Block until something happened since ``seen``, a DIMSE message is queued while
        no ``send_*()`` holds the checkpoint, the association is killed, the DUL ended,
        or the network timer is due."""
        activity = self._activity
        dul = self.dul
        with activity.changed:
            while not (
                self._kill
                or activity.count != seen
                or (self.dimse.msg_queue.queue and self._reactor_checkpoint.is_set())
                or dul._exiting
                or not dul.is_alive()
            ):
                left = _seconds_left(dul._idle_timer)
                if left is not None and left <= 0:
                    break
                activity.changed.wait(None if left is None else left + 0.001)
            seen = activity.count
        if dul._exiting:  # it has left its loop: let is_alive() say so
            dul.join(timeout=5)
        return seen

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``Association._run_reactor``, the 1 ms sleep at the top of
        each loop replaced by :meth:`_wait_for_activity` (paused while it waits).

        A ``send_*()`` clears the checkpoint, then waits for ``_is_paused``; here the
        reactor, once it says it is no longer paused, looks at the checkpoint again and
        pauses anew if a ``send_*()`` began meanwhile: of the two, one sees the other, so
        the reactor never takes the response that sender waits for (pynetdicom#875, the
        race ``reactor_guard`` covers in pynetdicom's own loop)."""
        self._is_paused = False
        seen = -1
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            seen = self._wait_for_activity(seen)
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                continue

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                ASSOCIATION_LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                ASSOCIATION_LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                ASSOCIATION_LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return

    def kill(self) -> None:
        """pynetdicom's ``kill()``: the DUL is stopped once it is back in Sta1; here the
        wait for that is on the DUL's state changes, not a 10 ms sleep loop."""
        self._reactor_checkpoint.set()
        self._kill = True
        self.is_established = False
        self._is_paused = True
        dul = self.dul
        activity = self._activity
        while dul.is_alive() and not dul.stop_dul():
            with activity.changed:
                if (
                    dul.state_machine.current_state != "Sta1"
                    and not dul._exiting
                    and dul.is_alive()
                ):
                    activity.changed.wait()
            if dul._exiting and threading.current_thread() is not dul:
                dul.join(timeout=5)


# -- applying it -----------------------------------------------------------------------


def _notify_on_error(method: Callable[[str], None], on_error: Callable[[], None]) -> Any:
    """``do_action``, calling ``on_error()`` before an exception ends the DUL thread
    (pynetdicom's state machine raises InvalidEventError out of its reactor loop)."""

    @functools.wraps(method)
    def do_action(event: str) -> None:
        try:
            method(event)
        except BaseException:
            on_error()
            raise

    return do_action


def _notify_on_sta1(method: Callable[[str], None], activity: _Activity) -> Any:
    """``transition``, notifying ``activity`` on the return to Sta1 (what ``kill()`` waits
    for); other transitions wake no one."""

    @functools.wraps(method)
    def transition(state: str) -> None:
        method(state)
        if state == "Sta1":
            activity.notify()

    return transition


def make_event_driven(assoc: Association) -> Association:
    """Make ``assoc`` (a pynetdicom Association, before or while its threads run) event
    driven; returns it. Raises :class:`UnsupportedPynetdicom` on an unsupported version."""
    require_supported()
    if isinstance(assoc, EventDrivenAssociation):
        return assoc
    dul: Any = assoc.dul  # attributes are attached to pynetdicom's DUL below
    activity = _Activity()
    dul._waker = _Waker()
    dul._activity = activity
    dul._exiting = False
    assoc._activity = activity  # type: ignore[attr-defined]  # ours, on pynetdicom's Association

    def died() -> None:
        dul._exiting = True
        activity.notify()

    machine = dul.state_machine
    machine.do_action = _notify_on_error(machine.do_action, died)
    machine.transition = _notify_on_sta1(machine.transition, activity)
    _notify_on_put(dul.event_queue, dul._waker.wake)
    _notify_on_put(dul.to_provider_queue, dul._waker.wake)
    _notify_on_put(dul.to_user_queue, activity.notify)
    checkpoint = assoc._reactor_checkpoint

    def message_queued() -> None:
        if checkpoint.is_set():  # else the send_*() holding it takes the message
            activity.recheck()

    _notify_on_put(assoc.dimse.msg_queue, message_queued)
    _notify_on_set(checkpoint, activity.recheck)
    dul._run_loop_delay = 0.0  # the loop's sleep is a yield; it blocks in our poll instead
    dul.__class__ = EventDrivenDUL
    assoc.__class__ = EventDrivenAssociation
    assoc.dimse.__class__ = CoalescingDIMSE
    return assoc


def event_driven_on_open(event: Any) -> None:
    """EVT_CONN_OPEN handler: the association made event driven (acceptor: before its
    threads start; requestor: the DUL is connecting, the association negotiating)."""
    make_event_driven(event.assoc)


__all__ = [
    "EventDrivenAssociation",
    "EventDrivenDUL",
    "UnsupportedPynetdicom",
    "event_driven_on_open",
    "make_event_driven",
    "problems",
    "require_supported",
]
