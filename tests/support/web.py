"""Plain HTTP against a node's web port: what dicomweb-client does not send (literal
``*``, odd Accept headers, no credentials)."""

from __future__ import annotations

import http.client
from email.message import Message


def get(
    port: int, target: str, headers: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, Message, bytes]:
    """One GET on a connection of its own to 127.0.0.1:``port``: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()
