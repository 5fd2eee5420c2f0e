#!/usr/bin/env python3
"""Calls keygate's AssociateKeyPairs from Python with grpcio.

Run examples/python/generate.sh first. Usage:

  KEYGATE_TOKEN=... python3 client.py --target 127.0.0.1:8080 --region ap-guangzhou \
      --instance ins-xxxxxxxx --key skey-xxxxxxxx [--idempotency-key KEY] [--deadline 30] [--wait]

Prints one JSON line: the answer, or the failure with its gRPC code and keygate.v1.ErrorDetail.
Exit status 0 on success, 1 when keygate refused or failed the call.
"""

import argparse
import json
import os
import sys
import uuid

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

from keygate.v1 import keygate_pb2, keygate_pb2_grpc  # noqa: E402
import status_pb2  # noqa: E402  (google.rpc.Status; pip's grpcio-status offers rpc_status.from_call instead)


def error_detail(err):
    """The keygate.v1.ErrorDetail inside grpc-status-details-bin, or None."""
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for packed in status.details:
            detail = keygate_pb2.ErrorDetail()
            if packed.Unpack(detail):
                return detail
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:8080", help="host:port of keygate's API port")
    parser.add_argument("--region", required=True)
    parser.add_argument("--instance", action="append", required=True, help="repeat for several")
    parser.add_argument("--key", action="append", required=True, help="repeat for several")
    parser.add_argument("--force-stop", action="store_true")
    parser.add_argument("--wait", action="store_true", help="answer once the cloud's tasks have finished")
    parser.add_argument(
        "--idempotency-key",
        default=None,
        help="reuse it when you retry, so a retry never binds twice (default: a new UUID)",
    )
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds keygate may take in all")
    args = parser.parse_args()

    token = os.environ.get("KEYGATE_TOKEN")
    if not token:
        sys.exit("set KEYGATE_TOKEN to your tenant's bearer token")

    request = keygate_pb2.AssociateKeyPairsRequest(
        region=args.region,
        instance_ids=args.instance,
        key_ids=args.key,
        force_stop=args.force_stop,
        wait_for_completion=args.wait,
        idempotency_key=args.idempotency_key or str(uuid.uuid4()),
    )
    # Plain text here; with KEYGATE_TLS_* use grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)).
    with grpc.insecure_channel(args.target) as channel:
        stub = keygate_pb2_grpc.KeyPairServiceStub(channel)
        try:
            response = stub.AssociateKeyPairs(
                request,
                timeout=args.deadline,
                metadata=(("authorization", f"Bearer {token}"),),
            )
        except grpc.RpcError as err:
            detail = error_detail(err)
            print(
                json.dumps(
                    {
                        "ok": False,
                        "code": err.code().name,
                        "message": err.details(),
                        "reason": detail.reason if detail else None,
                        "upstream_code": detail.upstream_code if detail else None,
                        "upstream_request_id": detail.upstream_request_id if detail else None,
                        "retry_after_ms": detail.retry_after_ms if detail else None,
                    }
                )
            )
            return 1
    print(
        json.dumps(
            {
                "ok": True,
                "request_id": response.request_id,
                "deduplicated": response.deduplicated,
                "idempotency_key": request.idempotency_key,
                "instances": [
                    {"instance_id": i.instance_id, "state": i.state, "message": i.message}
                    for i in response.instances
                ],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
