// The pure parts of `ops backup` and `ops restore`: argument parsing, backup names, the choice of
// backups retention deletes, tool versions, and reading pg_restore's output.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  applyRetention,
  backupBaseName,
  MANIFEST_TOOL,
  type BackupName,
  chooseBackupsToDelete,
  parseBackupArgs,
  parseBackupName,
} from "../../scripts/ops/backup.js";
import { parseCopyRows, parseRestoreArgs } from "../../scripts/ops/restore.js";
import { connectionForChild, parseToolVersion, toolTooOld } from "../../scripts/ops/pg-tools.js";

const DAY = 86_400_000;

test("backup options: DATABASE_URL by default, --keep and --max-age checked like settings", () => {
  assert.deepEqual(parseBackupArgs([], { DATABASE_URL: "postgres://db/timers" }), {
    databaseUrl: "postgres://db/timers",
    dir: "backups",
    keep: 14,
    maxAgeMs: undefined,
  });
  assert.deepEqual(
    parseBackupArgs(
      ["--database-url", "postgres://x/y", "--dir", "/b", "--keep", "3", "--max-age", "14d"],
      {},
    ),
    { databaseUrl: "postgres://x/y", dir: "/b", keep: 3, maxAgeMs: 14 * DAY },
  );
  assert.equal(parseBackupArgs(["--help"], {}), "help");
  assert.throws(() => parseBackupArgs([], {}), /pass --database-url or set DATABASE_URL/);
  assert.throws(() => parseBackupArgs(["--keep", "0"], { DATABASE_URL: "u" }), /--keep must be between 1/);
  assert.throws(
    () => parseBackupArgs(["--max-age", "two weeks"], { DATABASE_URL: "u" }),
    /--max-age must be a duration/,
  );
  assert.throws(() => parseBackupArgs(["--nope"], { DATABASE_URL: "u" }), /nope/);
});

test("a backup's name carries database, UTC time and shard count, and reads back", () => {
  const at = new Date("2026-12-02T09:15:00.123Z");
  const base = backupBaseName("timers_prod", at, 1024);
  assert.equal(base, "timers-prod_2026-12-02T09-15-00.123Z_1024shards");
  assert.deepEqual(parseBackupName(`${base}.dump`), {
    base,
    database: "timers-prod",
    snapshotAtMs: at.getTime(),
  });
  assert.equal(parseBackupName(`${base}.json`), undefined, "only the dump names a backup");
  assert.equal(parseBackupName(`.${base}.dump.123.partial`), undefined);
  assert.equal(parseBackupName("timers_service_20261202_091500.sql.gz"), undefined, "someone else's file");
  assert.equal(parseBackupName(`${backupBaseName("t", at, null)}.dump`)?.database, "t");
});

test("retention deletes beyond the newest --keep and older than --max-age, never the backup just made", () => {
  const now = Date.parse("2026-12-20T00:00:00Z");
  const backups: BackupName[] = [0, 1, 2, 3, 20].map((daysAgo) => ({
    base: `d${daysAgo}`,
    database: "timers",
    snapshotAtMs: now - daysAgo * DAY,
  }));
  const names = (keep: number, maxAgeMs: number | undefined, justMade = "d0") =>
    chooseBackupsToDelete(backups, { keep, maxAgeMs, nowMs: now, justMade }).map((b) => b.base);
  assert.deepEqual(names(3, undefined), ["d3", "d20"]);
  assert.deepEqual(names(10, 14 * DAY), ["d20"]);
  assert.deepEqual(names(2, 14 * DAY), ["d2", "d3", "d20"]);
  assert.deepEqual(names(10, undefined), []);
  // A clock that jumped: the backup just made looks oldest, and is kept anyway.
  assert.deepEqual(names(1, DAY / 2, "d20"), ["d1", "d2", "d3"]);
});

