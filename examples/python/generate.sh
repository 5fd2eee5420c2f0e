#!/usr/bin/env bash
# Generates the Python modules the client imports into examples/python/gen/:
#   keygate/v1/keygate_pb2.py, keygate/v1/keygate_pb2_grpc.py  from proto/keygate/v1/keygate.proto
#   status_pb2.py (google.rpc.Status)                          from the copy inside @connectrpc/connect
# Debian 12: apt-get install protobuf-compiler protobuf-compiler-grpc python3-grpcio nodejs.
# With pip instead (grpcio-tools >= 1.49), the same works with PROTOC="python3 -m grpc_tools.protoc";
# with pip's grpcio-status you do not need status_pb2 at all (see client.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/gen"
protoc=${PROTOC:-protoc}
plugin=()
if [ -z "${PROTOC:-}" ]; then
  plugin=(--plugin=protoc-gen-grpc_python="$(command -v grpc_python_plugin)")
fi
include=${PROTOBUF_INCLUDE:-/usr/include}
rm -rf "$out"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$root" && node --import tsx scripts/rpc-status-descriptor.ts) >"$work/status.binpb"
$protoc -I"$include" --descriptor_set_out="$work/any.binpb" google/protobuf/any.proto
cat "$work/any.binpb" "$work/status.binpb" >"$work/set.binpb"
$protoc --descriptor_set_in="$work/set.binpb" --python_out="$out" status.proto
$protoc -I"$root/proto" --python_out="$out" --grpc_python_out="$out" "${plugin[@]}" keygate/v1/keygate.proto
echo "generated into $out"
