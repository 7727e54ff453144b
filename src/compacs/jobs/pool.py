"""Where a compression job's CPU part runs: in worker processes, or in the calling thread.

Worker processes (issue 15): parsing, frame extraction, compare and encapsulation hold the
GIL, and so do some codecs (pyjpegls, pylibjpeg-openjpeg, RLE); in threads of the node they
take it from the threads that receive. So the CPU part of a job
(:func:`compacs.codecs.work.encode_named`: bytes in, a small picklable
:class:`~compacs.codecs.work.Encoding` out) runs in long-lived worker processes, while the
node's threads claim jobs, read and write the store and switch the index: children need
neither index nor store.

The mechanism is one :class:`multiprocessing.Process` per *lane* with the "forkserver"
start method ("fork" from a multi-threaded process can copy a lock some other thread held,
the index's or the logging module's, into a child where nobody will release it) and a
pipe to it: the node thread that holds the lane sends the job and reads the reply itself,
with no feeder or manager thread in between. The fork server is a fresh interpreter that
imports the codecs layer once (:func:`multiprocessing.set_forkserver_preload`); the workers
fork from it and share those pages, so the children's proportional memory (PSS) stays small.

A job takes a whole lane, so when a process dies (a codec's segfault, kill -9, the OOM
killer) the pipe reads EOF for exactly the one job it was running. That job is recorded
as failed ("worker process died: ..."), the original stays as it was, and the lane starts
a new process for the next job.

The same processes decode for C-MOVE/C-GET when a peer needs another syntax than the
stored one (:meth:`WorkerProcesses.decode`, :func:`compacs.codecs.work.decode_for_peer`),
a lane at a time beside compression jobs, so that retrieve decodes on both cores.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, TypeVarTuple, cast

import pydicom.config

from compacs.codecs.table import Codec, codec_for
from compacs.codecs.work import (
    Decoded,
    Encoding,
    Message,
    Outcome,
    decode_for_peer,
    encode_best,
    encode_named,
    read_file,
    spooled,
    to_peer_syntax,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Args = TypeVarTuple("Args")

PRELOAD = ["__main__", "compacs.jobs.pool"]
"""What the fork server imports once before it forks workers: the codecs layer, and the
main module multiprocessing makes every child import (nothing for ``python -m compacs``;
the ``compacs`` script's guarded imports otherwise), so that children share it."""


class PoolClosed(RuntimeError):
    """The pool was closed (the node stops) while the job ran: the job is not finished,
    its claim is released at the next start."""


class Encoder(Protocol):
    """Runs a job's CPU part (:func:`compacs.codecs.work.encode_best`): ``source`` is the
    Part 10 file's bytes or path; with ``spool_dir`` the encoding comes back as a file
    written there (:attr:`Encoding.path`), else as bytes."""

    remote: bool
    """The job runs in another process: hand it paths rather than bytes."""

    def encode(
        self,
        source: bytes | str,
        codecs: Sequence[Codec],
        options: Mapping[str, Any],
        lossy: bool,
        spool_dir: str | None = None,
    ) -> Encoding: ...

    def decode(self, data: bytes, target: str) -> Decoded:
        """The stored object ``data`` as a data set in ``target`` for a peer
        (:func:`compacs.codecs.work.decode_for_peer`); a failure is in ``Decoded.error``."""
        ...

    def start(self) -> None: ...

    def close(self, timeout: float) -> None: ...


class InProcess:
    """The CPU part in the calling thread: ``[compression] workers = 0`` (no background
    workers; policy ``when = "ingest"`` still compresses in the receiving thread), and
    callers that hand in codecs outside the table (tests)."""

    remote = False

    def encode(
        self,
        source: bytes | str,
        codecs: Sequence[Codec],
        options: Mapping[str, Any],
        lossy: bool,
        spool_dir: str | None = None,
    ) -> Encoding:
        data = source if isinstance(source, bytes) else read_file(source)
        return spooled(encode_best(data, codecs, options, lossy), spool_dir)

    def decode(self, data: bytes, target: str) -> Decoded:
        return to_peer_syntax(data, target)

    def start(self) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


def table_names(codecs: Sequence[Codec]) -> tuple[str, ...]:
    """The codecs' names, which a worker process looks up in its own table; ValueError for
    a codec that is not the table's own row (the worker would encode with another)."""
    for codec in codecs:
        if codec_for(codec.name) is not codec:
            raise ValueError(
                f"codec {codec.name!r} is not the codec table's: a worker process cannot run it"
            )
    return tuple(codec.name for codec in codecs)


_REGISTRIES: dict[str, dict[Any, Any]] = {}
"""Per source file, what :func:`warnings.warn_explicit` remembers of warnings shown
("default" shows each once per place), as a module's ``__warningregistry__`` would."""


def replay(messages: Sequence[Message]) -> None:
    """Emit a worker process's log records and warnings in this process, in their order,
    as if raised here: through the same loggers, handlers and warning filters."""
    for m in messages:
        if m.category is not None:
            registry = _REGISTRIES.setdefault(m.filename, {})
            warnings.warn_explicit(m.text, m.category, m.filename, m.lineno, registry=registry)
            continue
        logger = logging.getLogger(m.logger)
        if logger.isEnabledFor(m.level):
            record = logger.makeRecord(m.logger, m.level, m.filename, m.lineno, m.text, (), None)
            record.exc_text = m.exc_text
            logger.handle(record)


class _Died(Exception):
    """The worker process ended (EOF or an error on its pipe) before it replied."""


class _Raised:
    """An exception a job raised in a worker process, carried back to re-raise."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Lane:
    """One worker process and the pipe to it (see the module docstring). The thread that
    holds the lane sends the job and waits for the reply on the pipe itself: no feeder or
    result-manager thread, no futures, one pickle each way (issue 15: ~0.5 ms of node and
    worker CPU per job went to ProcessPoolExecutor's plumbing)."""

    def __init__(self, context: Any, number: int) -> None:
        self._context = context
        self.number = number
        self._process: Any = None
        self._conn: Any = None
        self.pid: int | None = None
        self.busy = False

    def start(self) -> None:
        """Start the worker process (and learn its pid) unless it runs."""
        if self._process is None:
            ours, theirs = self._context.Pipe()
            process = self._context.Process(
                target=_serve,
                args=(theirs, os.getpid(), pydicom.config.settings.reading_validation_mode),
                name=f"compacs-worker-{self.number}",
                daemon=True,
            )
            process.start()
            theirs.close()  # only the child holds its end: its death reads as EOF here
            self._process, self._conn, self.pid = process, ours, process.pid

    def _call(self, fn: Callable[[*Args], T], *args: *Args) -> T:
        """``fn(*args)`` in the worker process, raising what it raised there; _Died when
        the process ended before it replied."""
        self.start()
        if not self._process.is_alive():  # it died between jobs: no job of its own was lost
            log.warning("compression worker process %s had died while idle: replaced", self.pid)
            self.discard()
            self.start()
        self.busy = True
        try:
            self._conn.send((fn, args))
            reply = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise _Died(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.busy = False
        if isinstance(reply, _Raised):
            raise reply.exc
        return cast(T, reply)  # what fn returned, through the pipe (pickled: Any)

    def run(
        self,
        source: bytes | str,
        names: tuple[str, ...],
        options: dict[str, Any],
        lossy: bool,
        spool_dir: str | None,
    ) -> Encoding:
        level = logging.getLogger().getEffectiveLevel()
        try:
            return self._call(encode_named, source, names, options, lossy, level, spool_dir)
        except _Died as exc:
            pid = self.pid
            self.discard()
            note = (
                f"worker process died: pid {pid} ended abruptly while encoding with "
                f"{', '.join(names)} (a codec crash, a kill or the out-of-memory killer; "
                f"{exc})"
            )
            log.error("compression %s", note)
            return Encoding(Outcome.FAILED, note[:500])

    def decode(self, data: bytes, target: str) -> Decoded:
        """:func:`decode_for_peer` in this lane's process; a process that dies is this
        decode's failure (the lane starts a new one for the next job)."""
        level = logging.getLogger().getEffectiveLevel()
        try:
            return self._call(decode_for_peer, data, target, level)
        except _Died as exc:
            pid = self.pid
            self.discard()
            note = f"worker process died: pid {pid} ended abruptly while decoding ({exc})"
            log.error("decode for a peer: %s", note)
            return Decoded(error=note[:500])

    def discard(self) -> None:
        """Let go of the process (dead, or the pool closes): closing the pipe ends an idle
        worker (it reads EOF); the next job starts a new one."""
        if self._conn is not None:
            self._conn.close()
        if self._process is not None and not self._process.is_alive():
            self._process.join(0)  # reaped: no zombie
        self._process, self._conn = None, None


def _serve(conn: Any, node: int, validation_mode: int) -> None:
    """A worker process: run each job received on ``conn`` and send its result back,
    until the node closes the pipe (EOF) or ends."""
    _worker_start(node, validation_mode)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = fn(*args)
        except Exception as exc:  # the job's failure, the node's to record
            reply = _Raised(exc)
        try:
            conn.send(reply)
        except Exception as exc:  # a result or exception that does not pickle
            conn.send(_Raised(RuntimeError(f"{type(exc).__name__}: {exc}")))


class WorkerProcesses:
    """``count`` long-lived worker processes; :meth:`encode` blocks the calling thread
    (which holds no GIL while it waits) until a process has run the job."""

    remote = True

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("worker processes: count must be >= 1")
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self._lanes = [_Lane(self._context, n) for n in range(count)]
        self._free: queue.SimpleQueue[_Lane] = queue.SimpleQueue()
        for lane in self._lanes:
            self._free.put(lane)
        self._closed = threading.Event()

    def start(self) -> None:
        """Start every worker process now rather than at the first job. A process that
        cannot start is logged, not raised: the node keeps receiving, and each job tries
        again (and fails with the reason, the original kept)."""
        for lane in self._lanes:
            try:
                lane.start()
            except Exception:
                log.exception("compression worker process %d could not start", lane.number)
                lane.discard()

    def pids(self) -> list[int]:
        """The running worker processes (for tests and measurements)."""
        return [lane.pid for lane in self._lanes if lane.pid is not None]

    def encode(
        self,
        source: bytes | str,
        codecs: Sequence[Codec],
        options: Mapping[str, Any],
        lossy: bool,
        spool_dir: str | None = None,
    ) -> Encoding:
        names = table_names(codecs)
        if self._closed.is_set():
            raise PoolClosed("the compression worker processes are closed")
        lane = self._free.get()
        try:
            result = lane.run(source, names, dict(options), lossy, spool_dir)
        finally:
            self._free.put(lane)
        if self._closed.is_set() and result.outcome is Outcome.FAILED:
            raise PoolClosed("the compression worker processes were closed during the job")
        return result

    def decode(self, data: bytes, target: str) -> Decoded:
        """:meth:`Encoder.decode` in the first free worker process (compression jobs and
        decodes for C-MOVE/C-GET share the processes, a lane at a time)."""
        if self._closed.is_set():
            raise PoolClosed("the worker processes are closed")
        lane = self._free.get()
        try:
            result = lane.decode(data, target)
        finally:
            self._free.put(lane)
        replay(result.messages)
        return result

    @property
    def count(self) -> int:
        """How many worker processes (lanes) there are."""
        return len(self._lanes)

    def close(self, timeout: float) -> None:
        """Stop the worker processes: a job still running after ``timeout`` seconds is
        killed (its waiting thread gets :class:`PoolClosed`, the job stays claimed)."""
        self._closed.set()
        pids = self.pids()
        for lane in self._lanes:
            if not lane.busy:  # a busy lane's pipe is its waiting thread's: killed below
                lane.discard()
        deadline = time.monotonic() + timeout
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                log.warning("compression worker process %d still busy at the stop: killed", pid)
                os.kill(pid, signal.SIGKILL)


WORKER_NICENESS = 10
"""How much lower the worker processes run than the node (nice(2)): when receiving and
compressing want the same cores, receiving goes first (a sender waits for each C-STORE
response; a queued job only waits), and the codecs take what receiving leaves."""


def _worker_start(node: int, validation_mode: int) -> None:
    """Initializer of a worker process: yield the CPU to receiving
    (:data:`WORKER_NICENESS`), read data sets as the node does (its pydicom validation
    mode), and end with the node, whatever else holds descriptors of the pipe: a worker
    that waited for a job from a node a kill -9 ended would keep the fork server alive. A
    pidfd of the node becomes readable when the node ends (pidfd_open(2), Linux 5.3),
    which a daemon thread waits for."""
    os.nice(WORKER_NICENESS)
    pydicom.config.settings.reading_validation_mode = validation_mode
    pidfd = os.pidfd_open(node)

    def leave_with_the_node() -> None:
        select.select([pidfd], [], [])
        os._exit(0)

    threading.Thread(target=leave_with_the_node, name="node-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
