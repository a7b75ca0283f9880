import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { NatsLink } from "../../shared/src/nats.js";
import type pg from "pg";
import { authorizeGroup, callerOf } from "../../shared/src/auth.js";
import type { Logger } from "../../shared/src/logger.js";
import { destinationOf } from "../../shared/src/callback-destination.js";
import { shardOf } from "../../shared/src/shard.js";
import { rowToTimer, State } from "../../shared/src/timer-model.js";
import {
  CreateTimerResponseSchema,
  TimerState,
  type CreateTimerRequest,
  type CreateTimerResponse,
  type TimerService,
} from "../../shared/src/gen/timer/v1/timer_pb.js";
import type { Tracer } from "@opentelemetry/api";
import { announceTimers } from "./announce.js";
import { createTraceparent } from "./call-support.js";
import { grpcCodeNameOf } from "../../shared/src/grpc-code-name.js";
import { timerName } from "../../shared/src/timer-id.js";
import { createTimers } from "./create-timers.js";
import type { TimerMetrics } from "./timer-metrics.js";
import type { TimerConfig } from "./config.js";
import {
  cancelTimer,
  findStoredCreate,
  getTimer,
  listTimers,
  type CreateBatcher,
  type StoredCreate,
} from "./timer-store.js";
import { ValidationError, validateCreate, type NewTimer } from "./validation.js";
import { updateTimerHandler } from "./update-handler.js";
import { groupQuotaExceeded, takeCreateToken } from "./create-limits.js";
import type { TokenBuckets } from "./create-rate.js";
import { isRefusal, type GroupQuota } from "./group-quota.js";
import { decodeListTimersToken, encodeListTimersToken } from "./page-token.js";
import { pageWithToken } from "../../shared/src/page-bytes.js";
import { listSelection, selectionKey } from "../../shared/src/timer-selector.js";

/** Dependencies of the TimerService handlers. */
export interface TimerDeps {
  pool: pg.Pool;
  nats: NatsLink;
  batcher: CreateBatcher;
  config: TimerConfig;
  log: Logger;
  metrics: TimerMetrics;
  tracer: Tracer;
  /** Active timers per group against GROUP_MAX_ACTIVE_TIMERS and admins' overrides. */
  quota: GroupQuota;
  /** Creates per token (CREATE_RATE_PER_TOKEN, CREATE_BURST_PER_TOKEN). */
  createRate: TokenBuckets;
}

