// Pages of timers (ListTimers, the admin's ListFailedTimers) are bounded in bytes as well as in
// count, so a page of large payloads cannot grow into a response of a gigabyte, or past the
// 4 MiB a gRPC client accepts by default. The size of a timer is estimated in SQL from what
// dominates it (payload, callback, labels, plus a fixed allowance for the other fields) without
// reading the large values themselves, and the page is cut there, in the same statement.
import { envInt } from "./env.js";

/** LIST_PAGE_MAX_BYTES: default 2 MiB, half of a gRPC client's default maximum message size. */
export function loadListPageMaxBytes(env: Record<string, string | undefined>): number {
  return envInt(env, "LIST_PAGE_MAX_BYTES", 2 * 1024 * 1024, 1024, 64 * 1024 * 1024);
}

/**
 * Approximate bytes of a timer row in a response: payload (octet_length reads a TOASTed value's
 * size without fetching it), callback and labels as stored, and 256 bytes for the rest.
 */
export const TIMER_BYTES_SQL =
  "(octet_length(payload) + pg_column_size(callback) + pg_column_size(labels) + 256)";

/**
 * Wraps a keyset query over timers into one that keeps the page within `maxBytesParam` bytes.
 * `keysetQuery` selects at least the key `shard, group_id, timer_id`, the columns of `orderBy`, and
 * `${TIMER_BYTES_SQL} AS bytes`, ordered by `orderBy` and limited to page size + 1. `columns`
 * name what to return, qualified by `t.` (the timers row) or `s.` (the keyset query's row).
 * Returns the rows that fit (the first always does) in order, each with `window_rows`: how many
 * rows the keyset query found, so the caller knows whether more follow the last one returned.
 */
export function boundedPageSql(opts: {
  keysetQuery: string;
  orderBy: string;
  columns: string;
  maxBytesParam: string;
}): string {
  return `WITH w AS (${opts.keysetQuery}),
     sized AS (
       SELECT w.*, row_number() OVER (ORDER BY ${opts.orderBy}) AS n,
              sum(bytes) OVER (ORDER BY ${opts.orderBy} ROWS UNBOUNDED PRECEDING) AS through,
              count(*) OVER () AS window_rows
         FROM w
     )
     SELECT ${opts.columns}, s.window_rows::int AS window_rows
       FROM sized s JOIN timers t ON t.shard = s.shard AND t.group_id = s.group_id AND t.timer_id = s.timer_id
      WHERE s.n = 1 OR s.through <= ${opts.maxBytesParam}
      ORDER BY s.n`;
}

/** TIMER_COLUMNS qualified for boundedPageSql's `columns`. */
export function timerColumnsOf(columns: string): string {
  return columns
    .split(",")
    .map((c) => `t.${c.trim()}`)
    .join(", ");
}

/**
 * The page to return from rows cut by boundedPageSql: at most `pageSize`, and whether more rows
 * follow (some were cut by bytes or by count), so next_page_token resumes right after the last.
 */
export function pageOf<T extends { window_rows: number }>(
  rows: T[],
  pageSize: number,
): { page: T[]; more: boolean } {
  const page = rows.slice(0, pageSize);
  const found = rows[0]?.window_rows ?? 0;
  return { page, more: found > page.length };
}

/** pageOf's page, with the next_page_token `tokenAfter` makes from its last row ("" on the last page). */
export function pageWithToken<T extends { window_rows: number }>(
  rows: T[],
  pageSize: number,
  tokenAfter: (last: T) => string,
): { page: T[]; nextPageToken: string } {
  const { page, more } = pageOf(rows, pageSize);
  const last = page[page.length - 1];
  return { page, nextPageToken: more && last ? tokenAfter(last) : "" };
}
