"""The tests' own servers around the real ``docker-registry``: a TLS CA, a bearer-token server, a recording proxy.

None of them imitates the registry: the token server is the auth service distribution delegates to (it signs
RS256 JWTs that the real registry verifies against ``rootcertbundle``), and the proxy forwards every request to
the real registry unchanged while counting what passes (methods, paths, body bytes), optionally behaving like an
ingress with a body-size limit or a transient 503 — the conditions real deployments put in front of registries —
or like a bad network (``Fault.action``): a connection dropped mid-upload or mid-download, a stall, a blob body cut
short or altered in flight.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import ipaddress
import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

# --- TLS ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path  # the CA clients must trust
    cert_dir: Path  # skopeo/ocibuild --cert-dir: a folder holding ca.crt
    server_cert: Path
    server_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_tls(directory: Path) -> TLSFiles:
    """A throwaway CA and a server certificate for DNS:localhost and IP:127.0.0.1 signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("ocibuild test CA"))
        .issuer_name(_name("ocibuild test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = TLSFiles(
        ca_cert=directory / "ca.pem",
        cert_dir=directory / "certs.d",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
    )
    files.ca_cert.write_bytes(ca.public_bytes(pem))
    files.cert_dir.mkdir()
    (files.cert_dir / "ca.crt").write_bytes(ca.public_bytes(pem))
    files.server_cert.write_bytes(cert.public_bytes(pem))
    files.server_key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    return files


# --- a bearer-token server ----------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """The ``kid`` distribution looks a token's key up by: base32 of the first 240 bits of the sha256 of the DER
    public key, in 12 colon-separated groups of 4 (docker/libtrust ``keyIDFromCryptoKey``)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    s = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(s[i : i + 4] for i in range(0, len(s), 4))


@dataclass
class TokenRequest:
    account: str | None  # the user that authenticated, None when anonymous or refused
    scopes: list[str]
    granted: bool


@dataclass
class TokenServer:
    """``GET /token?service=&scope=…`` with Basic credentials → an RS256 JWT granting the scopes asked for; also
    ``POST /token`` with an OAuth2 refresh token from ``refresh_tokens``.

    Wrong credentials get 401; anonymous callers get a token granting nothing. ``requests`` records every call,
    ``issued`` every token handed out (secrets a client must never print).
    """

    directory: Path
    users: dict[str, str]
    service: str = "ocibuild-test-registry"
    issuer: str = "ocibuild-test-token-issuer"
    lifetime: int = 300
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # OAuth2 refresh token → account
    requests: list[TokenRequest] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def start(self) -> TokenServer:
        self._key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(self.issuer))
            .issuer_name(_name(self.issuer))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .sign(self._key, hashes.SHA256())
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.root_cert_bundle = self.directory / "token-signer.crt"
        self.root_cert_bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._kid = libtrust_key_id(self._key.public_key())
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        self.realm = f"http://127.0.0.1:{self._httpd.server_address[1]}/token"
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.issued.clear()

    def scopes_asked(self) -> list[str]:
        with self._lock:
            return [s for r in self.requests for s in r.scopes]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(h.path).query)
        scopes = query.get("scope", [])
        account = None
        auth = h.headers.get("Authorization", "")
        if h.command == "POST":  # OAuth2 refresh-token grant (Docker's "identitytoken")
            form = parse_qs(h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode())
            scopes = " ".join(form.get("scope", [])).split()
            account = self.refresh_tokens.get(form.get("refresh_token", [""])[0])
            if form.get("grant_type") != ["refresh_token"] or account is None:
                with self._lock:
                    self.requests.append(TokenRequest(None, scopes, False))
                _reply(h, 401, {"error": "invalid_grant"})
                return
        elif auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(user) != password:
                with self._lock:
                    self.requests.append(TokenRequest(None, scopes, False))
                _reply(h, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                return
            account = user
        access = []
        if account is not None:
            for scope in scopes:
                for one in scope.split(" "):
                    kind, _, rest = one.partition(":")
                    name, _, actions = rest.rpartition(":")
                    if kind == "repository" and name:
                        access.append({"type": kind, "name": name, "actions": actions.split(",")})
        token = self._sign(account or "", access)
        with self._lock:
            self.requests.append(TokenRequest(account, scopes, True))
            self.issued.append(token)
        _reply(h, 200, {"token": token, "access_token": token, "expires_in": self.lifetime})

    def _sign(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self._kid}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


def _reply(h: BaseHTTPRequestHandler, status: int, doc: dict) -> None:
    body = json.dumps(doc).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


# --- a recording proxy ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    method: str
    path: str  # with its query
    body_bytes: int  # request body bytes received from the client
    status: int  # 0: no answer was sent (the connection was dropped or stalled)
    fault: str = ""  # the Fault.action injected into this request, if any
    arrived: int = 0  # when the request reached the proxy, and when its answer was decided, on one counter:
    answered: int = 0  # ``a.answered < b.arrived`` means the client had a's answer before it sent b
    answer_bytes: int = 0  # body bytes of the upstream's answer (as forwarded, before any fault's damage)


FAULT_ACTIONS = ("status", "drop", "cut", "stall", "truncate", "corrupt")


@dataclass
class Fault:
    """Misbehave on the next ``times`` requests matching ``method`` and ``path_contains``.

    ``action``:
      status    answer ``status`` (with ``headers``, e.g. ``Retry-After``) instead of forwarding;
      drop      close the connection without an answer; for a request with a body, after reading only ``after``
                bytes of it (default: half), as a reset in the middle of an upload;
      cut       forward, then send the answer's headers and ``after`` bytes of its body (default: half) and close:
                a download that breaks off;
      stall     go silent for ``seconds`` (mid-body for a GET, else before answering), then close;
      truncate  forward, then send only ``after`` bytes of the body (default: half) with a matching
                Content-Length: a well-formed answer holding a short blob;
      corrupt   forward, then flip one byte of the body: same size, different content.
    """

    method: str
    path_contains: str
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    action: str = "status"
    after: int | None = None
    seconds: float = 0.0
    injected: int = 0  # how many times it was

    def __post_init__(self) -> None:
        assert self.action in FAULT_ACTIONS, self.action


_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class RecordingProxy:
    """Forwards HTTP to ``upstream`` (keeping ``Host``, so the registry's Locations point back here) and records.

    ``max_body``: refuse request bodies larger than this with 413, as nginx's ``client_max_body_size`` does.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.records: list[Record] = []
        self.faults: list[Fault] = []
        self.max_body: int | None = None
        self._lock = threading.Lock()
        self._clock = 0
        self._stopping = threading.Event()  # ends stalls early when the proxy stops
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self.records.clear()
            self.faults.clear()
            self.max_body = None

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def injected(self) -> list[Record]:
        """The requests a fault was injected into."""
        return [r for r in self.snapshot() if r.fault]

    def _tick(self) -> int:
        with self._lock:
            self._clock += 1
            return self._clock

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)

    def blob_bytes_uploaded(self, records: list[Record] | None = None) -> int:
        """Body bytes of every PATCH/PUT/POST to a blob upload URL: what a push sent of its blobs."""
        return sum(
            r.body_bytes
            for r in (self.snapshot() if records is None else records)
            if r.method in ("PATCH", "PUT", "POST") and "/blobs/uploads/" in r.path
        )

    def blob_bytes_downloaded(self, records: list[Record] | None = None) -> int:
        """Body bytes of every blob GET answered: what pulls received of blobs."""
        return sum(
            r.answer_bytes
            for r in (self.snapshot() if records is None else records)
            if r.method == "GET" and "/blobs/sha256:" in r.path
        )

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(h.rfile.read(size))
                h.rfile.readline()
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    def _fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.method == method and f.path_contains in path:
                    f.times -= 1
                    f.injected += 1
                    return f
        return None

    def _drop(self, h: BaseHTTPRequestHandler) -> None:
        """Reset the connection (SO_LINGER 0: an RST, not an orderly close), as a dying peer or middlebox does."""
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        arrived = self._tick()
        method = h.command
        fault = self._fault(method, h.path)
        action = fault.action if fault else ""
        if action == "drop" and int(h.headers.get("Content-Length") or 0) > 0:
            self._drop_mid_body(h, fault, arrived)
            return
        body = self._read_body(h)
        if action == "status" or (not fault and self.max_body is not None and len(body) > self.max_body):
            self._answer_status(h, fault, len(body), arrived)
            return
        if action == "drop" or (action == "stall" and method != "GET"):
            self._record(Record(method, h.path, len(body), 0, action, arrived, self._tick()))
            if action == "stall":
                self._stopping.wait(fault.seconds)
            self._drop(h)
            return
        self._forward(h, body, fault, arrived)

    def _drop_mid_body(self, h: BaseHTTPRequestHandler, fault: Fault, arrived: int) -> None:
        """Read only ``fault.after`` bytes of the body (default: half), then reset: an upload cut off."""
        length = int(h.headers["Content-Length"])
        got = len(h.rfile.read(min(length - 1, fault.after if fault.after is not None else length // 2)))
        self._record(Record(h.command, h.path, got, 0, fault.action, arrived, self._tick()))
        self._drop(h)

    def _answer_status(
        self, h: BaseHTTPRequestHandler, fault: Fault | None, body_bytes: int, arrived: int
    ) -> None:
        """Answer the fault's status and headers instead of forwarding; with no fault, 413 (``max_body``)."""
        status = fault.status if fault else 413
        action = fault.action if fault else ""
        # recorded before answering: tests read it after
        self._record(Record(h.command, h.path, body_bytes, status, action, arrived, self._tick()))
        h.send_response(status)
        for k, v in (fault.headers if fault else {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes, fault: Fault | None, arrived: int) -> None:
        """Send the request upstream and its answer back, damaged as the fault's action says."""
        action = fault.action if fault else ""
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=300)
        try:
            resp, data = self._ask_upstream(conn, h, body)
            if fault and not (data and resp.status == 200):
                action = ""  # nothing to damage: forward as it is, and keep the fault for a later request
                with self._lock:
                    fault.times += 1
                    fault.injected -= 1
            answer = len(data) if h.command != "HEAD" else 0
            self._record(Record(h.command, h.path, len(body), resp.status, action, arrived, self._tick(), answer))
            self._reply(h, resp, data, fault, action)
        finally:
            conn.close()

    def _ask_upstream(
        self, conn: http.client.HTTPConnection, h: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """The upstream's answer and body for the request as the client sent it (hop-by-hop headers aside)."""
        # Header by header: a client may send several Accept lines, and a dict would keep only the last.
        conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
        for k, v in h.headers.items():
            if k.lower() not in _HOP and k.lower() != "content-length":
                conn.putheader(k, v)
        if body or h.command in ("PUT", "PATCH", "POST"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp, resp.read()

    def _reply(
        self,
        h: BaseHTTPRequestHandler,
        resp: http.client.HTTPResponse,
        data: bytes,
        fault: Fault | None,
        action: str,
    ) -> None:
        """Send the upstream's answer on to the client, with ``action`` done to its body."""
        method = h.command
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                h.send_header(k, v)
        length = resp.getheader("Content-Length") if method == "HEAD" else str(len(data))
        part = data[: fault.after if fault and fault.after is not None else len(data) // 2]
        if action == "truncate":
            data, length = part, str(len(part))
        elif action == "corrupt":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        h.send_header("Content-Length", length or "0")
        h.end_headers()
        if action in ("cut", "stall"):
            h.wfile.write(part)
            h.wfile.flush()
            if action == "stall":
                self._stopping.wait(fault.seconds)
            self._drop(h)
        elif method != "HEAD":
            h.wfile.write(data)

    def _record(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)


def iter_records(records: list[Record], method: str, path_contains: str = "") -> Iterator[Record]:
    return (r for r in records if r.method == method and path_contains in r.path)
