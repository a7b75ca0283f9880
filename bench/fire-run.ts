// The benchmarks' one fire procedure: create `count` timers through the timer service, due evenly
// over a window that starts once their creation is done (plus a lead), wait until the receiver
// has them all (or a drain deadline passes), wait a little more for late duplicates, and judge
// every delivery: none early, none twice, none missing, and how late.
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  CreateTimerRequestSchema,
  type CreateTimerRequest,
} from "../services/shared/src/gen/timer/v1/timer_pb.js";
import type { TestDatabase } from "../test/support/database.js";
import { waitFor } from "../test/support/wait.js";
import { createRate, failureNote, type CreateRun, type Creator } from "./creates.js";
import { NATS_SUBJECT, type Receiver } from "./receiver.js";
import { fmt, fmtInt, fmtMs, judgeDeliveries, type FireResult } from "./stats.js";

/** Where the timers' callbacks go. */
export type CallbackKind = "http" | "nats";

export interface FireSpec {
  group: string;
  count: number;
  /** Fire times are spread evenly over this many ms from the first one. */
  spanMs: number;
  /** Time between the predicted end of creation and the first fire time. */
  leadMs: number;
  callback: CallbackKind;
  payload?: Uint8Array;
  /** How long after the last fire time to keep waiting for deliveries. */
  drainTimeoutMs: number;
  /** Load to run while the timers fire (given the first fire time); awaited before judging. */
  during?: (startMs: number) => Promise<void>;
  /** Called as the run moves on, for CPU snapshots or a VACUUM between creating and firing. */
  onPhase?: (phase: "creating" | "created" | "firing" | "fired") => void | Promise<void>;
}

export interface FireOutcome {
  /** The first fire time (epoch ms). */
  startMs: number;
  made: CreateRun;
  /** First fire time minus the end of creation: below a second, creation overlapped firing. */
  gapMs: number;
  overlapped: boolean;
  result: FireResult;
}

/**
 * VACUUM ANALYZE of the tables a fire run writes, for a Postgres with autovacuum off: without it
 * each run would wade through the dead row versions of the runs before it (every fire updates a
 * row twice), and plan with stale statistics.
 */
export async function vacuumTimerTables(db: TestDatabase): Promise<void> {
  await db.pool.query("VACUUM ANALYZE timers");
  await db.pool.query("VACUUM ANALYZE timer_attempts");
}

/** A timer request of a fire run. */
export function timerRequest(
  group: string,
  timerId: string,
  fireAtMs: number,
  callback: CallbackKind,
  url: string,
  payload?: Uint8Array,
): CreateTimerRequest {
  return create(CreateTimerRequestSchema, {
    groupId: group,
    timerId,
    schedule: { case: "fireAt", value: timestampFromMs(fireAtMs) },
    callback:
      callback === "nats"
        ? { target: { case: "nats", value: { subject: NATS_SUBJECT } } }
        : { target: { case: "http", value: { url, headers: {} } } },
    ...(payload ? { payload } : {}),
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

export async function fireRun(
  creator: Creator,
  receiver: Receiver,
  spec: FireSpec,
  log: (m: string) => void,
): Promise<FireOutcome> {
  const { group, count: n, spanMs } = spec;
  // Fire times are fixed at creation, so the window's start is predicted from the slowest create
  // rate seen so far, with a margin; an overlap is reported and fails the run's rows.
  const predictedMs = (n / creator.plannedRate()) * 1000 * 1.5 + 1_000;
  const startMs = Math.ceil((Date.now() + predictedMs + spec.leadMs) / 1000) * 1000;
  const dueOf = (i: number) => startMs + Math.floor((i * spanMs) / n);
  log(
    `${group}: creating ${fmtInt(n)} timers due over ${fmt(spanMs / 1000, 1)} s (${spec.callback} callbacks); first due at +${fmt((startMs - Date.now()) / 1000, 1)} s`,
  );
  await spec.onPhase?.("creating");
  const made = await creator.create(n, (i) =>
    timerRequest(group, `${group}-${i}`, dueOf(i), spec.callback, receiver.url, spec.payload),
  );
  await spec.onPhase?.("created");
  const gapMs = startMs - made.endedAtMs;
  const note = failureNote(made);
  log(
    `${group}: ${made.method} created ${fmtInt(made.acknowledged)} in ${fmt(made.durationMs / 1000, 2)} s (${fmtInt(createRate(made))}/s, call p99 ${fmtMs(made.latency.p99)} ms)${note ? `; ${note}` : ""}; first fire_at is ${fmt(gapMs / 1000, 1)} s after creation ended`,
  );
  if (gapMs < 1_000)
    log(
      `${group}: WARNING: creation ended only ${gapMs} ms before the first fire_at; creation load overlaps firing`,
    );
  const expected = new Map<string, number>();
  for (let i = 0; i < n; i++) if (!made.failed.has(i)) expected.set(`${group}-${i}`, dueOf(i));

  await sleep(startMs - 300 - Date.now());
  await spec.onPhase?.("firing");
  const side = spec.during?.(startMs);
  const deadlineMs = startMs + spanMs + spec.drainTimeoutMs;
  let lastReport = Date.now();
  for (;;) {
    const c = await receiver.count(group);
    if (c >= expected.size) break;
    if (Date.now() > deadlineMs) {
      log(`${group}: gave up waiting: ${fmtInt(c)} of ${fmtInt(expected.size)} delivered`);
      break;
    }
    if (Date.now() - lastReport >= 5_000) {
      log(`${group}:   ... ${fmtInt(c)} / ${fmtInt(expected.size)} delivered`);
      lastReport = Date.now();
    }
    await sleep(100);
  }
  await spec.onPhase?.("fired");
  await side;
  await sleep(2_000); // late duplicates or retries would show up here
  const result = judgeDeliveries(await receiver.take(group), expected);
  return { startMs, made, gapMs, overlapped: gapMs < 1_000, result };
}

/** The timers of `group` by state in Postgres, once none is mid-delivery (or after 15 s). */
export async function dbStates(db: TestDatabase, group: string): Promise<string> {
  const names: Record<number, string> = {
    1: "scheduled",
    2: "firing",
    3: "succeeded",
    4: "failed",
    5: "cancelled",
  };
  let rows: { state: number; n: string }[] = [];
  try {
    await waitFor(
      async () => {
        rows = (
          await db.pool.query<{ state: number; n: string }>(
            "SELECT state, count(*) AS n FROM timers WHERE group_id = $1 GROUP BY state ORDER BY state",
            [group],
          )
        ).rows;
        return !rows.some((r) => r.state === 2);
      },
      15_000,
      "outcomes to be written back",
      250,
    );
  } catch {
    // report whatever is there
  }
  return rows.map((r) => `${names[r.state] ?? r.state} ${fmtInt(Number(r.n))}`).join(", ") || "no rows";
}
