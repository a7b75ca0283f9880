// The destination of a callback: what fair delivery counts in-flight attempts by, so that one
// slow or hanging receiver can hold only its share of a dispatcher's delivery slots.
import type { JsonValue } from "@bufbuild/protobuf";
import type { Callback } from "./gen/timer/v1/timer_pb.js";

/**
 * "http://host:port" for an HTTP(S) callback (scheme and default port made explicit),
 * "grpc://host:port" for a gRPC one, "nats" for NATS (our own server). Empty when unknown.
 */
export function destinationOf(callback: Callback): string {
  switch (callback.target.case) {
    case "http":
      return httpDestination(callback.target.value.url);
    case "grpc":
      return `grpc://${callback.target.value.target.toLowerCase()}`;
    case "nats":
      return "nats";
    default:
      return "";
  }
}

/** The same key from the proto-JSON form stored in timers.callback. */
export function destinationOfJson(json: JsonValue): string {
  if (json === null || typeof json !== "object" || Array.isArray(json)) return "";
  const http = json.http;
  const grpc = json.grpc;
  return destinationOfParts({
    httpUrl:
      http && typeof http === "object" && !Array.isArray(http) && typeof http.url === "string"
        ? http.url
        : null,
    grpcTarget:
      grpc && typeof grpc === "object" && !Array.isArray(grpc) && typeof grpc.target === "string"
        ? grpc.target
        : null,
    nats: json.nats !== undefined,
  });
}

/** The parts of a stored callback the key depends on (SQL can select just these, see CALLBACK_DESTINATION_COLUMNS). */
export interface CallbackDestinationParts {
  httpUrl: string | null;
  grpcTarget: string | null;
  nats: boolean;
}

/**
 * SQL select-list items giving CallbackDestinationParts from a `callback` jsonb column (as
 * http_url, grpc_target, nats), so loads need not fetch and parse whole callbacks.
 */
export const CALLBACK_DESTINATION_COLUMNS =
  "callback->'http'->>'url' AS http_url, callback->'grpc'->>'target' AS grpc_target, callback ? 'nats' AS nats";

/** The same key from the parts selected by CALLBACK_DESTINATION_COLUMNS. */
export function destinationOfParts(p: CallbackDestinationParts): string {
  if (p.httpUrl !== null) return httpDestination(p.httpUrl);
  if (p.grpcTarget !== null) return `grpc://${p.grpcTarget.toLowerCase()}`;
  return p.nats ? "nats" : "";
}

function httpDestination(url: string): string {
  try {
    const u = new URL(url);
    const port = u.port || (u.protocol === "https:" ? "443" : "80");
    return `${u.protocol.replace(/:$/, "")}://${u.hostname}:${port}`;
  } catch {
    return "";
  }
}
