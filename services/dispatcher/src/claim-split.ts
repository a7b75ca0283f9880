// One bad entry must never wedge a claim batch. Claims are one statement for many timers, so a
// single row Postgres rejects (a value it cannot represent, a constraint it breaks) fails the
// whole statement; retrying the same batch would fail forever and nothing would fire. A batch
// that fails with a data error is split in halves, recursively, until the good rows are claimed
// and the bad one stands alone, to be dropped. Any other error (connection lost, server shutting
// down, too many clients, a timeout) is no fault of the rows: the caller keeps them all and
// retries later.

/** What came of claiming a batch in parts. */
export interface SplitClaim<T, R> {
  /** Rows the claim statement returned. */
  claimed: R[];
  /** Entries that fail alone with a data error, with that error: never retried. */
  dropped: { entry: T; err: unknown }[];
  /** Entries not settled because of an error that is not theirs: keep them and retry later. */
  retry: T[];
  /** That error, when there was one. */
  error?: unknown;
}

/**
 * Runs `claim` over `entries`; when it throws a data error, runs it over each half instead, so
 * that only the entries that fail alone are dropped (about 2·log2(n) statements per bad row).
 * After an error that is not a data error, nothing more is tried: the rest go to `retry`.
 */
export async function claimSplitting<T, R>(
  entries: T[],
  claim: (part: T[]) => Promise<R[]>,
): Promise<SplitClaim<T, R>> {
  const out: SplitClaim<T, R> = { claimed: [], dropped: [], retry: [] };
  const run = async (part: T[]): Promise<void> => {
    if (part.length === 0) return;
    if (out.error !== undefined) {
      out.retry.push(...part);
      return;
    }
    try {
      out.claimed.push(...(await claim(part)));
    } catch (err) {
      if (!isDataError(err)) {
        out.error = err;
        out.retry.push(...part);
      } else if (part.length === 1) {
        out.dropped.push({ entry: part[0]!, err });
      } else {
        const mid = part.length >> 1;
        await run(part.slice(0, mid));
        await run(part.slice(mid));
      }
    }
  };
  await run(entries);
  return out;
}

/**
 * True for an error Postgres raised because of the data in the statement: SQLSTATE class 22
 * (data exception: malformed array literal, invalid byte sequence, out of range) or 23
 * (integrity constraint violation). Connection errors have no SQLSTATE or class 08, 53, 57...
 */
export function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.length === 5 && (code.startsWith("22") || code.startsWith("23"));
}
