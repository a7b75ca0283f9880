// Opaque ListTimers page tokens: the last position seen, bound to the query that made it so a
// token cannot be replayed against a different group or filter.
import { createHash } from "node:crypto";

/** The position after which the next page starts. */
export interface PagePosition {
  fireAtMs: number;
  timerId: string;
}

function queryTag(groupId: string, states: number[]): string {
  return createHash("sha256")
    .update(`${groupId}\u0000${states.join(",")}`)
    .digest("base64url")
    .slice(0, 12);
}

/** Encodes a page position for this query. */
export function encodePageToken(pos: PagePosition, groupId: string, states: number[]): string {
  return Buffer.from(
    JSON.stringify({ f: pos.fireAtMs, t: pos.timerId, q: queryTag(groupId, states) }),
  ).toString("base64url");
}

/** Decodes a token made by encodePageToken for the same query; undefined when it is not one. */
export function decodePageToken(token: string, groupId: string, states: number[]): PagePosition | undefined {
  try {
    const v = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as {
      f?: unknown;
      t?: unknown;
      q?: unknown;
    };
    if (
      typeof v.f !== "number" ||
      !Number.isFinite(v.f) ||
      typeof v.t !== "string" ||
      v.q !== queryTag(groupId, states)
    ) {
      return undefined;
    }
    return { fireAtMs: v.f, timerId: v.t };
  } catch {
    return undefined;
  }
}
