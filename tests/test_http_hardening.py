"""The HTTP port under attack (issue 14): smuggling, sizes, slowloris, Host, CORS, bad input.

Real ``compacs serve`` processes on 127.0.0.1, raw sockets for the protocol attacks (a client
library would refuse to send them), every loop bounded. The study page's links are followed
as a browser would, and the instances they reach are compared with the UIDs sent (pydicom).
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compacs.synthetic import ct_series
from compacs.web.queries import search_keys
from tests.support.node import NodeProcess, free_port, write_config
from tests.support.scu import send_datasets

TOKEN = "hardening-token-0123456789"
SERIES_SIZE = 50
HEADER_TIMEOUT = 10  # [http] header_timeout's default
HALF_OPEN = 300


# -- raw HTTP ---------------------------------------------------------------------------------
def exchange(port: int, data: bytes, wait: float = 3.0) -> bytes:
    """Send ``data`` on one connection; everything answered until the server closes it or is
    silent for ``wait`` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return received


def statuses(answer: bytes) -> list[int]:
    """The status codes of the HTTP/1.1 responses in ``answer``."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


def request(port: int, target: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(port: int, target: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    """One GET (``Connection: close``): status, headers (lower-case names), body."""
    answer = exchange(port, request(port, target, "Connection: close", *headers), wait=30)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    return int(lines[0].split()[1]), {k.lower(): v.strip() for k, v in fields.items()}, body


def node_threads(node: NodeProcess) -> int:
    status = Path(f"/proc/{node.proc.pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))


# -- nodes ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """A node with the default [http] settings (loopback, no credentials), holding one CT
    series of SERIES_SIZE instances; yields (node, http port, the SOP Instance UIDs sent)."""
    tmp = tmp_path_factory.mktemp("hardening")
    port = free_port()
    node = NodeProcess(tmp / "data", extra_args=("--http-port", str(port)))
    node.start()
    try:
        series = list(ct_series(SERIES_SIZE, 16, 16, seed=1414, patient_id="HARD-1"))
        assert set(send_datasets(node.port, series)) == {0}
        yield node, port, [ds.SOPInstanceUID for ds in series]
    finally:
        node.stop()


@pytest.fixture
def authenticated(tmp_path):
    port = free_port()
    config = write_config(tmp_path / "auth.toml", f'[http]\ntoken = "{TOKEN}"\n')
    node = NodeProcess(tmp_path / "data", config=config, extra_args=("--http-port", str(port)))
    node.start()
    yield port
    node.stop()


# -- request smuggling ------------------------------------------------------------------------
SMUGGLED = b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n"


def test_a_post_body_is_never_read_as_a_second_request(web):
    _, port, _ = web
    hidden = SMUGGLED % b""
    answer = exchange(port, request(port, "/api/stats", method="POST", body=hidden))
    print(f"\nPOST carrying a GET: statuses {statuses(answer)}")
    assert statuses(answer) == [405]
    assert b'"instances"' not in answer  # the stats document was not sent


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_unauthenticated_request_cannot_carry_an_authenticated_get(authenticated, method):
    port = authenticated
    hidden = SMUGGLED % f"Authorization: Bearer {TOKEN}\r\n".encode()
    answer = exchange(port, request(port, "/api/stats", method=method, body=hidden))
    print(f"\nunauthenticated {method} carrying an authenticated GET: {statuses(answer)}")
    assert statuses(answer) == [401 if method == "GET" else 405]
    assert b'"instances"' not in answer


@pytest.mark.parametrize(
    "lengths",
    [("Content-Length: 5", "Content-Length: 6"), ("Content-Length: 5, 6",)],
    ids=["duplicate", "conflicting-list"],
)
def test_duplicate_or_conflicting_content_length_is_400(web, lengths):
    _, port, _ = web
    head = "\r\n".join(["POST /api/stats HTTP/1.1", f"Host: 127.0.0.1:{port}", *lengths])
    smuggle = (head + "\r\n\r\nabcde" + "GET /api/stats HTTP/1.1\r\n\r\n").encode()
    answer = exchange(port, smuggle)
    assert statuses(answer) == [400], answer[:200]


# -- sizes ------------------------------------------------------------------------------------
def test_a_declared_body_over_max_body_is_413_naming_the_limit(web):
    _, port, _ = web
    head = request(port, "/api/stats", method="POST").replace(
        b"Content-Length: 0", f"Content-Length: {2 << 20}".encode()
    )
    answer = exchange(port, head + b"x" * 1000)
    assert statuses(answer) == [413]
    assert b"1048576" in answer and b"max_body" in answer


def test_a_streamed_body_is_counted_and_never_read_past_the_limit():
    """A chunked body (no declared length) read by a route stops at the limit: 413 before
    the rest is received."""
    import asyncio

    from compacs.web.asgi import BodyLimit, BodyTooLarge

    consumed: list[int] = []

    async def reader(scope, receive, send):
        while True:
            message = await receive()
            if not message.get("more_body"):
                break

    async def receive():
        consumed.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}  # endless

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"host", b"x")]}
    with pytest.raises(BodyTooLarge) as raised:
        asyncio.run(BodyLimit(reader, max_body=10_000)(scope, receive, lambda m: None))
    assert raised.value.status_code == 413
    assert len(consumed) == 11  # 11,000 bytes: the first chunk past 10,000, and no more


def test_every_accepted_connection_has_tcp_nodelay():
    """Nagle's algorithm must not hold an answer's body behind its head until the client's
    delayed ACK (~40 ms an answer: every QIDO-RS search, every frame a viewer fetches).
    asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, which those
    accepted from ``socket.create_server`` are not; compacs's protocol sets it."""
    from compacs.security import Credentials
    from compacs.web.server import WebServer

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    server = WebServer(app, "127.0.0.1", 0, Credentials())
    server.start()
    try:
        port = server.address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert client.recv(1024).startswith(b"HTTP/1.1 200")
            connections = list(server.server.server_state.connections)
            assert len(connections) == 1
            sock = connections[0].transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        server.stop()


