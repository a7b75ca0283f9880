// gRPC server reflection (grpc.reflection.v1 and grpc.reflection.v1alpha), so that grpcurl,
// buf curl, Postman etc. can discover and call our services without local .proto files. See
// https://github.com/grpc/grpc/blob/master/doc/server-reflection.md
import {
  create,
  createFileRegistry,
  toBinary,
  type DescEnum,
  type DescFile,
  type FileRegistry,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import { Health, file_grpc_health_v1_health } from "./gen/grpc/health/v1/health_pb.js";
import * as v1 from "./gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "./gen/grpc/reflection/v1alpha/reflection_pb.js";

/** gRPC status codes used in error_response (numeric, as on the wire). */
const NOT_FOUND = 5;
const INVALID_ARGUMENT = 3;

type ReflectionRequest = v1.ServerReflectionRequest | v1alpha.ServerReflectionRequest;

/** Version-neutral shape of ServerReflectionResponse.message_response (identical in v1 and v1alpha). */
type ReflectionAnswer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: Array<{ name: string }> } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

/** Registers grpc.reflection.v1 and v1alpha ServerReflection describing the given files (plus health and reflection). */
export function registerReflectionServices(router: ConnectRouter, files: DescFile[]): ConnectRouter {
  const reflector = new Reflector(
    [
      ...files,
      file_grpc_health_v1_health,
      v1.file_grpc_reflection_v1_reflection,
      v1alpha.file_grpc_reflection_v1alpha_reflection,
    ],
    [
      ...files.flatMap((f) => f.services.map((s) => s.typeName)),
      Health.typeName,
      v1.ServerReflection.typeName,
      v1alpha.ServerReflection.typeName,
    ],
  );
  // Both versions answer with the same fields; Connect makes each version's message of them.
  router.service(v1.ServerReflection, { serverReflectionInfo: (requests) => reflector.answers(requests) });
  router.service(v1alpha.ServerReflection, {
    serverReflectionInfo: (requests) => reflector.answers(requests),
  });
  return router;
}

class Reflector {
  readonly #registry: FileRegistry;
  readonly #services: string[];
  /** Serialized FileDescriptorProto per file name ("timer/v1/timer.proto"), computed lazily. */
  readonly #serialized = new Map<string, Uint8Array>();

  constructor(roots: DescFile[], services: string[]) {
    // Every root plus all transitive dependencies, dependencies before dependents.
    const ordered: DescFile[] = [];
    const seen = new Set<string>();
    const visit = (file: DescFile): void => {
      if (seen.has(file.proto.name)) return;
      seen.add(file.proto.name);
      for (const dep of file.dependencies) visit(dep);
      ordered.push(file);
    };
    roots.forEach(visit);
    this.#registry = createFileRegistry(
      create(FileDescriptorSetSchema, { file: ordered.map((f) => f.proto) }),
    );
    this.#services = [...new Set(services)];
  }

  /** The responses to a reflection stream, in the fields v1 and v1alpha share. */
  async *answers<R extends ReflectionRequest>(
    requests: AsyncIterable<R>,
  ): AsyncIterable<{ validHost: string; originalRequest: R; messageResponse: ReflectionAnswer }> {
    for await (const req of requests) {
      yield { validHost: req.host, originalRequest: req, messageResponse: this.answer(req) };
    }
  }

  answer(req: ReflectionRequest): ReflectionAnswer {
    const { messageRequest: r } = req;
    switch (r.case) {
      case "listServices":
        return {
          case: "listServicesResponse",
          value: { service: this.#services.map((name) => ({ name })) },
        };
      case "fileByFilename": {
        const file = this.#registry.getFile(r.value);
        return file ? this.#files(file) : notFound(`file not found: ${r.value}`);
      }
      case "fileContainingSymbol": {
        const file = this.#fileContainingSymbol(r.value);
        return file ? this.#files(file) : notFound(`symbol not found: ${r.value}`);
      }
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = r.value;
        const message = this.#registry.getMessage(containingType);
        const ext = message && this.#registry.getExtensionFor(message, extensionNumber);
        return ext
          ? this.#files(ext.file)
          : notFound(`extension ${extensionNumber} of ${containingType} not found`);
      }
      case "allExtensionNumbersOfType": {
        const message = this.#registry.getMessage(r.value);
        if (!message) return notFound(`type not found: ${r.value}`);
        const extensionNumber: number[] = [];
        for (const desc of this.#registry) {
          if (desc.kind === "extension" && desc.extendee.typeName === message.typeName) {
            extensionNumber.push(desc.number);
          }
        }
        return {
          case: "allExtensionNumbersResponse",
          value: { baseTypeName: message.typeName, extensionNumber: extensionNumber.sort((a, b) => a - b) },
        };
      }
      default:
        return {
          case: "errorResponse",
          value: { errorCode: INVALID_ARGUMENT, errorMessage: "empty or unsupported message_request" },
        };
    }
  }

  /** The requested file first, then all of its transitive dependencies (each once). */
  #files(file: DescFile): ReflectionAnswer {
    const out: Uint8Array[] = [];
    const seen = new Set<string>();
    const queue = [file];
    for (let f = queue.shift(); f; f = queue.shift()) {
      if (seen.has(f.proto.name)) continue;
      seen.add(f.proto.name);
      out.push(this.#serialize(f));
      queue.push(...f.dependencies);
    }
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } };
  }

  #serialize(file: DescFile): Uint8Array {
    let bytes = this.#serialized.get(file.proto.name);
    if (!bytes) {
      bytes = toBinary(FileDescriptorProtoSchema, file.proto);
      this.#serialized.set(file.proto.name, bytes);
    }
    return bytes;
  }

  /**
   * Resolves a fully-qualified symbol (no leading dot) to its file: messages, enums, services,
   * extensions directly; fields, oneofs and methods via their parent; enum values, which live in
   * the scope enclosing their enum (protobuf C++ scoping rules), via that scope.
   */
  #fileContainingSymbol(symbol: string): DescFile | undefined {
    const name = symbol.startsWith(".") ? symbol.slice(1) : symbol;
    const direct = this.#registry.get(name);
    if (direct) return direct.file;

    const dot = name.lastIndexOf(".");
    const scope = dot < 0 ? "" : name.slice(0, dot);
    const member = name.slice(dot + 1);
    const parent = scope === "" ? undefined : this.#registry.get(scope);
    switch (parent?.kind) {
      case "message":
        if (parent.members.some((m) => m.name === member)) return parent.file;
        if (hasEnumValue(parent.nestedEnums, member)) return parent.file;
        return undefined;
      case "service":
        return parent.methods.some((m) => m.name === member) ? parent.file : undefined;
      case "enum":
      case "extension":
        return undefined;
      case undefined:
        // scope may be a package: look for a top-level enum value in that package.
        for (const file of this.#registry.files) {
          if (file.proto.package === scope && hasEnumValue(file.enums, member)) return file;
        }
        return undefined;
    }
  }
}

function hasEnumValue(enums: DescEnum[], name: string): boolean {
  return enums.some((e) => e.values.some((v) => v.name === name));
}

function notFound(errorMessage: string): ReflectionAnswer {
  return { case: "errorResponse", value: { errorCode: NOT_FOUND, errorMessage } };
}
