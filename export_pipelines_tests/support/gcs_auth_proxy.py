"""A stand-in for Google's credential checks, in front of a real fake-gcs-server.

fake-gcs-server simulates the storage API only: it accepts any caller and never answers 401 or 403
(its maintainer says so: it "doesn't support validating credentials"). So the tests that need GCS to
refuse credentials put this proxy before it, doing the two checks Google does and nothing else:

- `POST /token` is the OAuth token endpoint a service account key's `token_uri` names. The client
  posts a grant (a JWT) signed with the key's private key; the proxy verifies the signature with the
  public key registered for that account, as Google does, and answers a token, or `400
  {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}` (a deleted key, or a key
  of another account).
- every other request needs `Authorization: Bearer <a token it issued>`: otherwise `401 Invalid
  Credentials`; an account registered read-only gets `403 … does not have storage.objects.create
  access …` for anything but GET (Google's answer to a missing IAM permission). The rest is forwarded
  unchanged to fake-gcs-server, whose answer is relayed.

The bodies and codes are GCS's JSON API error shapes; the storage itself is fake-gcs-server's.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth addresses the grant to Google's endpoint whatever token_uri says; Google checks it.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def new_key() -> tuple[str, str]:
    """(private PEM, public PEM) of a fresh RSA key, as a service account key has."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@dataclass
class GcsAuthProxy:
    upstream: str  # fake-gcs-server's URL
    port: int = 0
    accounts: dict[str, tuple[str, str]] = field(default_factory=dict)  # email -> (public PEM, access)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> email
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def register(self, email: str, public_pem: str, access: str = "write") -> None:
        """The account's key Google knows (access: write, or read: GET only)."""
        self.accounts[email] = (public_pem, access)

    def key_file(self, email: str, private_pem: str) -> str:
        """A service account key file's content (the fields google-auth reads) for this proxy."""
        return json.dumps(
            {
                "type": "service_account",
                "project_id": "tenant",
                "private_key_id": secrets.token_hex(8),
                "private_key": private_pem,
                "client_email": email,
                "client_id": "1",
                "token_uri": self.token_uri,
            }
        )

    # --- the two checks -------------------------------------------------------------------------

    def grant(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        from google.auth import jwt

        assertion = (form.get("assertion") or [""])[0]
        if (form.get("grant_type") or [""])[0] != JWT_BEARER or not assertion:
            return 400, {"error": "unsupported_grant_type"}
        try:
            claims = jwt.decode(assertion, verify=False)
            public, _ = self.accounts[claims["iss"]]
            jwt.decode(assertion, certs=public, audience=GOOGLE_TOKEN_AUDIENCE)
        except Exception:  # noqa: BLE001 - Google answers every bad grant the same way
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        token = secrets.token_urlsafe(24)
        self.tokens[token] = claims["iss"]
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def refusal(self, method: str, authorization: str | None) -> tuple[int, dict[str, Any]] | None:
        token = (authorization or "").removeprefix("Bearer ").strip()
        email = self.tokens.get(token)
        if email is None:
            message = "Invalid Credentials"
            return 401, {"error": {"code": 401, "message": message, "errors": [{"reason": "authError"}]}}
        if method != "GET" and self.accounts[email][1] != "write":
            message = (
                f"{email} does not have storage.objects.create access to the Google Cloud Storage "
                "object. Permission 'storage.objects.create' denied on resource (or it may not exist)."
            )
            return 403, {"error": {"code": 403, "message": message, "errors": [{"reason": "forbidden"}]}}
        return None


def _handler(proxy: GcsAuthProxy) -> type[BaseHTTPRequestHandler]:
    upstream = urllib.parse.urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            proxy.seen.append((self.command, self.path, status))

        def _json(self, status: int, doc: dict[str, Any]) -> None:
            self._answer(status, json.dumps(doc).encode(), [("Content-Type", "application/json")])

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.command == "POST" and self.path == "/token":
                self._json(*proxy.grant(urllib.parse.parse_qs(body.decode())))
                return
            refused = proxy.refusal(self.command, self.headers.get("Authorization"))
            if refused is not None:
                self._json(*refused)
                return
            conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                if "json" in (answer.getheader("Content-Type") or ""):
                    # Links in the answer (an object's mediaLink) lead back through the proxy.
                    data = data.replace(upstream.netloc.encode(), f"127.0.0.1:{proxy.port}".encode())
                self._answer(answer.status, data, answer.getheaders())
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def gcs_auth_proxy(upstream: str) -> Iterator[GcsAuthProxy]:
    proxy = GcsAuthProxy(upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    proxy.port = server.server_port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