def test_a_request_head_over_16_kib_is_refused(web):
    _, port, _ = web
    answer = exchange(port, request(port, "/api/stats", "X-Filler: " + "a" * 20_000))
    assert statuses(answer) and statuses(answer)[0] in (400, 431), answer[:200]


# -- slowloris --------------------------------------------------------------------------------
def test_half_sent_requests_hold_no_threads_and_are_closed_after_the_header_timeout(web):
    node, port, _ = web
    before = node_threads(node)
    stalled = []
    try:
        for n in range(HALF_OPEN):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            half = f"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow-{n}: "
            sock.sendall(half.encode() if n % 2 else b"GET /api/stu")  # in headers / line
            stalled.append(sock)
        # a keep-alive connection that completes one request, then sends one byte and stops
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.sendall(request(port, "/api/stats"))
        first = idle.recv(65536)
        assert statuses(first) == [200]
        idle.sendall(b"G")
        stalled.append(idle)
        stalled_at = time.monotonic()
        time.sleep(0.5)  # let the server take them all in
        during = node_threads(node)
        started = time.monotonic()
        status, _, _ = get(port, "/api/stats")
        answered = time.monotonic() - started
        closed = _wait_until_closed(stalled, HEADER_TIMEOUT + 10)
        print(
            f"\nnode threads before {before}, with {HALF_OPEN} half-open connections {during}; "
            f"a normal GET answered {status} in {answered:.3f} s; closed by the server "
            f"{closed}/{len(stalled)} within {time.monotonic() - stalled_at:.1f} s"
        )
        assert status == 200
        assert during < before + 20, (before, during)
        assert closed == len(stalled)
    finally:
        for sock in stalled:
            sock.close()


def _wait_until_closed(sockets: list[socket.socket], seconds: float) -> int:
    """How many of ``sockets`` the server closed (EOF or reset) within ``seconds``."""
    import selectors

    selector = selectors.DefaultSelector()
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ)
    closed, deadline = 0, time.monotonic() + seconds
    while closed < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=max(deadline - time.monotonic(), 0.01)):
            try:
                data = key.fileobj.recv(65536)
            except (ConnectionResetError, TimeoutError):
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                closed += 1
    selector.close()
    return closed


