#!/usr/bin/env bash
# Builds the Go example with Debian's packages only (no module download) and runs it:
#   examples/go/run.sh --target 127.0.0.1:8080 --region ap-guangzhou --instance ins-... --key skey-...
# Debian 12: apt-get install golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc
#   golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev
# With the Go module proxy instead, see examples/README.md (go mod init + go get).
# GO_EXAMPLE_BUILD=DIR keeps the build there (reused when present) instead of a temporary one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${GO_EXAMPLE_BUILD:-}"
if [ -z "$build" ]; then
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
fi
if [ ! -x "$build/bin/client" ]; then
  gopath="$build/gopath"
  mkdir -p "$gopath/src/keygate.dev/examples" "$build/bin"
  # protoc writes into the GOPATH by the proto's go_package (keygate.dev/gen/go/keygate/v1).
  protoc -I"$root/proto" --go_out="$gopath/src" --go-grpc_out="$gopath/src" keygate/v1/keygate.proto
  ln -sfn "$here" "$gopath/src/keygate.dev/examples/go"
  # GOPATH mode: Debian installs Go libraries as sources under /usr/share/gocode.
  GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$build/cache" GOFLAGS= \
    go build -o "$build/bin/client" keygate.dev/examples/go
fi
"$build/bin/client" "$@"
