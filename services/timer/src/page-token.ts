// ListTimers page tokens: the (fire_at, timer_id) of the last timer of a page, bound to the group
// and states asked for (shared/page-token.ts).
import { createHash } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { decodePageToken, encodePageToken, PAGE_TOKEN_REFUSED } from "../../shared/src/page-token.js";

/** The position after which the next page starts. */
export interface PagePosition {
  fireAtMs: number;
  timerId: string;
}

// A hash keeps the token short whatever the group id, the list of states and the selector
// (selectionKey: a token of one selector is refused for another).
function queryTag(groupId: string, states: number[], selector: string): string {
  return createHash("sha256")
    .update(`${groupId}\u0000${states.join(",")}${selector === "" ? "" : `\u0000${selector}`}`)
    .digest("base64url")
    .slice(0, 12);
}

/** The next_page_token of a ListTimers page that ended at `pos`, for this group and these states. */
export function encodeListTimersToken(
  pos: PagePosition,
  groupId: string,
  states: number[],
  selector = "",
): string {
  return encodePageToken({ f: pos.fireAtMs, t: pos.timerId }, queryTag(groupId, states, selector));
}

/** The position in a ListTimers page_token; INVALID_ARGUMENT when it is malformed or for another query. */
export function decodeListTimersToken(
  token: string,
  groupId: string,
  states: number[],
  selector = "",
): PagePosition {
  const v = decodePageToken(token, queryTag(groupId, states, selector));
  if (v && typeof v.f === "number" && Number.isFinite(v.f) && typeof v.t === "string") {
    return { fireAtMs: v.f, timerId: v.t };
  }
  throw new ConnectError(PAGE_TOKEN_REFUSED, Code.InvalidArgument);
}