# -- Host and CORS ----------------------------------------------------------------------------
def test_a_foreign_host_header_is_refused_so_dns_rebinding_reads_nothing(web):
    _, port, _ = web
    answer = exchange(
        port, b"GET /api/studies HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    )
    print(f"\nHost: evil.example -> {statuses(answer)}")
    assert statuses(answer) == [400]
    assert b"HARD-1" not in answer
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost", f"[::1]:{port}"):
        answer = exchange(
            port, f"GET /api/studies HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        assert statuses(answer) == [200], host


def test_cors_is_off_by_default(web):
    _, port, _ = web
    status, headers, _ = get(port, "/api/studies", "Origin: https://evil.example")
    assert status == 200 and "access-control-allow-origin" not in headers
    preflight = exchange(
        port,
        request(
            port,
            "/api/studies",
            "Origin: https://evil.example",
            "Access-Control-Request-Method: GET",
            "Connection: close",
            method="OPTIONS",
        ),
    )
    assert b"access-control-allow-origin" not in preflight.lower()


def test_allowed_hosts_and_cors_origins_are_configurable(tmp_path):
    port = free_port()
    config = write_config(
        tmp_path / "cors.toml",
        '[http]\nallowed_hosts = ["pacs.example.org"]\n'
        'cors_origins = ["https://viewer.example.org"]\n',
    )
    node = NodeProcess(tmp_path / "data", config=config, extra_args=("--http-port", str(port)))
    node.start()
    try:
        answer = exchange(
            port, b"GET /api/stats HTTP/1.1\r\nHost: pacs.example.org\r\nConnection: close\r\n\r\n"
        )
        assert statuses(answer) == [200]
        answer = exchange(
            port, b"GET /api/stats HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        )
        assert statuses(answer) == [400]
        _, headers, _ = get(port, "/api/stats", "Origin: https://viewer.example.org")
        assert headers.get("access-control-allow-origin") == "https://viewer.example.org"
        _, headers, _ = get(port, "/api/stats", "Origin: https://evil.example")
        assert "access-control-allow-origin" not in headers
    finally:
        node.stop()


def test_cors_preflight_of_a_stow_needs_no_credentials_and_the_request_still_does(tmp_path):
    """Issue 17: with CORS origins configured, a browser's preflight (OPTIONS, no credentials:
    Fetch never sends them on a preflight) of a STOW-RS POST is answered with the methods
    and headers allowed; the POST itself still needs the token (401 without it)."""
    port = free_port()
    config = write_config(
        tmp_path / "cors.toml",
        '[http]\ntoken = "a-long-enough-test-token"\n'
        'cors_origins = ["https://viewer.example.org"]\n',
    )
    node = NodeProcess(tmp_path / "data", config=config, extra_args=("--http-port", str(port)))
    node.start()
    try:
        preflight = exchange(
            port,
            request(
                port,
                "/dicom-web/studies",
                "Origin: https://viewer.example.org",
                "Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: authorization, content-type",
                "Connection: close",
                method="OPTIONS",
            ),
        )
        head = preflight.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        assert statuses(preflight) == [200], head
        assert "access-control-allow-origin: https://viewer.example.org" in head
        methods = re.search(r"access-control-allow-methods: ([^\r\n]*)", head)
        assert methods and "post" in methods.group(1), head
        allowed = re.search(r"access-control-allow-headers: ([^\r\n]*)", head)
        assert allowed and {"authorization", "content-type"} <= {
            h.strip() for h in allowed.group(1).split(",")
        }, head
        answer = exchange(
            port,
            request(
                port,
                "/dicom-web/studies",
                "Origin: https://viewer.example.org",
                'Content-Type: multipart/related; type="application/dicom"; boundary=b',
                "Connection: close",
                method="POST",
                body=b"--b--\r\n",
            ),
        )
        assert statuses(answer) == [401]
    finally:
        node.stop()


# -- no 500 on any input ------------------------------------------------------------------------
BAD_INPUT = [
    "/api/studies?offset=9223372036854775806",
    "/api/studies?offset=-1",
    "/api/studies?limit=-1",
    "/api/studies?limit=99999999999999999999999",
    "/api/studies?PatientName=" + "*" * 2_000,
    "/api/studies?PatientName=" + "A*" * 25_000,  # 50,000 bytes
    "/api/studies?PatientName=" + "*" * 50_000,
    "/api/studies?PatientName=%25" + "_" * 50_000,
    "/api/studies?StudyInstanceUID=" + "1." * 40,
    "/api/studies?PatientName=%E9",  # Latin-1, not UTF-8
    "/api/studies?PatientName=%zz",
    "/api/studies?PatientName=%",
    "/api/studies/1.2%FF",
    "/api/patients/%C0%AF",  # overlong UTF-8
]


@pytest.mark.parametrize("target", BAD_INPUT)
def test_bad_input_is_400_with_a_reason(web, target):
    _, port, _ = web
    status, _, body = get(port, target)
    expected = 414 if len(target) > 8192 else 400  # URI Too Long (RFC 9110 15.5.15)
    assert status == expected, (target[:80], status, body[:300])
    assert len(body.strip()) > 10  # a reason, not just the status


def test_non_utf8_bytes_in_the_request_line_are_400(web):
    _, port, _ = web
    for target in (b"/api/studies/\xff", b"/api/studies?PatientName=\xe9"):
        line = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        assert statuses(exchange(port, line)) == [400], target


KEYS = [*search_keys("IMAGE"), "ModalitiesInStudy", "limit", "offset", "x"]
EDGES = [str(2**63 - 2), str(2**64), "-1", "1e9", "nan", "%", "%zz", "\\" * 300, "*" * 300]
VALUES = st.text(max_size=80) | st.integers().map(str) | st.sampled_from(EDGES)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(fields=[("offset", str(2**63 - 2))], raw=b"")  # the probe's 500
@example(fields=[("PatientName", "*" * 5000)], raw=b"%")
@example(fields=[("ModalitiesInStudy", ""), ("ModalitiesInStudy", "")], raw=b"")  # found by it
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(KEYS), VALUES),
        max_size=4,
    ),
    raw=st.binary(max_size=40),
)
def test_fuzzed_queries_never_give_500(web, fields, raw):
    _, port, _ = web
    query = urllib.parse.urlencode(fields)
    raw_part = urllib.parse.quote_from_bytes(raw, safe="%&=*?")  # stray '%' included
    for target in (f"/api/studies?{query}", f"/api/instances?{query}&{raw_part}"):
        status, _, body = get(port, target)
        assert status < 500, (target, status, body[:300])


