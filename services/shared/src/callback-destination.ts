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
  const http = json["http"];
  if (http && typeof http === "object" && !Array.isArray(http) && typeof http["url"] === "string") return httpDestination(http["url"]);
  const grpc = json["grpc"];
  if (grpc && typeof grpc === "object" && !Array.isArray(grpc) && typeof grpc["target"] === "string") return `grpc://${grpc["target"].toLowerCase()}`;
  return json["nats"] !== undefined ? "nats" : "";
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
