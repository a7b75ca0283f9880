// CreateTimers: up to MAX_CREATES_PER_CALL creates in one call, each judged as CreateTimer
// judges it (authorization, validation, idempotency, the group quota), stored with one INSERT,
// and answered item by item in request order. The call as a whole fails only when it cannot be
// judged item by item: unauthenticated (the interceptor), no or too many items, over the
// token's create rate, or the database unavailable; then nothing is stored.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { authorizeGroup, callerOf } from "../../shared/src/auth.js";
import { destinationOf } from "../../shared/src/callback-destination.js";
import type { Announcement } from "../../shared/src/mesh-messages.js";
import { shardOf } from "../../shared/src/shard.js";
import type {
  CreateTimersRequest,
  CreateTimersResponseSchema,
  CreateTimersResultSchema,
} from "../../shared/src/gen/timer/v1/timer_pb.js";
import { announceTimers } from "./announce.js";
import { createTraceparent } from "./call-support.js";
import { grpcCodeName, grpcCodeNameOf } from "../../shared/src/grpc-code-name.js";
import { groupQuotaExceeded, takeCreateTokens } from "./create-limits.js";
import { isRefusal, type Admission, type QuotaRefusal } from "./group-quota.js";
import type { TimerDeps } from "./handlers.js";
import type { ShardedTimer, StoredBatch, TimerKey } from "./timer-store.js";
import { timerKey, timerName } from "../../shared/src/timer-id.js";
import { ValidationError, validateCreate, type UrlVerdicts } from "./validation.js";

/** Most creates one CreateTimers call may carry (README, API). */
export const MAX_CREATES_PER_CALL = 1000;

type Result = MessageInitShape<typeof CreateTimersResultSchema>;

/** Handles one CreateTimers call; metrics count its creates as CreateTimer counts calls. */
export async function createTimers(
  deps: TimerDeps,
  req: CreateTimersRequest,
  ctx: HandlerContext,
): Promise<MessageInitShape<typeof CreateTimersResponseSchema>> {
  const n = req.requests.length;
  deps.metrics.attempt(n);
  let results: Result[];
  try {
    results = await judgeAndStore(deps, req, ctx);
  } catch (err) {
    deps.metrics.failed(grpcCodeNameOf(err), n);
    throw err;
  }
  let created = 0;
  const failed = new Map<Code, number>();
  for (const r of results) {
    if (r.created) created++;
    else if (r.error) failed.set(r.error.code as Code, (failed.get(r.error.code as Code) ?? 0) + 1);
  }
  deps.metrics.created(created);
  for (const [code, count] of failed) deps.metrics.failed(grpcCodeName(code), count);
  return { results };
}