/** The timer.v1.TimerService implementation: validate, store, announce (CreateTimers: create-timers.ts). */
export function createTimerService(deps: TimerDeps): ServiceImpl<typeof TimerService> {
  const { pool, config } = deps;
  const createOnce = async (req: CreateTimerRequest, ctx: HandlerContext): Promise<CreateTimerResponse> => {
    // An empty group_id is left to validation, which names the field.
    if (req.groupId !== "") authorizeGroup(ctx, req.groupId);
    const now = Date.now();
    takeCreateToken(deps.createRate, callerOf(ctx).name, now);
    let timer: NewTimer;
    try {
      timer = validateCreate(req, config.limits, now);
    } catch (err) {
      throw invalid(err);
    }
    const shard = shardOf(timer.groupId, timer.timerId, config.shardCount);
    const stored = await storeWithinQuota(deps, { ...timer, shard }, createTraceparent(ctx), ctx.signal);
    if (stored.conflict) {
      throw new ConnectError(
        `timer ${timerName(timer.groupId, timer.timerId)} already exists with a different schedule, callback, payload, retry policy or labels`,
        Code.AlreadyExists,
      );
    }
    const row = stored.row;
    if (stored.created && row.next_attempt_at.getTime() - now <= config.announceWindowMs) {
      announceTimers(deps, [
        {
          groupId: row.group_id,
          timerId: row.timer_id,
          shard: row.shard,
          dueMs: row.next_attempt_at.getTime(),
          destination: destinationOf(timer.callback),
          version: Number(row.version),
        },
      ]);
    }
    return create(CreateTimerResponseSchema, { timer: rowToTimer(row), created: stored.created });
  };

  return {
    async createTimer(req, ctx) {
      deps.metrics.attempt();
      try {
        const res = await createOnce(req, ctx);
        if (res.created) deps.metrics.created();
        return res;
      } catch (err) {
        deps.metrics.failed(grpcCodeNameOf(err));
        throw err;
      }
    },

    createTimers: (req, ctx) => createTimers(deps, req, ctx),

    async getTimer(req, ctx) {
      const key = authorizedKey(req, ctx, config.shardCount);
      const row = await getTimer(pool, key.groupId, key.timerId, key.shard);
      if (!row) throw notFound(key);
      return { timer: rowToTimer(row) };
    },

    async cancelTimer(req, ctx) {
      const key = authorizedKey(req, ctx, config.shardCount);
      const row = await cancelTimer(pool, key.groupId, key.timerId, key.shard);
      if (!row) throw notFound(key);
      if (row.state !== State.Cancelled) {
        throw new ConnectError(
          `timer ${timerName(key.groupId, key.timerId)} is ${TimerState[row.state]}; only a SCHEDULED or PAUSED timer can be cancelled`,
          Code.FailedPrecondition,
        );
      }
      return { timer: rowToTimer(row) };
    },

    updateTimer: (req, ctx) => updateTimerHandler(deps, req, ctx),

    async listTimers(req, ctx) {
      // With a selector, its group_id may stand for the request's (listSelection checks both).
      const selection = req.selector ? listSelection(req.groupId, req.selector) : undefined;
      const groupId = selection?.groupId ?? req.groupId;
      if (groupId === "") throw new ConnectError("group_id is required", Code.InvalidArgument);
      authorizeGroup(ctx, groupId);
      if (req.pageSize < 0 || req.pageSize > 1000) {
        throw new ConnectError("page_size must be between 1 and 1000 (0 for 100)", Code.InvalidArgument);
      }
      for (const s of req.states) {
        if (!(s in TimerState) || s === TimerState.UNSPECIFIED) {
          throw new ConnectError(`states has an unknown state ${s}`, Code.InvalidArgument);
        }
      }
      const states = [...new Set(req.states)].sort();
      const pageSize = req.pageSize || 100;
      const selectorKey = selection ? selectionKey(selection) : "";
      const after =
        req.pageToken === "" ? undefined : decodeListTimersToken(req.pageToken, groupId, states, selectorKey);
      const rows = await listTimers(
        pool,
        groupId,
        states,
        after,
        pageSize + 1,
        config.quotas.listPageMaxBytes,
        selection,
      );
      const { page, nextPageToken } = pageWithToken(rows, pageSize, (last) =>
        encodeListTimersToken(
          { fireAtMs: last.fire_at.getTime(), timerId: last.timer_id },
          groupId,
          states,
          selectorKey,
        ),
      );
      return { timers: page.map(rowToTimer), nextPageToken };
    },
  };
}

/**
 * Stores a create if its group is within its limit of active timers. Over the limit, a replay of
 * a stored timer is still answered as one (the quota refuses new timers, not replays). `signal`
 * (the caller's deadline or cancel) keeps a create nobody waits for any more from being stored.
 */
async function storeWithinQuota(
  deps: TimerDeps,
  timer: NewTimer & { shard: number },
  traceparent: string | undefined,
  signal: AbortSignal,
): Promise<StoredCreate> {
  const admission = deps.quota.admit(timer.groupId);
  if (isRefusal(admission)) {
    const existing = await findStoredCreate(deps.pool, timer.groupId, timer.timerId, timer.shard);
    if (!existing) throw groupQuotaExceeded(admission);
    return { row: existing, created: false, conflict: !existing.request_hash.equals(timer.requestHash) };
  }
  let stored: StoredCreate;
  try {
    stored = await deps.batcher.store(timer, traceparent, signal);
  } catch (err) {
    admission.released();
    throw err;
  }
  if (stored.created) admission.created();
  else admission.released();
  return stored;
}

/** The key a GetTimer or CancelTimer asks about, once the caller may use its group, with its shard. */
function authorizedKey(
  req: { groupId: string; timerId: string },
  ctx: HandlerContext,
  shardCount: number,
): { groupId: string; timerId: string; shard: number } {
  const { groupId, timerId } = req;
  if (groupId === "") throw new ConnectError("group_id is required", Code.InvalidArgument);
  if (timerId === "") throw new ConnectError("timer_id is required", Code.InvalidArgument);
  authorizeGroup(ctx, groupId);
  return { groupId, timerId, shard: shardOf(groupId, timerId, shardCount) };
}

function notFound(key: { groupId: string; timerId: string }): ConnectError {
  return new ConnectError(`timer ${timerName(key.groupId, key.timerId)} not found`, Code.NotFound);
}

function invalid(err: unknown): ConnectError {
  if (err instanceof ValidationError) {
    return new ConnectError(err.message, Code.InvalidArgument, undefined, undefined, err);
  }
  throw err;
}
