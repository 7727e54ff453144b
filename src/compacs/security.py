"""Who may talk to the node, and how: DICOM TLS, per-AE access control, web credentials.

TLS follows the Basic TLS Secure Transport Connection Profile (PS3.15 B.1): the DICOM
port then speaks TLS only, with the node's certificate, and optionally requires client
certificates signed by a given CA. Access control is an allow-list of calling AE titles,
each optionally bound to a host, with the operations it may use. An AE that is not on
the list (or comes from another host) gets A-ASSOCIATE-RJ "calling AE title not
recognized" (PS3.8 9.3.4); an operation it may not use is refused with 0x0124
"Refused: Not Authorized" (PS3.7 C.5.3), except C-MOVE, whose presentation context is
not accepted for it (pynetdicom answers a C-MOVE only after reaching the destination).

The web port's credentials live here too: a bearer token and/or HTTP Basic user/password.
Patient data never leaves the loopback interface unauthenticated: binding anywhere else
without credentials is refused (:func:`binding_problem`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from functools import lru_cache

OPERATIONS = ("echo", "store", "find", "move", "get", "commit")


@dataclass(frozen=True)
class AccessRule:
    ae_title: str
    host: str | None = None
    """An address, a network (CIDR) or a host name; None: any host."""
    allow: frozenset[str] = frozenset(OPERATIONS)


@lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError:
        return frozenset()


def host_matches(pattern: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return address in _addresses(pattern)  # a host name


@dataclass(frozen=True)
class AccessControl:
    rules: tuple[AccessRule, ...] = ()
    """Empty: every calling AE may do everything (storescp's default)."""

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    def _matching(self, calling: str, address: str) -> list[AccessRule]:
        return [
            r
            for r in self.rules
            if r.ae_title == calling and (r.host is None or host_matches(r.host, address))
        ]

    def admits(self, calling: str, address: str) -> bool:
        return not self.rules or bool(self._matching(calling, address))

    def allowed(self, calling: str, address: str) -> frozenset[str]:
        if not self.rules:
            return frozenset(OPERATIONS)
        return frozenset(op for r in self._matching(calling, address) for op in r.allow)


def server_tls_context(certificate: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """TLS 1.2 or later for the DICOM port; with ``client_ca`` a client must present a
    certificate signed by it (PS3.15 B.1: both sides may be authenticated)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


# -- the web port -------------------------------------------------------------------------
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
