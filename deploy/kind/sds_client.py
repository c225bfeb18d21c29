#!/usr/bin/env python3
"""A minimal SDS v3 client for deploy/kind/e2e.sh: opens one StreamSecrets stream to meshca,
asks for one secret, and prints the certificates (PEM) of the first response on stdout. Private
key blocks are never printed.

    sds_client.py ADDRESS RESOURCE_NAME [--token TOKEN] [--node NODE_ID]

The token, if given, is sent as `authorization: Bearer <token>` gRPC metadata (what Envoy sends
with `initial_metadata` on its SDS cluster). Needs the `grpcio` package (pip install grpcio);
the messages are encoded by hand so no Envoy protobuf package is needed.

Exit status: 0 with certificates printed; 3 when meshca refused the stream (the gRPC status is
printed on stderr, e.g. `UNAUTHENTICATED: ...`); 4 when the response held no certificate.
"""

import argparse
import re
import sys
import threading

import grpc

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
METHOD = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
PEM = re.compile(
    rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\r?\n?"
)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def discovery_request(name: str, node_id: str) -> bytes:
    # DiscoveryRequest: node = 2 (Node.id = 1), resource_names = 3, type_url = 4.
    return (
        field(2, field(1, node_id.encode()))
        + field(3, name.encode())
        + field(4, SECRET_TYPE.encode())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="host:port of meshca's SDS listener")
    parser.add_argument("name", help="secret name, e.g. default or ROOTCA")
    parser.add_argument("--token", help="service-account token to send as a bearer token")
    parser.add_argument("--node", default="meshca-e2e", help="Envoy node id")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    finished = threading.Event()

    def requests():
        yield discovery_request(args.name, args.node)
        # Keep the stream open (an SDS client does) until the first response is read.
        finished.wait()

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with grpc.insecure_channel(args.address) as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        responses = call(requests(), metadata=metadata, timeout=args.timeout)
        try:
            first = next(responses)
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 3
        finally:
            finished.set()
        responses.cancel()

    certificates = PEM.findall(first)
    if not certificates:
        print("the response held no certificate", file=sys.stderr)
        return 4
    sys.stdout.write(b"".join(certificates).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
