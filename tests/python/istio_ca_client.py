"""Istio's CA API called by a client no one on this project wrote: Python grpcio.

Compiles proto/istio/v1/auth/ca.proto with grpcio-tools' protoc into a temporary directory
(the generated code is never committed), connects over TLS like istio-agent does (the CA's
root, the DNS name the agent verifies, optionally a client certificate), optionally sends a
service-account token as `authorization: Bearer`, and asks
`istio.v1.auth.IstioCertificateService/CreateCertificate` to sign a CSR.

Prints one JSON object on standard output and exits:
  0  {"ok": true, "cert_chain": ["<PEM>", ...]}
  3  {"ok": false, "code": "<gRPC status name>", "details": "<message>"}
  1  anything else (a traceback on standard error)

Run by tests/istio_grpcio.rs with PYTHONPATH=.tools/pip/grpc (scripts/install-tools.sh grpc).
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc

PROTO = "istio/v1/auth/ca.proto"
# An RPC the server answered with a status: distinct from a crash of this script.
EXIT_STATUS = 3


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="host:port of the CA listener")
    parser.add_argument(
        "--server-name",
        required=True,
        help="the DNS name the CA's certificate must carry (istio-agent's CA_ADDR host)",
    )
    parser.add_argument("--root-ca", required=True, help="PEM roots to verify the CA with")
    parser.add_argument("--cert", help="PEM client certificate chain (mTLS)")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--token", help="service-account token sent as authorization: Bearer")
    parser.add_argument("--csr", required=True, help="PEM PKCS#10 request to sign")
    parser.add_argument(
        "--validity", type=int, default=0, help="validity_duration in seconds (0: default)"
    )
    parser.add_argument(
        "--impersonate", help="SPIFFE ID for the ImpersonatedIdentity request metadata"
    )
    parser.add_argument("--proto-dir", default="proto", help="the repository's proto/ directory")
    parser.add_argument("--timeout", type=float, default=30.0, help="RPC deadline in seconds")
    args = parser.parse_args()
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    return args


def stubs(proto_dir, out):
    """Generates and imports the message and service modules of the CA proto."""
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            PROTO,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed ({status}) on {proto_dir}/{PROTO}")
    sys.path.insert(0, out)
    messages = importlib.import_module("istio.v1.auth.ca_pb2")
    services = importlib.import_module("istio.v1.auth.ca_pb2_grpc")
    return messages, services


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="istio-ca-stubs-") as out:
        messages, services = stubs(args.proto_dir, out)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.root_ca),
            private_key=read(args.key) if args.key else None,
            certificate_chain=read(args.cert) if args.cert else None,
        )
        options = [("grpc.ssl_target_name_override", args.server_name)]
        request = messages.IstioCertificateRequest(
            csr=read(args.csr).decode("ascii"), validity_duration=args.validity
        )
        if args.impersonate:
            request.metadata.update({"ImpersonatedIdentity": args.impersonate})
        metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
        with grpc.secure_channel(args.address, credentials, options=options) as channel:
            client = services.IstioCertificateServiceStub(channel)
            try:
                response = client.CreateCertificate(
                    request, metadata=metadata, timeout=args.timeout
                )
            except grpc.RpcError as error:
                json.dump(
                    {"ok": False, "code": error.code().name, "details": error.details()},
                    sys.stdout,
                )
                return EXIT_STATUS
    json.dump({"ok": True, "cert_chain": list(response.cert_chain)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
