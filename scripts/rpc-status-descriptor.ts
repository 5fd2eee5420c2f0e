// Writes google/rpc/status.proto as a binary FileDescriptorSet to stdout, taken from the copy that
// @connectrpc/connect ships (Debian has no grpcio-status and no googleapis protos for Python).
// protoc reads it with --descriptor_set_in; see examples/README.md. Run: node --import tsx scripts/rpc-status-descriptor.ts
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);
const file = join(dirname(require.resolve("@connectrpc/connect/protocol-grpc")), "gen", "status_pb.js");
const match = /fileDesc\)?\("([A-Za-z0-9+/=]+)"/.exec(readFileSync(file, "utf8"));
if (!match?.[1]) {
  console.error(`no embedded descriptor found in ${file}`);
  process.exit(1);
}
// An embedded descriptor is one FileDescriptorProto without its imports (the generated code passes
// them as arguments): add `dependency` (field 3) back, then wrap it as a FileDescriptorSet (field 1).
const anyProto = Buffer.from("google/protobuf/any.proto");
const proto = Buffer.concat([
  Buffer.from(match[1], "base64"),
  Buffer.from([0x1a, anyProto.length]),
  anyProto,
]);
const length: number[] = [];
for (let n = proto.length; ; n >>>= 7) {
  if (n < 0x80) {
    length.push(n);
    break;
  }
  length.push((n & 0x7f) | 0x80);
}
process.stdout.write(Buffer.concat([Buffer.from([0x0a, ...length]), proto]));