async function judgeAndStore(
  deps: TimerDeps,
  req: CreateTimersRequest,
  ctx: HandlerContext,
): Promise<Result[]> {
  const { config } = deps;
  const n = req.requests.length;
  // Call-level messages avoid , ; : / (grpc-js clients leave those percent-encoded).
  if (n === 0)
    throw new ConnectError(
      `requests is empty. A CreateTimers call takes 1 to ${MAX_CREATES_PER_CALL} creates`,
      Code.InvalidArgument,
    );
  if (n > MAX_CREATES_PER_CALL) {
    throw new ConnectError(
      `requests has ${n} creates. A CreateTimers call takes at most ${MAX_CREATES_PER_CALL}. Split the batch`,
      Code.InvalidArgument,
    );
  }
  const now = Date.now();
  // One token per create, all or none: a call over the rate stores nothing.
  takeCreateTokens(deps.createRate, callerOf(ctx).name, now, n);

  const results: (Result | undefined)[] = new Array(n);
  const timers: (ShardedTimer | undefined)[] = new Array(n);
  // A key asked for twice is handled as two concurrent CreateTimer calls would be: the first
  // request goes to the database, a later one is judged against what the first came to.
  const firstOf = new Map<string, number>();
  const toInsert: ShardedTimer[] = [];
  const admissions: Admission[] = [];
  // Creates the group quota refused: stored before, they are answered as replays.
  const refused = new Map<number, QuotaRefusal>();
  const toFind: TimerKey[] = [];
  const urls: UrlVerdicts = new Map();
  for (let i = 0; i < n; i++) {
    const r = req.requests[i]!;
    // An empty group_id is left to validation, which names the field.
    if (r.groupId !== "") {
      try {
        authorizeGroup(ctx, r.groupId);
      } catch (err) {
        if (!(err instanceof ConnectError) || err.code !== Code.PermissionDenied) throw err;
        results[i] = itemError(i, "group_id", err.code, err.rawMessage);
        continue;
      }
    }
    let timer: ShardedTimer;
    try {
      const v = validateCreate(r, config.limits, now, urls);
      timer = Object.assign(v, { shard: shardOf(v.groupId, v.timerId, config.shardCount) });
    } catch (err) {
      if (!(err instanceof ValidationError)) throw err;
      results[i] = itemError(i, err.field, Code.InvalidArgument, err.reason);
      continue;
    }
    timers[i] = timer;
    const k = timerKey(timer.groupId, timer.timerId);
    if (firstOf.has(k)) continue;
    firstOf.set(k, i);
    const admission = deps.quota.admit(timer.groupId);
    if (isRefusal(admission)) {
      refused.set(i, admission);
      toFind.push(timer);
      continue;
    }
    toInsert.push(timer);
    admissions.push(admission);
  }

  let stored: StoredBatch = { created: new Set(), existing: new Map() };
  if (toInsert.length + toFind.length > 0) {
    try {
      stored = await deps.batcher.storeBatch(toInsert, createTraceparent(ctx), toFind, ctx.signal);
    } catch (err) {
      for (const a of admissions) a.released();
      throw err;
    }
    toInsert.forEach((t, j) => {
      if (stored.created.has(timerKey(t.groupId, t.timerId))) admissions[j]!.created();
      else admissions[j]!.released();
    });
  }

  const announcements: Announcement[] = [];
  for (let i = 0; i < n; i++) {
    if (results[i]) continue;
    const t = timers[i]!;
    const k = timerKey(t.groupId, t.timerId);
    const first = firstOf.get(k)!;
    const createdHere = stored.created.has(k);
    if (createdHere && first === i) {
      results[i] = { timerId: t.timerId, created: true, fireAt: timestampFromMs(t.fireAtMs), shard: t.shard };
      if (t.fireAtMs - now <= config.announceWindowMs) {
        announcements.push({
          groupId: t.groupId,
          timerId: t.timerId,
          shard: t.shard,
          dueMs: t.fireAtMs,
          destination: destinationOf(t.callback),
          version: 1, // a new timer's
        });
      }
      continue;
    }
    // A replay or a conflict: judged against the first create of the key in this call when
    // that stored it, else against what was stored before.
    const before = createdHere ? timers[first]! : stored.existing.get(k);
    if (!before) {
      const refusal = refused.get(first);
      results[i] = refusal
        ? itemError(i, "group_id", Code.ResourceExhausted, groupQuotaExceeded(refusal).rawMessage)
        : // Stored a moment ago and purged since: vanishingly rare.
          itemError(
            i,
            "timer_id",
            Code.Aborted,
            `timer ${timerName(t.groupId, t.timerId)} was stored and removed again while this call ran. Retry it`,
          );
      continue;
    }
    results[i] = before.requestHash.equals(t.requestHash)
      ? { timerId: t.timerId, created: false, fireAt: timestampFromMs(before.fireAtMs), shard: t.shard }
      : itemError(
          i,
          "timer_id",
          Code.AlreadyExists,
          `timer ${timerName(t.groupId, t.timerId)} already exists with a different schedule, callback, payload, retry policy or labels`,
        );
  }
  announceTimers(deps, announcements);
  return results as Result[];
}

/** An item's refusal: its gRPC code, and a message naming its index and field. */
function itemError(i: number, field: string, code: Code, reason: string): Result {
  return { error: { code, message: `requests[${i}].${field}: ${reason}` } };
}
