// Waiting for a mesh to settle: tests that look at shard ownership start once the dispatchers
// share every shard, as shard_owners (unexpired leases) has it.
import type pg from "pg";
import { waitFor } from "./wait.js";

/** Waits until exactly `dispatchers` dispatchers hold unexpired leases on all `shards` shards. */
export async function waitForShardOwners(
  pool: pg.Pool,
  dispatchers: number,
  shards: number,
  timeoutMs = 20_000,
): Promise<void> {
  await waitFor(
    async () => {
      const { rows } = await pool.query<{ owners: number; n: number }>(
        "SELECT count(DISTINCT owner)::int AS owners, count(*)::int AS n FROM shard_owners WHERE owner IS NOT NULL",
      );
      return rows[0]?.owners === dispatchers && rows[0].n === shards;
    },
    timeoutMs,
    `${dispatchers} dispatchers to share the ${shards} shards`,
  );
}