@pytest.mark.parametrize(
    "params",
    ["frame=0", "frame=-3", "frame=99999", "wc=nan&ww=nan", "wc=0&ww=inf", "size=1e9", "ww=1"],
)
def test_odd_preview_parameters_are_not_500(web, params):
    _, port, uids = web
    status, _, body = get(port, f"/api/instances/{uids[0]}/preview.png?{params}")
    assert 200 <= status < 500, (params, status, body[:300])


# -- the study page reaches every instance ---------------------------------------------------
class Links(HTMLParser):
    """The links of a page: ``hrefs`` in order, ``by_class`` for those with a class."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.by_class: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        given = dict(attrs)
        if tag == "a" and given.get("href"):
            self.hrefs.append(given["href"])
            if given.get("class"):
                self.by_class[given["class"]] = given["href"]


def links(port: int, target: str) -> Links:
    status, _, body = get(port, target)
    assert status == 200, (target, status)
    parser = Links()
    parser.feed(body.decode())
    return parser


def test_every_instance_of_a_50_instance_series_is_reachable_from_the_study_page(web):
    _, port, uids = web
    study = json.loads(get(port, "/api/studies?PatientID=HARD-1")[2])["items"][0]
    start = f"/studies/{study['StudyInstanceUID']}"
    reached: set[str] = set()
    seen, frontier = {start}, [start]
    for _click in range(3):  # the study page, and at most two more clicks
        following = []
        for page in frontier:
            for href in links(port, page).hrefs:
                path = urllib.parse.urlsplit(href).path
                if path.startswith("/instances/"):
                    reached.add(urllib.parse.unquote(path.removeprefix("/instances/")))
                elif path.startswith(("/series/", "/studies/")) and href not in seen:
                    seen.add(href)
                    following.append(href)
        frontier = following
    assert reached == set(uids)


def test_the_series_page_pages_through_every_instance(web):
    _, port, uids = web
    series = json.loads(get(port, f"/api/instances?SOPInstanceUID={uids[0]}")[2])["items"][0]
    target, reached, pages = f"/series/{series['SeriesInstanceUID']}?limit=20", [], 0
    while target and pages < 10:
        page = links(port, target)
        reached += [
            h.removeprefix("/instances/") for h in page.hrefs if h.startswith("/instances/")
        ]
        target = page.by_class.get("next")
        pages += 1
    assert pages == 3 and sorted(reached) == sorted(uids)


# -- the server's life ------------------------------------------------------------------------
def test_port_0_serves_on_the_port_the_socket_got_and_stops():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from compacs.security import Credentials
    from compacs.web.server import WebServer

    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("up"))])
    server = WebServer(app, "127.0.0.1", 0, Credentials())
    server.start()
    try:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        assert get(port, "/")[0] == 200
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_taken_http_port_is_a_clear_refusal(tmp_path):
    from tests.support.node import run_cli

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli(
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--http-port",
            str(port),
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
