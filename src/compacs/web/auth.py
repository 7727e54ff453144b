"""Who may use the web API and pages: a bearer token and/or HTTP Basic user/password.

Patient data never leaves the loopback interface unauthenticated: binding anywhere else
without credentials is refused (:func:`binding_problem`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from dataclasses import dataclass

REALM = "compacs"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'  # WWW-Authenticate of a 401


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; a host name or 0.0.0.0 is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    user: str | None = None
    password: str | None = None

    @property
    def required(self) -> bool:
        return bool(self.token or (self.user and self.password))

    def admits(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value is good enough.

        ``Bearer TOKEN``; or ``Basic`` with the configured user and password, or with
        any user name and the token as password (what a browser's prompt can send)."""
        if not self.required:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return bool(self.token) and _same(value, self.token or "")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if self.token and _same(password, self.token):
            return True
        return bool(self.user and self.password) and (
            _same(user, self.user or "") & _same(password, self.password or "")
        )


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def binding_problem(host: str, port: int, credentials: Credentials) -> str | None:
    """Why serving on ``host`` must be refused, or None."""
    if port and not is_loopback(host) and not credentials.required:
        return (
            f"[http] host = {host!r} is not a loopback address and neither [http] token nor "
            "user/password is set: refusing to serve patient data unauthenticated "
            '(set a token or user and password, or host = "127.0.0.1")'
        )
    return None
