// Opaque page tokens of the List calls (ListTimers, the admin's ListFailedTimers): the position
// after which the next page starts, bound to the query that made it, so that a token cannot be
// replayed against a different group or filter. Not signed: a forged position only moves where
// the caller's own query resumes, which it could ask for anyway.

/** Why a page_token is refused, in the same words for every List call. */
export const PAGE_TOKEN_REFUSED = "page_token is malformed or belongs to a different query";

/** An opaque page token for `position` (small scalar fields), bound to `query`. */
export function encodePageToken(position: Record<string, string | number>, query: string): string {
  return Buffer.from(JSON.stringify({ ...position, q: query })).toString("base64url");
}

/**
 * The fields of a token encodePageToken made for `query` (the caller checks their types);
 * undefined when the token is not base64url JSON or was made for another query.
 */
export function decodePageToken(token: string, query: string): Record<string, unknown> | undefined {
  let fields: unknown;
  try {
    fields = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    return undefined; // not JSON: garbage, or a token cut short
  }
  if (typeof fields !== "object" || fields === null || Array.isArray(fields)) return undefined;
  const record = fields as Record<string, unknown>;
  return record.q === query ? record : undefined;
}
