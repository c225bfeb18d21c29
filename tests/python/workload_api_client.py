"""py-spiffe, the SPIFFE project's Python library, against meshca's SPIFFE Workload API.

Run by tests/workload_api_python.rs with PYTHONPATH=.tools/pip/spiffe and the daemon's socket:

    workload_api_client.py unix:///path/socket SERVER_ID CLIENT_ID -- meshca rotate leaves ...

It fetches every X.509-SVID of this process and the bundle, checks each chain with pyca
cryptography's verifier, connects the two identities over mTLS with Python's ssl module (each
side checks the other's SPIFFE ID), then holds one FetchX509SVID stream (no reconnection
allowed), runs the rotation command given after `--`, and waits for the renewed SVIDs on that
stream. With JWT-SVIDs on (the daemon's jwtSvid.enabled), it also fetches a JWT-SVID for each
identity, validates each offline against the JWT bundle it fetched (py-spiffe's verifier, PyJWT
and pyca cryptography) and through ValidateJWTSVID, and checks that another audience is
refused both ways. It prints one JSON object and exits 0 only if everything held.
"""

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient

TIMEOUT = 20.0


def pem_chain(svid):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)


def pem_key(svid):
    return svid.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def uri_sans(certificate):
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return names.value.get_values_for_type(x509.UniformResourceIdentifier)


def peer_uris(tls):
    """The URI SANs of the peer's verified certificate, as the ssl module reports them."""
    return [value for kind, value in tls.getpeercert().get("subjectAltName", ()) if kind == "URI"]


def mtls(directory, server, client, bundle_pem):
    """Server presents `server`, client `client`; both verify against the bundle (no host
    names: SPIFFE authentication is the URI SAN). Returns what each side saw of the other."""
    files = {}
    for name, svid in (("server", server), ("client", client)):
        chain, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
        with open(chain, "wb") as f:
            f.write(pem_chain(svid))
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(pem_key(svid))
        files[name] = (chain, key)
    roots = os.path.join(directory, "bundle.pem")
    with open(roots, "wb") as f:
        f.write(bundle_pem)

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(*files["server"])
    server_context.load_verify_locations(roots)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_cert_chain(*files["client"])
    client_context.load_verify_locations(roots)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_REQUIRED

    listener = socket.create_server(("127.0.0.1", 0))
    seen = {}

    def serve():
        connection, _ = listener.accept()
        with server_context.wrap_socket(connection, server_side=True) as tls:
            seen["server_saw"] = peer_uris(tls)
            tls.sendall(tls.recv(5) + b" from the server")

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw:
        with client_context.wrap_socket(raw) as tls:
            seen["client_saw"] = peer_uris(tls)
            tls.sendall(b"hello")
            seen["answer"] = tls.recv(64).decode()
    thread.join(TIMEOUT)
    listener.close()
    return seen


def check_jwt_svids(client, trust_domain):
    """JWT-SVIDs for audience `vault`: one per identity, each valid offline against the JWT
    bundle and through the API for `vault`, refused both ways for another audience."""
    tokens = client.fetch_jwt_svids({"vault"})
    jwt_bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(trust_domain)
    offline, online, refused = [], [], 0
    for svid in tokens:
        checked = JwtSvid.parse_and_validate(svid.token, jwt_bundle, {"vault"})
        offline.append(str(checked.spiffe_id))
        online.append(str(client.validate_jwt_svid(svid.token, "vault").spiffe_id))
        try:
            JwtSvid.parse_and_validate(svid.token, jwt_bundle, {"db"})
        except Exception:
            refused += 1
        try:
            client.validate_jwt_svid(svid.token, "db")
        except Exception:
            refused += 1
    return {
        "ids": sorted(str(s.spiffe_id) for s in tokens),
        "keys": len(jwt_bundle.jwt_authorities),
        "validated_offline": sorted(offline),
        "validated_by_meshca": sorted(online),
        "other_audience_refused": refused,
    }


def main():
    endpoint, server_id, client_id = sys.argv[1:4]
    rotate = sys.argv[sys.argv.index("--") + 1:]
    client = WorkloadApiClient(socket_path=endpoint, default_timeout=TIMEOUT)
    svids = {str(s.spiffe_id): s for s in client.fetch_x509_svids()}
    bundles = client.fetch_x509_bundles()
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(server_id.split("/")[2]))
    authorities = list(bundle.x509_authorities)
    bundle_pem = b"".join(a.public_bytes(serialization.Encoding.PEM) for a in authorities)

    # Each chain verifies against the bundle (pyca cryptography's RFC 5280 path builder).
    store = verification.Store(authorities)
    verified = {}
    for spiffe_id, svid in svids.items():
        verifier = verification.PolicyBuilder().store(store).build_client_verifier()
        result = verifier.verify(svid.leaf, svid.cert_chain[1:])
        verified[spiffe_id] = [str(name.value) for name in result.subjects or []]
        assert uri_sans(svid.leaf) == [spiffe_id], uri_sans(svid.leaf)

    with tempfile.TemporaryDirectory() as directory:
        seen = mtls(directory, svids[server_id], svids[client_id], bundle_pem)

    jwt = check_jwt_svids(client, TrustDomain(server_id.split("/")[2]))

    # One stream, no reconnection: the renewal must come on it.
    updates, errors, changed = [], [], threading.Event()

    def on_success(context):
        leaves = {str(s.spiffe_id): s.leaf.serial_number for s in context.x509_svids}
        updates.append(leaves)
        if len(updates) > 1 and all(leaves[k] != updates[0][k] for k in updates[0]):
            changed.set()

    def on_error(error):
        errors.append(repr(error))
        changed.set()

    first = threading.Event()
    handler = client.stream_x509_contexts(
        lambda c: (on_success(c), first.set()), on_error, retry_connect=False
    )
    assert first.wait(TIMEOUT), "no first message on the stream"
    rotated = subprocess.run(rotate, capture_output=True, text=True, timeout=TIMEOUT)
    assert rotated.returncode == 0, rotated.stderr
    renewed = changed.wait(TIMEOUT)
    handler.cancel()
    client.close()

    print(json.dumps({
        "svids": sorted(svids),
        "verified_subjects": verified,
        "authorities": len(authorities),
        "mtls": seen,
        "jwt": jwt,
        "updates": len(updates),
        "renewed_on_the_stream": renewed and not errors,
        "errors": errors,
    }))


if __name__ == "__main__":
    main()
