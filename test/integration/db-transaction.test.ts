// inTransaction (services/shared/src/db.ts) against a real Postgres: a connection lost while a
// transaction holds it out of the pool (Postgres restarted, the backend killed) must fail that
// transaction and nothing else. pg emits the loss as an 'error' event on the client, which has
// no listener outside the pool: unhandled, it crashes the whole process (a dispatcher died this
// way in a Postgres-crash test while its schedule advancer held a connection).
import { test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { inTransaction } from "../../services/shared/src/db.js";
import { createTestDatabase } from "../support/database.js";

test("a connection killed mid-transaction fails the transaction, is discarded, and the pool goes on", async () => {
  await using db = await createTestDatabase("txn");
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  pool.on("error", () => {}); // idle clients: the pool's own concern, not this test's
  try {
    const work = inTransaction(pool, async (client) => {
      const { rows } = await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
      const ended = new Promise<void>((resolve) => client.once("end", () => resolve()));
      await db.pool.query("SELECT pg_terminate_backend($1)", [rows[0]!.pid]);
      // The loss arrives while no statement is running: the case that crashed the dispatcher.
      await ended;
      await client.query("SELECT 1");
    });
    await assert.rejects(work, /terminat|not queryable/i);
    // The broken connection was not returned to the pool: the next transaction gets a new one.
    assert.equal(await inTransaction(pool, async (c) => (await c.query("SELECT 2 AS n")).rows[0].n), 2);
  } finally {
    await pool.end();
  }
});
