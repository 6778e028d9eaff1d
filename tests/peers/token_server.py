#!/usr/bin/env python3
"""A Docker token realm for tests: issues ES256 JWTs that CNCF distribution's `auth: token`
accepts, for clients that present the expected Basic credentials (or anyone, with --anonymous).

usage: token_server.py PORT CERT_OUT USER PASS [--anonymous]
Writes the signing certificate (the registry's rootcertbundle) to CERT_OUT, then serves
GET /token?service=..&scope=repository:NAME:ACTIONS on 127.0.0.1:PORT. It logs each request's
path to stdout so tests can count token fetches.
"""
import base64, datetime, http.server, json, sys, time, uuid
from urllib.parse import urlparse, parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

port, cert_out, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
anonymous = "--anonymous" in sys.argv

key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chartbridge-test-issuer")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
with open(cert_out, "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict) -> str:
    header = {"alg": "ES256", "typ": "JWT", "x5c": [x5c]}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        print(self.path, flush=True)
        u = urlparse(self.path)
        if u.path != "/token":
            self.send_error(404)
            return
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if not anonymous and self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"details":"bad credentials"}')
            return
        q = parse_qs(u.query)
        access = []
        for scope in q.get("scope", []):
            parts = scope.split(":")
            if len(parts) == 3 and parts[0] == "repository":
                access.append({"type": "repository", "name": parts[1], "actions": parts[2].split(",")})
        t = int(time.time())
        token = jwt({"iss": "test-issuer", "sub": user, "aud": q.get("service", [""])[0],
                     "exp": t + 300, "nbf": t - 10, "iat": t, "jti": str(uuid.uuid4()),
                     "access": access})
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
