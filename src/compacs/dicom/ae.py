"""Application entities: AE titles (PS3.5 6.2) and the address of a remote AE."""

from __future__ import annotations

import re
from dataclasses import dataclass

AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
"""An AE value (PS3.5 6.2, Table 6.2-1): 1 to 16 characters of the Default Character
Repertoire without control characters or backslash."""


class InvalidPeer(ValueError):
    """A peer address that is not ``AET@HOST:PORT`` with a valid AE title and port."""


def valid_ae_title(value: str) -> bool:
    """Whether ``value`` is an AE title: :data:`AE_TITLE` and not only spaces (leading and
    trailing spaces are not significant, PS3.5 6.2)."""
    return bool(AE_TITLE.fullmatch(value)) and value.strip() != ""


@dataclass(frozen=True)
class Peer:
    """A remote application entity (a C-MOVE destination, a forwarding target)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """Parse ``AET@HOST:PORT`` (an IPv6 host in brackets); :class:`InvalidPeer` naming
        what is wrong."""
        match = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)", text)
        if not match:
            raise InvalidPeer(f"peer {text!r}: expected AET@HOST:PORT")
        aet, host, port = match["aet"], match["host"].strip("[]"), int(match["port"])
        if not valid_ae_title(aet):
            raise InvalidPeer(f"peer {text!r}: {aet!r} is not an AE title (PS3.5 6.2)")
        if not 0 < port < 65536:
            raise InvalidPeer(f"peer {text!r}: port must be 1-65535")
        return cls(aet, host, port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"
