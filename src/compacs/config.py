"""Settings: TOML file -> typed, validated values; command-line values override the file.

Every key the file may hold is listed in :data:`SCHEMA`, with its type and a check; an
error names the file, the section and key, and what was expected.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from compacs.codecs.table import codec_for
from compacs.dicom.ae import InvalidPeer, Peer, valid_ae_title
from compacs.index.base import Duplicates
from compacs.routing import Routing, forward_everything, parse_route
from compacs.rules import (
    DEFAULT_POLICY,
    ArchiveTier,
    Policy,
    RuleError,
    When,
    parse_idle,
    parse_rule,
)
from compacs.security import OPERATIONS, AccessControl, AccessRule


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    ae_title: str = "COMPACS"
    host: str = "0.0.0.0"
    port: int = 11112
    log_level: str = "INFO"
    index_url: str | None = None
    store_url: str | None = None
    spool: bool = True
    """A remote store (S3) gets a local spool in the data directory (storage/spool)."""
    spool_hold: float = 30.0
    """Seconds at most an original waiting for its compression stays only in the spool."""
    duplicates: Duplicates = Duplicates.KEEP_FIRST
    max_object_size: int = 2**31
    """Largest data set accepted, in bytes (a deflated one: as inflated)."""
    max_pdu: int = 262144
    max_associations: int = 32
    max_negotiating: int | None = None
    """Connections not yet established, in all (None: max_associations, at least 4)."""
    max_negotiating_per_host: int | None = None
    """Connections not yet established from one host (None: max_associations / 2, >= 4)."""
    acse_timeout: float = 30.0
    dimse_timeout: float = 120.0
    network_timeout: float = 300.0
    drain_timeout: float = 30.0
    peers: tuple[Peer, ...] = field(default_factory=tuple)
    policy: Policy = DEFAULT_POLICY
    pn_case_insensitive: bool = True
    move_allow: dict[str, tuple[str, ...]] | None = None
    """calling AE (or "*") -> destinations it may move to (or "*"); None: any to any."""
    routing: Routing = field(default_factory=Routing)
    tls_certificate: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    log_phi: bool = False
    """Let patient names and IDs into the logs (pynetdicom's data set dumps at DEBUG)."""
    access: AccessControl = field(default_factory=AccessControl)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    """Prometheus /metrics port; 0: off."""
    log_format: str = "text"
    http_host: str = "127.0.0.1"
    http_port: int = 8042
    """Web API and pages; 0: off."""
    http_token: str | None = None
    http_user: str | None = None
    http_password: str | None = None
    http_allowed_hosts: tuple[str, ...] = ()
    """Host header values answered besides the loopback names and [http] host (DNS rebinding)."""
    http_cors_origins: tuple[str, ...] = ()
    """Origins allowed cross-origin reads (CORS); none: no Access-Control-* headers."""
    http_max_body: int = 1 << 20
    """Largest request body in bytes (413 beyond); STOW-RS's have http_max_stow_body."""
    http_max_stow_body: int = 1 << 30
    """Largest STOW-RS request body in bytes (413 beyond; PS3.18 10.5)."""
    http_body_timeout: float = 30.0
    """Seconds a request body (STOW-RS) may go without a byte before the request is ended."""
    http_header_timeout: float = 10.0
    """Seconds a client has to send a complete request line and headers."""
    http_max_connections: int = 1000
    """Open HTTP connections at most; requests beyond get 503."""
    http_send_timeout: float = 60.0
    """Seconds a response may wait for a client that reads nothing before the connection
    is aborted (compacs.web.protocol)."""
    http_worker_threads: int = 8
    """Threads that run web handlers (reads, conversions) at most at a time."""
    viewer_port: int = 8043
    """The OHIF viewer's own port (on [http] host, beside the web server); 0: off."""
    viewer_dir: str | None = None
    """The OHIF build served; None: the one ``make ohif`` fetched (compacs.web.viewer)."""

    def move_allowed(self, calling: str, destination: str) -> bool:
        if self.move_allow is None:
            return True
        allowed = set(self.move_allow.get(calling, ())) | set(self.move_allow.get("*", ()))
        return "*" in allowed or destination in allowed

    @property
    def resolved_index_url(self) -> str:
        return self.index_url or f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or (self.data_dir / "store").resolve().as_uri()

    @property
    def spool_dir(self) -> Path | None:
        """Where a remote store's objects wait for their upload (None: no spool)."""
        return (self.data_dir / "spool").resolve() if self.spool else None


# section -> key -> (Settings field, expected type(s), check, what is expected)
Check = Callable[[Any], bool]
_ANY: Check = lambda v: True  # noqa: E731


def _readable(path: str) -> bool:
    return Path(path).is_file()


SCHEMA: dict[str, dict[str, tuple[str, tuple[type, ...], Check, str]]] = {
    "node": {
        "ae_title": ("ae_title", (str,), valid_ae_title, "an AE title of 1-16 characters"),
        "host": ("host", (str,), lambda v: bool(v), "an address to listen on"),
        "port": ("port", (int,), lambda v: 0 < v < 65536, "a TCP port 1-65535"),
        "data_dir": ("data_dir", (str,), lambda v: bool(v), "a directory path"),
        "log_level": (
            "log_level",
            (str,),
            lambda v: v.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"},
            "one of DEBUG, INFO, WARNING, ERROR",
        ),
        "log_format": ("log_format", (str,), lambda v: v in ("text", "json"), "'text' or 'json'"),
    },
    "network": {
        "max_pdu": (
            "max_pdu",
            (int,),
            lambda v: v == 0 or 4096 <= v <= 2**32 - 1,
            "0 (unlimited) or 4096..4294967295 bytes",
        ),
        "max_associations": ("max_associations", (int,), lambda v: 1 <= v <= 1000, "1..1000"),
        "max_negotiating": ("max_negotiating", (int,), lambda v: 1 <= v <= 1000, "1..1000"),
        "max_negotiating_per_host": (
            "max_negotiating_per_host",
            (int,),
            lambda v: 1 <= v <= 1000,
            "1..1000",
        ),
        "acse_timeout": ("acse_timeout", (int, float), lambda v: v > 0, "seconds > 0"),
        "dimse_timeout": ("dimse_timeout", (int, float), lambda v: v > 0, "seconds > 0"),
        "network_timeout": ("network_timeout", (int, float), lambda v: v > 0, "seconds > 0"),
        "drain_timeout": ("drain_timeout", (int, float), lambda v: v >= 0, "seconds >= 0"),
    },
    "security": {
        "tls_certificate": ("tls_certificate", (str,), _readable, "a readable PEM file"),
        "tls_key": ("tls_key", (str,), _readable, "a readable PEM file"),
        "tls_client_ca": ("tls_client_ca", (str,), _readable, "a readable PEM file"),
        "log_phi": ("log_phi", (bool,), _ANY, "true or false"),
    },
    "metrics": {
        "host": ("metrics_host", (str,), lambda v: bool(v), "an address to listen on"),
        "port": ("metrics_port", (int,), lambda v: 0 <= v < 65536, "0 (off) or a TCP port"),
    },
    "http": {
        "host": ("http_host", (str,), lambda v: bool(v), "an address to listen on"),
        "port": ("http_port", (int,), lambda v: 0 <= v < 65536, "0 (off) or a TCP port"),
        "token": ("http_token", (str,), lambda v: len(v) >= 16, "a secret of 16+ characters"),
        "user": ("http_user", (str,), lambda v: bool(v) and ":" not in v, "a name without ':'"),
        "password": ("http_password", (str,), lambda v: len(v) >= 8, "8+ characters"),
        "allowed_hosts": (
            "http_allowed_hosts",
            (list,),
            lambda v: all(isinstance(h, str) and _host_pattern(h) for h in v),
            'a list of host names ("pacs.example.org", "*.example.org"), without ports',
        ),
        "cors_origins": (
            "http_cors_origins",
            (list,),
            lambda v: all(isinstance(o, str) and _origin(o) for o in v),
            'a list of origins ("https://viewer.example.org")',
        ),
        "max_body": ("http_max_body", (int,), lambda v: 0 <= v <= 2**40, "bytes, 0..2**40"),
        "max_stow_body": (
            "http_max_stow_body",
            (int,),
            lambda v: 0 <= v <= 2**40,
            "bytes, 0..2**40",
        ),
        "body_timeout": (
            "http_body_timeout",
            (int, float),
            lambda v: 0 < v <= 3600,
            "seconds, > 0 and <= 3600",
        ),
        "header_timeout": (
            "http_header_timeout",
            (int, float),
            lambda v: 0 < v <= 3600,
            "seconds, > 0 and <= 3600",
        ),
        "max_connections": ("http_max_connections", (int,), lambda v: 1 <= v <= 10000, "1..10000"),
        "send_timeout": (
            "http_send_timeout",
            (int, float),
            lambda v: 0 < v <= 3600,
            "seconds, > 0 and <= 3600",
        ),
        "worker_threads": ("http_worker_threads", (int,), lambda v: 1 <= v <= 256, "1..256"),
    },
    "viewer": {
        "port": ("viewer_port", (int,), lambda v: 0 <= v < 65536, "0 (off) or a TCP port"),
        "dir": ("viewer_dir", (str,), lambda v: bool(v), "the folder of an OHIF build"),
    },
    "index": {"url": ("index_url", (str,), lambda v: ":" in v, "an index URL (sqlite:///...)")},
    "storage": {
        "url": ("store_url", (str,), lambda v: ":" in v, "a storage URL (file:///...)"),
        "spool": ("spool", (bool,), _ANY, "true or false"),
        "spool_hold_seconds": (
            "spool_hold",
            (int, float),
            lambda v: 0 <= v <= 86400,
            "seconds, 0..86400",
        ),
    },
    "query": {
        "pn_case_insensitive": ("pn_case_insensitive", (bool,), _ANY, "true or false"),
        "move_allow": (
            "move_allow",
            (dict,),
            lambda v: all(
                isinstance(d, list) and all(isinstance(x, str) for x in d) for d in v.values()
            ),
            'a table of calling AE (or "*") = [destination AEs (or "*")]',
        ),
    },
    "ingest": {
        "duplicates": (
            "duplicates",
            (str,),
            lambda v: v in {d.value for d in Duplicates},
            "'keep-first' or 'replace'",
        ),
        "max_object_size": (
            "max_object_size",
            (int,),
            lambda v: 2**16 <= v <= 2**40,
            "bytes, 65536..1099511627776",
        ),
    },
}


def _host_pattern(value: str) -> bool:
    """A host name, address or ``*.domain`` (Starlette's TrustedHostMiddleware patterns)."""
    return bool(re.fullmatch(r"(\*\.)?[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]", value))


def _origin(value: str) -> bool:
    """``scheme://host[:port]`` with no path (RFC 6454 origin serialisation)."""
    return bool(re.fullmatch(r"https?://[^/\s]+", value))


def _convert(name: str, value: Any) -> Any:
    if name == "data_dir":
        return Path(value)
    if name == "duplicates":
        return Duplicates(value)
    if name == "log_level":
        return value.upper()
    if name in ("http_allowed_hosts", "http_cors_origins"):
        return tuple(value)
    if name == "move_allow":
        return {calling: tuple(dests) for calling, dests in value.items()}
    return value


def load(path: Path | None) -> Settings:
    """Settings from the TOML file at ``path`` (defaults when None)."""
    if path is None:
        return Settings()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_document(doc, str(path))


def from_document(doc: dict[str, Any], source: str = "<config>") -> Settings:
    values: dict[str, Any] = {}
    for section, body in doc.items():
        if section == "peers":
            values["peers"] = tuple(_peers(body, source))
            continue
        if section == "compression":
            values["policy"] = _policy(body, source)
            continue
        if section == "forwarding":
            continue  # its rules name peers: read once every section is known
        if section == "access":
            values["access"] = AccessControl(tuple(_access(body, source)))
            continue
        keys = SCHEMA.get(section)
        if keys is None:
            raise ConfigError(
                f"{source}: unknown section [{section}] "
                f"(known: {', '.join([*SCHEMA, 'compression', 'forwarding', 'access', 'peers'])})"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in body.items():
            if key not in keys:
                raise ConfigError(
                    f"{source}: [{section}] unknown key {key!r} (known: {', '.join(keys)})"
                )
            name, types, check, expected = keys[key]
            ok_type = isinstance(value, types) and (bool in types or not isinstance(value, bool))
            if not ok_type or not check(value):
                raise ConfigError(f"{source}: [{section}] {key} = {value!r}: expected {expected}")
            values[name] = _convert(name, value)
    if "forwarding" in doc:
        values["routing"] = _routing(doc["forwarding"], source, values.get("peers", ()))
    if bool(values.get("tls_certificate")) != bool(values.get("tls_key")):
        raise ConfigError(f"{source}: [security] tls_certificate and tls_key go together")
    if values.get("tls_client_ca") and not values.get("tls_certificate"):
        raise ConfigError(f"{source}: [security] tls_client_ca needs tls_certificate and tls_key")
    _check_http(values, source)
    return Settings(**values)


def _check_http(values: dict[str, Any], source: str) -> None:
    """[http] user and password go together; no unauthenticated non-loopback binding."""
    from compacs.security import Credentials, binding_problem

    if bool(values.get("http_user")) != bool(values.get("http_password")):
        raise ConfigError(f"{source}: [http] user and password go together")
    defaults = Settings()
    problem = binding_problem(
        values.get("http_host", defaults.http_host),
        values.get("http_port", defaults.http_port),
        Credentials(values.get("http_token"), values.get("http_user"), values.get("http_password")),
    )
    if problem:
        raise ConfigError(f"{source}: {problem}")


def _access(body: Any, source: str) -> list[AccessRule]:
    if not isinstance(body, list):
        raise ConfigError(f"{source}: access must be an array of tables ([[access]])")
    rules = []
    for n, item in enumerate(body, 1):
        where = f"{source}: [[access]] #{n}"
        if not isinstance(item, dict) or "ae_title" not in item:
            raise ConfigError(f"{where}: ae_title is required")
        unknown = set(item) - {"ae_title", "host", "allow"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {sorted(unknown)[0]!r} (known: ae_title, host, allow)"
            )
        if not isinstance(item["ae_title"], str) or not valid_ae_title(item["ae_title"]):
            raise ConfigError(f"{where}: ae_title must be an AE title of 1-16 characters")
        host = item.get("host")
        if host is not None and (not isinstance(host, str) or not host):
            raise ConfigError(f"{where}: host must be an address, a network or a host name")
        allow = item.get("allow", list(OPERATIONS))
        if not isinstance(allow, list) or not set(allow) <= set(OPERATIONS):
            raise ConfigError(f"{where}: allow must list some of {', '.join(OPERATIONS)}")
        rules.append(AccessRule(item["ae_title"], host, frozenset(allow)))
    return rules


_ROUTING_KEYS: dict[str, tuple[tuple[type, ...], Check, str]] = {
    "associations": ((int,), lambda v: 1 <= v <= 16, "1..16 associations per destination"),
    "batch": ((int,), lambda v: 1 <= v <= 10000, "1..10000 instances per association"),
    "max_attempts": ((int,), lambda v: 1 <= v <= 1000, "1..1000 attempts"),
    "retry_delay": ((int, float), lambda v: v > 0, "seconds > 0"),
    "retry_max_delay": ((int, float), lambda v: v > 0, "seconds > 0"),
    "commit_timeout": ((int, float), lambda v: v > 0, "seconds > 0"),
}


def resolver(peers: tuple[Peer, ...] | list[Peer]) -> Callable[[str], str]:
    """Destination name -> ``AET@HOST:PORT``: a known peer's AE title, or an address."""
    by_aet = {p.ae_title: p for p in peers}

    def resolve(name: str) -> str:
        if name in by_aet:
            return str(by_aet[name])
        if "@" not in name:
            raise RuleError(f"destination {name!r} is not a peer; use AET@HOST:PORT or [[peers]]")
        try:
            return str(Peer.parse(name))
        except InvalidPeer as exc:
            raise RuleError(str(exc)) from None

    return resolve


def _routing(body: Any, source: str, peers: tuple[Peer, ...]) -> Routing:
    resolve = resolver(peers)
    values = _section_with_rules(
        body,
        source,
        "forwarding",
        _ROUTING_KEYS,
        lambda rule, where: parse_route(rule, where, resolve),
    )
    if "rules" in values:
        values["routes"] = values.pop("rules")
    return Routing(**values)


def _peers(body: Any, source: str) -> list[Peer]:
    if not isinstance(body, list):
        raise ConfigError(f"{source}: peers must be an array of tables ([[peers]])")
    peers = []
    for n, item in enumerate(body):
        where = f"{source}: [[peers]] #{n + 1}"
        if not isinstance(item, dict) or set(item) != {"ae_title", "host", "port"}:
            raise ConfigError(f"{where}: expected exactly the keys ae_title, host, port")
        try:
            peers.append(Peer.parse(f"{item['ae_title']}@{item['host']}:{item['port']}"))
        except InvalidPeer as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return peers


_POLICY_KEYS: dict[str, tuple[tuple[type, ...], Check, str]] = {
    "when": ((str,), lambda v: v in set(When), " or ".join(f"'{w}'" for w in When)),
    "delay": ((int, float), lambda v: v >= 0, "seconds >= 0"),
    "workers": ((int,), lambda v: 0 <= v <= 64, "0..64 compression threads"),
    "require_smaller": ((bool,), _ANY, "true or false"),
    "recompress_lossy": ((bool,), _ANY, "true or false"),
    "recompress_jpeg": ((bool,), _ANY, "true or false"),
}


def _policy(body: Any, source: str) -> Policy:
    archive = None
    if isinstance(body, dict) and "archive" in body:
        body = dict(body)
        archive = _archive(body.pop("archive"), source)
    values = _section_with_rules(body, source, "compression", _POLICY_KEYS, parse_rule)
    if "when" in values:
        values["when"] = When(values["when"])
    if archive is not None:
        values["archive"] = archive
    return replace(DEFAULT_POLICY, **values)


_ARCHIVE_KEYS: dict[str, tuple[tuple[type, ...], Check, str]] = {
    "after_days": ((int,), lambda v: v >= 0, "days >= 0 since the instance was stored"),
    "idle": ((str,), lambda v: _parses(parse_idle, v), "'HH:MM-HH:MM' (local time)"),
    "candidates": (
        (list,),
        lambda v: bool(v) and all(isinstance(n, str) and _lossless_codec(n) for n in v),
        "a non-empty list of lossless codec names (e.g. jpeg-ls, jpeg-xl, jpeg-2000)",
    ),
    "effort": ((int,), lambda v: 1 <= v <= 9, "JPEG XL effort 1..9"),
}


def _parses(parse: Callable[[str], Any], value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _lossless_codec(name: str) -> bool:
    try:
        return codec_for(name).lossless
    except KeyError:
        return False


def _archive(body: Any, source: str) -> ArchiveTier:
    """``[compression.archive]`` (issue 16); errors name the key, as ``_policy``'s do."""
    if not isinstance(body, dict):
        raise ConfigError(f"{source}: [compression.archive] must be a table")
    tier = ArchiveTier()
    for key, value in body.items():
        if key not in _ARCHIVE_KEYS:
            raise ConfigError(
                f"{source}: [compression.archive] unknown key {key!r} "
                f"(known: {', '.join(_ARCHIVE_KEYS)})"
            )
        types, check, expected = _ARCHIVE_KEYS[key]
        if not isinstance(value, types) or isinstance(value, bool) or not check(value):
            raise ConfigError(
                f"{source}: [compression.archive] {key} = {value!r}: expected {expected}"
            )
        if key == "idle":
            value = parse_idle(str(value))
        elif key == "candidates":
            value = tuple(codec_for(n) for n in cast(list[str], value))
        tier = replace(tier, **{key: value})
    return tier


def _section_with_rules(
    body: Any,
    source: str,
    section: str,
    keys: dict[str, tuple[tuple[type, ...], Check, str]],
    parse: Callable[[dict[str, Any], str], Any],
) -> dict[str, Any]:
    """The checked keys of a section that also holds ``[[section.rules]]`` tables (each
    parsed by ``parse(table, where)``, as ``values["rules"]``)."""
    if not isinstance(body, dict):
        raise ConfigError(f"{source}: [{section}] must be a table")
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key == "rules":
            if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
                raise ConfigError(f"{source}: {section}.rules must be [[{section}.rules]] tables")
            try:
                values["rules"] = tuple(
                    parse(r, f"{source}: [[{section}.rules]] #{n}") for n, r in enumerate(value, 1)
                )
            except RuleError as exc:
                raise ConfigError(str(exc)) from None
            continue
        if key not in keys:
            raise ConfigError(
                f"{source}: [{section}] unknown key {key!r} (known: {', '.join([*keys, 'rules'])})"
            )
        types, check, expected = keys[key]
        if (
            not isinstance(value, types)
            or (isinstance(value, bool) and bool not in types)
            or not check(value)
        ):
            raise ConfigError(f"{source}: [{section}] {key} = {value!r}: expected {expected}")
        values[key] = value
    return values


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """Apply command-line values (None means 'not given'); peers given add to or replace
    the file's peers of the same AE title."""
    changes = {
        k: v for k, v in overrides.items() if v is not None and k not in ("peers", "forward")
    }
    if "ae_title" in changes and not valid_ae_title(changes["ae_title"]):
        raise ConfigError(f"--aet {changes['ae_title']!r}: expected an AE title of 1-16 characters")
    if "port" in changes and not 0 <= changes["port"] < 65536:
        raise ConfigError(f"--port {changes['port']}: expected a TCP port")
    if "http_port" in changes and not 0 <= changes["http_port"] < 65536:
        raise ConfigError(f"--http-port {changes['http_port']}: expected 0 (off) or a TCP port")
    if "viewer_port" in changes and not 0 <= changes["viewer_port"] < 65536:
        raise ConfigError(f"--viewer-port {changes['viewer_port']}: expected 0 (off) or a TCP port")
    peers = overrides.get("peers")
    if peers:
        by_aet = {p.ae_title: p for p in settings.peers}
        by_aet.update({p.ae_title: p for p in peers})
        changes["peers"] = tuple(by_aet.values())
    forward = overrides.get("forward")
    if forward:  # everything received goes there too, with the default syntaxes
        route = forward_everything([str(p) for p in forward])
        routing = settings.routing
        changes["routing"] = replace(routing, routes=(*routing.routes, route))
        by_aet = {p.ae_title: p for p in changes.get("peers", settings.peers)}
        by_aet.update({p.ae_title: p for p in forward})  # C-MOVE may use them too
        changes["peers"] = tuple(by_aet.values())
    return replace(settings, **changes)
