import { create, createRegistry, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescFile, DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ServiceImpl } from "@connectrpc/connect";
import * as v1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";

type Request = v1.ServerReflectionRequest;
type Response = v1.ServerReflectionResponse;
type Answer = Response["messageResponse"];

/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha), so grpcurl, grpcui, Postman and
 * `buf curl` can list and call keygate without a copy of its .proto (docs/decisions.md, "Server
 * reflection"). The descriptors are the ones compiled into src/gen: what is served is exactly
 * what the server speaks. A file is answered together with every file it imports.
 */
export function createReflection(services: DescService[]) {
  const all = [...services, v1.ServerReflection, v1alpha.ServerReflection];
  const files = new Map<string, DescFile>();
  const addFile = (f: DescFile): void => {
    if (files.has(f.proto.name)) return;
    files.set(f.proto.name, f);
    f.dependencies.forEach(addFile);
  };
  all.forEach((s) => addFile(s.file));
  const registry = createRegistry(...files.values());
  const serviceNames = all.map((s) => s.typeName);

  /** The file declaring `symbol`: a type, a service, or a method / field / enum value within one. */
  function fileOfSymbol(symbol: string): DescFile | undefined {
    const direct = registry.get(symbol);
    if (direct) return direct.file;
    const dot = symbol.lastIndexOf(".");
    if (dot <= 0) return undefined;
    const parent = registry.get(symbol.slice(0, dot));
    const member = symbol.slice(dot + 1);
    switch (parent?.kind) {
      case "service":
        return parent.methods.some((m) => m.name === member) ? parent.file : undefined;
      case "message":
        return parent.fields.some((f) => f.name === member) || parent.oneofs.some((o) => o.name === member)
          ? parent.file
          : undefined;
      case "enum":
        return parent.values.some((v) => v.name === member) ? parent.file : undefined;
      default:
        return undefined;
    }
  }

  /** `file` first, then everything it imports, each once. */
  function withImports(file: DescFile): Answer {
    const out: DescFile[] = [];
    const visit = (f: DescFile): void => {
      if (out.includes(f)) return;
      out.push(f);
      f.dependencies.forEach(visit);
    };
    visit(file);
    return {
      case: "fileDescriptorResponse",
      value: create(v1.FileDescriptorResponseSchema, {
        fileDescriptorProto: out.map((f) => toBinary(FileDescriptorProtoSchema, f.proto)),
      }),
    };
  }

  function notFound(message: string): Answer {
    return {
      case: "errorResponse",
      value: create(v1.ErrorResponseSchema, { errorCode: Code.NotFound, errorMessage: message }),
    };
  }

  function answer(req: Request): Answer {
    const r = req.messageRequest;
    switch (r.case) {
      case "listServices":
        return {
          case: "listServicesResponse",
          value: create(v1.ListServiceResponseSchema, {
            service: serviceNames.map((name) => ({ name })),
          }),
        };
      case "fileByFilename": {
        const f = files.get(r.value);
        return f ? withImports(f) : notFound(`file "${clip(r.value)}" is not known to this server`);
      }
      case "fileContainingSymbol": {
        const f = fileOfSymbol(r.value);
        return f ? withImports(f) : notFound(`symbol "${clip(r.value)}" is not known to this server`);
      }
      case "fileContainingExtension": {
        const message = registry.getMessage(r.value.containingType);
        const ext = message && registry.getExtensionFor(message, r.value.extensionNumber);
        return ext
          ? withImports(ext.file)
          : notFound(
              `no extension ${r.value.extensionNumber} of "${clip(r.value.containingType)}" is known to this server`,
            );
      }
      case "allExtensionNumbersOfType": {
        const message = registry.getMessage(r.value);
        if (!message) return notFound(`message type "${clip(r.value)}" is not known to this server`);
        const numbers: number[] = [];
        for (const d of registry)
          if (d.kind === "extension" && d.extendee === message) numbers.push(d.number);
        return {
          case: "allExtensionNumbersResponse",
          value: create(v1.ExtensionNumberResponseSchema, {
            baseTypeName: message.typeName,
            extensionNumber: numbers,
          }),
        };
      }
      default:
        return {
          case: "errorResponse",
          value: create(v1.ErrorResponseSchema, {
            errorCode: Code.InvalidArgument,
            errorMessage: "the request sets none of the known message_request fields",
          }),
        };
    }
  }

  function respond(req: Request): Response {
    return create(v1.ServerReflectionResponseSchema, {
      validHost: req.host,
      originalRequest: req,
      messageResponse: answer(req),
    });
  }

  const v1Impl: ServiceImpl<typeof v1.ServerReflection> = {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) yield respond(req);
    },
  };
  // v1alpha is the same protocol under an older package name: identical field numbers, so its
  // messages convert through the wire format.
  const v1alphaImpl: ServiceImpl<typeof v1alpha.ServerReflection> = {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        const res = respond(
          fromBinary(v1.ServerReflectionRequestSchema, toBinary(v1alpha.ServerReflectionRequestSchema, req)),
        );
        yield fromBinary(
          v1alpha.ServerReflectionResponseSchema,
          toBinary(v1.ServerReflectionResponseSchema, res),
        );
      }
    },
  };
  return { v1: v1Impl, v1alpha: v1alphaImpl, serviceNames };
}

/** Caller text echoed in an error: bounded and printable. */
function clip(s: string): string {
  const t = s.replace(/[^\x20-\x7e]/g, "?");
  return t.length > 200 ? `${t.slice(0, 200)}…` : t;
}
