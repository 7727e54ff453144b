"""A TCP relay on 127.0.0.1 that counts what one side sends: bytes on the wire."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.node import free_port


def _shut(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


class CountingProxy:
    """A TCP relay counting the bytes the node sends to the destination."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.sent = 0
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    self.sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src, dst)

    def close(self) -> None:
        self._listener.close()


class HttpRequestCounter(CountingProxy):
    """A relay in front of an HTTP/1.1 server (the S3 endpoint) that counts the requests
    the client sends, by method: each request's head is parsed and its body (by
    Content-Length) skipped, so object bytes are never mistaken for a request line."""

    def __init__(self, target_port: int) -> None:
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        super().__init__(target_port)

    def reset(self) -> None:
        with self._lock:
            self.requests = {}

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        if not count:
            return super()._pipe(src, dst, count)
        buffer, body_left = b"", 0
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                buffer += data
                while True:
                    if body_left:
                        skipped = min(body_left, len(buffer))
                        buffer, body_left = buffer[skipped:], body_left - skipped
                        if body_left:
                            break
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, buffer = buffer[:end].decode("latin-1"), buffer[end + 4 :]
                    method = head.split(" ", 1)[0]
                    with self._lock:
                        self.requests[method] = self.requests.get(method, 0) + 1
                    for line in head.split("\r\n")[1:]:
                        name, _, value = line.partition(":")
                        if name.strip().lower() == "content-length":
                            body_left = int(value)
        except OSError:
            pass
        finally:
            _shut(src, dst)
