"""``compacs check-config``: would the node start with these settings?"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit

from compacs.commands import options
from compacs.config import Settings

NAME = "check-config"
HELP = "validate the configuration (and TLS files, backend URLs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.common(parser)


def problems(settings: Settings) -> list[str]:
    """What would stop the node: unknown backend schemes, unusable TLS files."""
    from compacs.index import BACKENDS as INDEXES
    from compacs.security import server_tls_context
    from compacs.storage import BACKENDS as STORES

    found = []
    for what, url, known in (
        ("index", settings.resolved_index_url, INDEXES),
        ("storage", settings.resolved_store_url, STORES),
    ):
        if urlsplit(url).scheme not in known:
            found.append(f"[{what}] url {url!r}: unknown scheme (known: {', '.join(known)})")
    if settings.tls_certificate and settings.tls_key:
        try:
            server_tls_context(settings.tls_certificate, settings.tls_key, settings.tls_client_ca)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            found.append(f"[security] TLS certificate, key or CA unusable: {exc}")
    return found


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the node would start with these settings, 2 with the reason."""
    path = args.config
    found = problems(settings)
    for problem in found:
        print(f"compacs: {path or '(defaults)'}: {problem}", file=sys.stderr)
    if found:
        return 2
    print(
        f"{path or '(defaults)'}: OK - AE {settings.ae_title} on {settings.host}:{settings.port}"
        f"{' (TLS)' if settings.tls_certificate else ''}, index {settings.resolved_index_url}, "
        f"store {settings.resolved_store_url}, {len(settings.policy.rules)} compression "
        f"rule(s), {len(settings.routing.routes)} forwarding rule(s), "
        f"{len(settings.access.rules) or 'no'} access rule(s), {len(settings.peers)} peer(s)"
    )
    return 0
