"""How the web port asks for credentials (the credentials themselves:
:class:`compacs.security.Credentials`)."""

from __future__ import annotations

REALM = "compacs"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'  # WWW-Authenticate of a 401
