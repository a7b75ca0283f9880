// A fresh test database in the state the services leave it at start: migrated, with its shard
// count recorded and a lease row per shard, for tests that write rows directly and run SQL or
// commands against it without starting a service.
import { pino } from "pino";
import { checkShardCount, migrate, seedShardLeases } from "../../services/shared/src/db.js";
import { createTestDatabase, type TestDatabase } from "./database.js";

/** A fresh database (createTestDatabase), migrated and seeded for `shardCount` shards. */
export async function createMigratedDatabase(shardCount: number, prefix?: string): Promise<TestDatabase> {
  const db = await createTestDatabase(prefix);
  const client = await db.pool.connect();
  try {
    await migrate(client, pino({ level: "silent" }));
    await checkShardCount(client, shardCount);
    await seedShardLeases(client, shardCount);
  } finally {
    client.release();
  }
  return db;
}
