// gRPC status codes as operators read them in metrics labels and the audit log: INVALID_ARGUMENT,
// not Connect's enum name InvalidArgument.
import { Code, ConnectError } from "@connectrpc/connect";

/** INVALID_ARGUMENT for Code.InvalidArgument: the gRPC spelling operators know. */
export function grpcCodeName(code: Code): string {
  return (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** The gRPC code name a call failing with `err` answers: its own for a ConnectError, else INTERNAL. */
export function grpcCodeNameOf(err: unknown): string {
  return err instanceof ConnectError ? grpcCodeName(err.code) : "INTERNAL";
}