test("retention touches only this database's backups whose manifest this command wrote", async () => {
  const dir = await mkdtemp(join(tmpdir(), "retention-"));
  try {
    const at = (daysAgo: number) => new Date(Date.now() - daysAgo * DAY);
    const backup = async (database: string, daysAgo: number, manifestTool = MANIFEST_TOOL) => {
      const base = backupBaseName(database, at(daysAgo), 64);
      await writeFile(join(dir, `${base}.dump`), "dump");
      await writeFile(
        join(dir, `${base}.json`),
        JSON.stringify({ tool: manifestTool, file: `${base}.dump`, sha256: "x" }),
      );
      return base;
    };
    const newest = await backup("timers", 0);
    const old = await backup("timers", 2);
    const other = await backup("other", 3);
    const foreign = await backup("timers", 4, "someone else");
    const orphan = backupBaseName("timers", at(5), 64);
    await writeFile(join(dir, `${orphan}.dump`), "a dump without its manifest: not known to be ours");
    await writeFile(join(dir, "notes.txt"), "");

    const deleted = await applyRetention(
      dir,
      "timers",
      { keep: 1, maxAgeMs: undefined, justMade: newest },
      () => {},
    );
    assert.deepEqual(deleted, [old]);
    assert.deepEqual(
      (await readdir(dir)).sort(),
      [
        `${foreign}.dump`,
        `${foreign}.json`,
        `${newest}.dump`,
        `${newest}.json`,
        `${orphan}.dump`,
        `${other}.dump`,
        `${other}.json`,
        "notes.txt",
      ].sort(),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("restore options: an explicit target, SHARD_COUNT as the services read it, overdue choices", () => {
  const base = ["--file", "b.dump", "--database-url", "postgres://t/x"];
  assert.deepEqual(parseRestoreArgs(base, {}), {
    file: "b.dump",
    databaseUrl: "postgres://t/x",
    shardCount: 1024,
    clean: false,
    yes: false,
    overdue: { mode: "fire" },
  });
  assert.throws(
    () => parseRestoreArgs(["--file", "b.dump"], { DATABASE_URL: "postgres://live/db" }),
    /--database-url is required: the target is never taken from DATABASE_URL/,
  );
  assert.equal((parseRestoreArgs(base, { SHARD_COUNT: "64" }) as { shardCount: number }).shardCount, 64);
  assert.equal(
    (parseRestoreArgs([...base, "--shard-count", "32"], { SHARD_COUNT: "64" }) as { shardCount: number })
      .shardCount,
    32,
  );
  assert.throws(() => parseRestoreArgs(base, { SHARD_COUNT: "x" }), /SHARD_COUNT must be an integer/);
  assert.deepEqual(
    (parseRestoreArgs([...base, "--force", "-y"], {}) as { clean: boolean; yes: boolean }).clean,
    true,
  );
  assert.deepEqual(
    (
      parseRestoreArgs(
        [...base, "--overdue", "expire", "--expire-before", "2026-12-02T09:00:00+01:00"],
        {},
      ) as {
        overdue: unknown;
      }
    ).overdue,
    { mode: "expire", beforeMs: Date.parse("2026-12-02T08:00:00Z") },
  );
  assert.throws(() => parseRestoreArgs([...base, "--overdue", "expire"], {}), /needs --expire-before/);
  assert.throws(
    () => parseRestoreArgs([...base, "--overdue", "expire", "--expire-before", "2026-12-02 09:00"], {}),
    /RFC 3339 time with its zone/,
  );
  assert.throws(
    () => parseRestoreArgs([...base, "--expire-before", "2026-12-02T09:00:00Z"], {}),
    /goes with --overdue expire/,
  );
  assert.throws(() => parseRestoreArgs([...base, "--overdue", "later"], {}), /fire or expire/);
  assert.throws(
    () => parseRestoreArgs(["--database-url", "postgres://t/x"], {}),
    /give --file .* or --in-place/,
  );
  const inPlace = ["--in-place", "--database-url", "postgres://t/x"];
  assert.equal((parseRestoreArgs([...inPlace, "--yes"], {}) as { file: string | null }).file, null);
  assert.throws(() => parseRestoreArgs(inPlace, {}), /--in-place changes the data .* add --yes/);
  assert.throws(() => parseRestoreArgs([...inPlace, "--yes", "--file", "b.dump"], {}), /one of them/);
  assert.throws(() => parseRestoreArgs([...inPlace, "--yes", "--clean"], {}), /--clean has no meaning/);
});

test("pg_dump's version decides whether it can dump the server, and says how to get a newer one", () => {
  assert.equal(parseToolVersion("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"), 15);
  assert.equal(parseToolVersion("pg_restore (PostgreSQL) 18.1"), 18);
  assert.equal(parseToolVersion("something else 1.0"), undefined);
  const debian = { name: "pg_dump" as const, major: 15, path: "/usr/bin/pg_dump" };
  assert.equal(toolTooOld(debian, 15, "the server"), undefined);
  assert.equal(toolTooOld(debian, 14, "the server"), undefined, "newer tools read older servers");
  const message = toolTooOld(debian, 18, "the server") ?? "";
  assert.match(message, /pg_dump 15 \(\/usr\/bin\/pg_dump\) is older than the server \(PostgreSQL 18\)/);
  assert.match(message, /embedded Postgres of `npm start` is 18/);
  assert.match(message, /PG_BIN/);
  assert.match(message, /PG_DUMP/);
});

test("a child program gets the connection without the password on its command line", () => {
  assert.deepEqual(connectionForChild("postgres://timer:s%40cret@db:5432/timers?sslmode=require"), {
    dbname: "postgres://timer@db:5432/timers?sslmode=require",
    env: { PGPASSWORD: "s@cret" },
  });
  assert.deepEqual(connectionForChild("postgres://db/timers?password=pw"), {
    dbname: "postgres://db/timers",
    env: { PGPASSWORD: "pw" },
  });
  assert.deepEqual(connectionForChild("postgres://postgres@127.0.0.1/t"), {
    dbname: "postgres://postgres@127.0.0.1/t",
    env: {},
  });
  assert.throws(() => connectionForChild("not a url:pw@"), /not a postgres:\/\/ URL/);
});

test("the rows of one table are read from pg_restore's output, COPY escapes undone", () => {
  const out = [
    "--",
    "-- Data for Name: mesh_settings; Type: TABLE DATA; Schema: public; Owner: postgres",
    "--",
    "",
    "COPY public.mesh_settings (key, value) FROM stdin;",
    "shard_count\t64",
    "note\ta\\tb\\\\c",
    "\\.",
    "COPY public.other (x) FROM stdin;",
    "1",
    "\\.",
  ].join("\n");
  assert.deepEqual(parseCopyRows(out, "mesh_settings"), [
    ["shard_count", "64"],
    ["note", "a\tb\\c"],
  ]);
  assert.deepEqual(parseCopyRows(out, "timers"), []);
});
