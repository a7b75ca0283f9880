// admin.v1.AdminService: check the request, call the store or the dispatchers, shape the
// answer. Changing calls go through the Auditor, so each lands in the audit log.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type pg from "pg";
import {
  AttemptSchema,
  AuditEventSchema,
  CancelTimersResponseSchema,
  DispatcherSchema,
  GroupActivitySchema,
  GroupQuotaSchema,
  GroupSchema,
  PausedGroupSchema,
  PurgeTimersResponseSchema,
  RebalanceReplySchema,
  RetryTimersResponseSchema,
  ShardPlacementSchema,
  ShardSchema,
  TimerSummarySchema,
  type AdminService,
  type TimerSummary,
} from "../../shared/src/gen/admin/v1/admin_pb.js";
import { TimerState } from "../../shared/src/gen/timer/v1/timer_pb.js";
import type { Logger } from "../../shared/src/logger.js";
import type { NatsLink } from "../../shared/src/nats.js";
import { pageOf } from "../../shared/src/page-bytes.js";
import { destinationOfJson } from "../../shared/src/callback-destination.js";
import { publishAnnouncement } from "../../shared/src/mesh-messages.js";
import { shardOf } from "../../shared/src/shard.js";
import { rowToTimer, State } from "../../shared/src/timer-model.js";
import {
  cancelSelection,
  decodeAuditCursor,
  decodeFailedCursor,
  encodeFailedCursor,
  pageSize,
  purgeSettings,
  RequestError,
  retrySelection,
  SAMPLE_SIZE,
} from "./admin-requests.js";
import * as store from "./admin-store.js";
import { grpcCodeName, markRecorded, type Auditor } from "./audit.js";
import type { DispatcherDirectory } from "./dispatcher-directory.js";
import { shardComputation, whatHappensNext } from "./explain.js";
import type { MeshControl } from "./mesh-control.js";

/** What the AdminService handlers work with. */
export interface AdminDeps {
  pool: pg.Pool;
  nats: NatsLink;
  directory: DispatcherDirectory;
  control: MeshControl;
  auditor: Auditor;
  shardCount: number;
  memberTtlMs: number;
  /** LIST_PAGE_MAX_BYTES: a ListFailedTimers page stops before this many bytes (at least one timer). */
  listPageMaxBytes: number;
  log: Logger;
}

/** Runs request checks, turning a RequestError into INVALID_ARGUMENT. */
function checked<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof RequestError) throw new ConnectError(err.message, Code.InvalidArgument);
    throw err;
  }
}

function required(value: string, field: string): string {
  if (value === "") throw new ConnectError(`${field} is required`, Code.InvalidArgument);
  return value;
}

function summary(r: store.SummaryRow): TimerSummary {
  return create(TimerSummarySchema, {
    groupId: r.group_id,
    timerId: r.timer_id,
    fireAt: timestampFromDate(r.fire_at),
    shard: r.shard,
    state: r.state as TimerState,
    attempt: r.attempt,
    lastError: r.last_error ?? "",
  });
}

const keys = (rows: store.SummaryRow[]) =>
  rows.slice(0, SAMPLE_SIZE).map((r) => ({ group_id: r.group_id, timer_id: r.timer_id }));

function quotaOf(r: store.GroupQuotaRow | null, active?: string) {
  return r
    ? create(GroupQuotaSchema, {
        groupId: r.group_id,
        maxActiveTimers: BigInt(r.max_active_timers),
        setBy: r.set_by,
        setTime: timestampFromDate(r.set_at),
        activeTimers: active === undefined ? 0n : BigInt(active),
      })
    : undefined;
}

function pauseOf(groupId: string, at: Date | null, by: string | null, reason: string | null) {
  return at
    ? create(PausedGroupSchema, {
        groupId,
        pausedTime: timestampFromDate(at),
        pausedBy: by ?? "",
        reason: reason ?? "",
      })
    : undefined;
}

/** The admin.v1.AdminService implementation. */
export function createAdminService(deps: AdminDeps): ServiceImpl<typeof AdminService> {
  const { pool, directory, auditor } = deps;

  /**
   * The NATS connection, for the calls that work through the dispatchers' heartbeats and
   * replies. While NATS is away the admin service stays ready (its Postgres calls work), and
   * these answer UNAVAILABLE naming NATS: the dispatchers it would list are not heard.
   */
  const requireNats = () => {
    const nc = deps.nats.ifConnected();
    if (!nc)
      throw new ConnectError(
        "NATS is not connected: the admin service cannot reach the dispatchers now; retry later",
        Code.Unavailable,
      );
    return nc;
  };

  /** Tells each retried timer's shard owner, so it fires now rather than at the next overdue scan. */
  const announce = (rows: store.SummaryRow[]) => {
    // While NATS is away the owners' overdue scan finds them.
    const nc = deps.nats.ifConnected();
    if (!nc) return;
    for (const r of rows) {
      try {
        publishAnnouncement(nc, {
          groupId: r.group_id,
          timerId: r.timer_id,
          shard: r.shard,
          dueMs: r.next_attempt_at.getTime(),
          destination: r.callback === undefined ? "" : destinationOfJson(r.callback),
        });
      } catch (err) {
        // The timer is due in Postgres; its owner's overdue scan finds it.
        deps.log.warn(
          { err, group_id: r.group_id, timer_id: r.timer_id },
          "could not announce a retried timer",
        );
      }
    }
  };

  return {
    async listDispatchers() {
      requireNats();
      const owned = await store.ownedShardCounts(pool);
      const live = directory.live();
      const dispatchers = live.map((m) =>
        create(DispatcherSchema, {
          id: m.id,
          address: m.address,
          lastHeartbeatTime: timestampFromMs(m.lastSeenMs),
          version: m.version,
          startTime: m.startedAtMs ? timestampFromMs(m.startedAtMs) : undefined,
          draining: m.draining,
          ownedShards: owned.get(m.id) ?? 0,
          live: true,
        }),
      );
      for (const [owner, n] of owned) {
        if (!live.some((m) => m.id === owner))
          dispatchers.push(create(DispatcherSchema, { id: owner, ownedShards: n, live: false }));
      }
      dispatchers.sort((a, b) => a.id.localeCompare(b.id));
      return { dispatchers };
    },

    async listShards(req) {
      let threshold: number | null = null;
      if (req.onlyLagging) {
        const t = req.lagThreshold;
        threshold = t ? Number(t.seconds) + t.nanos / 1e9 : 1;
        if (threshold < 0) throw new ConnectError("lag_threshold must not be negative", Code.InvalidArgument);
      }
      const rows = await store.listShards(pool, req.owner || null, threshold);
      return {
        shardCount: deps.shardCount,
        shards: rows.map((r) =>
          create(ShardSchema, {
            shard: r.shard,
            owner: r.owner ?? "",
            epoch: BigInt(r.epoch),
            leaseExpireTime: r.expires_at ? timestampFromDate(r.expires_at) : undefined,
            leased: r.leased,
            lagSeconds: r.lag,
            dueCount: BigInt(r.due),
          }),
        ),
      };
    },

    async drainDispatcher(req, ctx) {
      requireNats();
      return auditor.change(ctx, req, async () => {
        const id = required(req.dispatcherId, "dispatcher_id");
        const d = directory.find(id);
        if (!d) {
          const live = directory.live().map((m) => m.id);
          throw new ConnectError(
            `dispatcher "${id}" is not live (no heartbeat within ${deps.memberTtlMs} ms); live: ${live.join(", ") || "none"}`,
            Code.NotFound,
          );
        }
        // With the admin service's own token: the operator's is never forwarded (mesh-control.ts).
        const released = await deps.control.drain(d.id, d.address, ctx.signal);
        return {
          response: { dispatcherId: d.id, releasedShards: released },
          result: { dispatcher_id: d.id, address: d.address, released_shards: released },
          recorded: false,
        };
      });
    },

    async rebalanceShards(req, ctx) {
      const nc = requireNats();
      return auditor.change(ctx, req, async () => {
        for (const id of req.undrain) required(id, "undrain[]");
        const live = directory.live();
        const answers = await deps.control.rebalance(nc, req.undrain, live.length);
        const missing = live.map((m) => m.id).filter((id) => !answers.some((a) => a.id === id));
        return {
          response: {
            replies: answers.map((a) =>
              create(RebalanceReplySchema, {
                dispatcherId: a.id,
                draining: a.draining,
                ownedShards: a.owned,
              }),
            ),
            missing,
          },
          result: {
            replies: answers.map((a) => ({ id: a.id, draining: a.draining, owned: a.owned })),
            missing,
          },
          recorded: false,
        };
      });
    },

    async pauseGroup(req, ctx) {
      return auditor.change(ctx, req, async (audit) => {
        const groupId = required(req.groupId, "group_id");
        const p = await store.pauseGroup(pool, groupId, req.reason, audit);
        return {
          response: { pause: pauseOf(p.group_id, p.paused_at, p.paused_by, p.reason), newlyPaused: p.newly },
          result: { newly_paused: p.newly },
          recorded: true,
        };
      });
    },

    async resumeGroup(req, ctx) {
      return auditor.change(ctx, req, async (audit) => {
        const groupId = required(req.groupId, "group_id");
        const r = await store.resumeGroup(pool, groupId, audit);
        return {
          response: { wasPaused: r.wasPaused, overdueTimers: BigInt(r.overdue) },
          result: { was_paused: r.wasPaused, overdue_timers: r.overdue },
          recorded: true,
        };
      });
    },

    async listGroups() {
      const rows = await store.listGroups(pool);
      return {
        groups: rows.map((r) =>
          create(GroupSchema, {
            groupId: r.group_id,
            scheduled: BigInt(r.scheduled),
            firing: BigInt(r.firing),
            succeeded: BigInt(r.succeeded),
            failed: BigInt(r.failed),
            cancelled: BigInt(r.cancelled),
            pause: pauseOf(r.group_id, r.paused_at, r.paused_by, r.reason),
          }),
        ),
      };
    },

    async listFailedTimers(req) {
      const size = checked(() => pageSize(req.pageSize));
      const after =
        req.pageToken === "" ? null : checked(() => decodeFailedCursor(req.pageToken, req.groupId));
      const rows = await store.listFailedTimers(
        pool,
        req.groupId || null,
        after,
        size + 1,
        deps.listPageMaxBytes,
      );
      const { page, more } = pageOf(rows, size);
      const last = page[page.length - 1];
      return {
        timers: page.map(rowToTimer),
        nextPageToken:
          more && last
            ? encodeFailedCursor(
                { finish: last.finish_key, groupId: last.group_id, timerId: last.timer_id },
                req.groupId,
              )
            : "",
      };
    },

    async retryTimers(req, ctx) {
      return auditor.change<MessageInitShape<typeof RetryTimersResponseSchema>>(ctx, req, async (audit) => {
        const sel = checked(() => retrySelection(req));
        if (sel.single) {
          const state = await store.timerState(
            pool,
            sel.groupId!,
            sel.timerId!,
            shardOf(sel.groupId!, sel.timerId!, deps.shardCount),
          );
          if (state === undefined)
            throw new ConnectError(`timer ${sel.groupId}/${sel.timerId} not found`, Code.NotFound);
          if (state !== State.Failed) {
            throw new ConnectError(
              `timer ${sel.groupId}/${sel.timerId} is ${TimerState[state]}; only FAILED timers can be retried`,
              Code.FailedPrecondition,
            );
          }
        }
        if (req.dryRun) {
          const p = await store.previewRetry(pool, sel, audit);
          const count = Math.min(p.matched, sel.limit);
          return {
            response: {
              count,
              more: p.matched > sel.limit,
              sample: p.sample.map(summary),
              dryRun: true,
              matched: BigInt(p.matched),
            },
            result: { dry_run: true, would_retry: count, matched: p.matched },
            recorded: true,
          };
        }
        const r = await store.retryTimers(pool, sel, audit);
        announce(r.changed);
        return {
          response: {
            count: r.changed.length,
            more: r.more,
            sample: r.changed.slice(0, SAMPLE_SIZE).map(summary),
            dryRun: false,
          },
          result: { retried: r.changed.length, more: r.more, sample: keys(r.changed) },
          recorded: true,
        };
      });
    },

    async cancelTimers(req, ctx) {
      return auditor.change<MessageInitShape<typeof CancelTimersResponseSchema>>(ctx, req, async (audit) => {
        const sel = checked(() => cancelSelection(req));
        if (req.dryRun) {
          const p = await store.previewCancel(pool, sel, audit);
          const count = Math.min(p.matched, sel.limit);
          return {
            response: {
              count,
              more: p.matched > sel.limit,
              sample: p.sample.map(summary),
              dryRun: true,
              matched: BigInt(p.matched),
            },
            result: { dry_run: true, would_cancel: count, matched: p.matched },
            recorded: true,
          };
        }
        const r = await store.cancelTimers(pool, sel, audit);
        return {
          response: {
            count: r.changed.length,
            more: r.more,
            sample: r.changed.slice(0, SAMPLE_SIZE).map(summary),
            dryRun: false,
          },
          result: { cancelled: r.changed.length, more: r.more, sample: keys(r.changed) },
          recorded: true,
        };
      });
    },

    async purgeTimers(req, ctx) {
      return auditor.change<MessageInitShape<typeof PurgeTimersResponseSchema>>(ctx, req, async (audit) => {
        const { retentionMs, batchSize } = checked(() => purgeSettings(req));
        const { cutoff, exact } = await store.purgeCutoff(pool, retentionMs);
        if (req.dryRun) {
          const p = await store.previewPurge(pool, exact, audit);
          return {
            response: {
              deletedTimers: BigInt(p.timers),
              deletedAttempts: BigInt(p.attempts),
              batches: 0,
              cutoffTime: timestampFromDate(cutoff),
              dryRun: true,
            },
            result: { dry_run: true, would_delete_timers: p.timers, would_delete_attempts: p.attempts },
            recorded: true,
          };
        }
        let auditId: string | null = null;
        let timers = 0;
        let attempts = 0;
        let batches = 0;
        try {
          for (;;) {
            // One short transaction per batch; a finished timer locked by someone else is skipped.
            const b = await store.purgeBatch(pool, exact, batchSize, auditId, audit);
            auditId = b.auditId;
            batches++;
            timers += b.timers;
            attempts += b.attempts;
            if (b.timers < batchSize) break;
            if (ctx.signal.aborted) {
              throw new ConnectError(
                `purge stopped by the caller after ${batches} batches (${timers} timers deleted)`,
                Code.Canceled,
              );
            }
          }
        } catch (err) {
          if (auditId !== null) {
            const code = err instanceof ConnectError ? grpcCodeName(err.code) : "INTERNAL";
            await store
              .endPurgeAudit(pool, auditId, code, {
                stopped_after_batches: batches,
                error: err instanceof ConnectError ? err.rawMessage : "internal error",
              })
              .catch((e: unknown) =>
                deps.log.error({ err: e, audit_id: auditId }, "could not mark the purge's audit event"),
              );
            markRecorded(err);
          }
          throw err;
        }
        return {
          response: {
            deletedTimers: BigInt(timers),
            deletedAttempts: BigInt(attempts),
            batches,
            cutoffTime: timestampFromDate(cutoff),
            dryRun: false,
          },
          result: { deleted_timers: timers, deleted_attempts: attempts, batches },
          recorded: true,
        };
      });
    },

    async explainTimer(req) {
      const groupId = required(req.groupId, "group_id");
      const timerId = required(req.timerId, "timer_id");
      const shard = shardOf(groupId, timerId, deps.shardCount);
      const [row, attempts] = await Promise.all([
        store.explainTimer(pool, groupId, timerId, shard),
        store.timerAttempts(pool, groupId, timerId, shard),
      ]);
      if (!row) throw new ConnectError(`timer ${groupId}/${timerId} not found`, Code.NotFound);
      const ownerLive = row.lease_owner !== null && directory.find(row.lease_owner) !== undefined;
      const next = whatHappensNext({
        groupId,
        state: row.state,
        nextAttemptAtMs: row.next_attempt_at.getTime(),
        finishTimeMs: row.finish_time?.getTime() ?? null,
        attempt: row.attempt,
        maxAttempts: row.max_attempts,
        lastError: row.last_error,
        claimOwner: row.claim_owner,
        claimExpiresAtMs: row.claim_expires_at?.getTime() ?? null,
        pause: row.paused_at
          ? { by: row.paused_by ?? "", atMs: row.paused_at.getTime(), reason: row.pause_reason ?? "" }
          : null,
        shard: row.shard,
        leaseOwner: row.leased ? row.lease_owner : null,
        leaseExpiresAtMs: row.lease_expires_at?.getTime() ?? null,
        ownerLive,
        nowMs: row.db_now.getTime(),
      });
      return {
        timer: rowToTimer(row),
        placement: create(ShardPlacementSchema, {
          shard: row.shard,
          shardCount: deps.shardCount,
          computation: shardComputation(groupId, timerId, deps.shardCount),
          owner: row.lease_owner ?? "",
          epoch: BigInt(row.lease_epoch),
          leaseExpireTime: row.lease_expires_at ? timestampFromDate(row.lease_expires_at) : undefined,
          leased: row.leased,
          ownerLive,
        }),
        pause: pauseOf(groupId, row.paused_at, row.paused_by, row.pause_reason),
        attempts: attempts.map((a) =>
          create(AttemptSchema, {
            attempt: a.attempt,
            dispatcherId: a.dispatcher_id,
            startTime: timestampFromDate(a.started_at),
            finishTime: timestampFromDate(a.finished_at),
            outcome: a.outcome,
            error: a.error ?? "",
          }),
        ),
        next,
        claimOwner: row.state === State.Firing ? (row.claim_owner ?? "") : "",
      };
    },

    async getStats() {
      const [groups, c] = await Promise.all([store.activeByGroup(pool), store.meshCounters(pool)]);
      const activeByGroup = groups.map((g) =>
        create(GroupActivitySchema, {
          groupId: g.group_id,
          scheduled: BigInt(g.scheduled),
          firing: BigInt(g.firing),
        }),
      );
      return {
        activeByGroup,
        activeTimers: activeByGroup.reduce((n, g) => n + g.scheduled + g.firing, 0n),
        dueNow: BigInt(c.due_now),
        firedLastMinute: BigInt(c.fired_minute),
        firedLastHour: BigInt(c.fired_hour),
        attemptsLastMinute: BigInt(c.attempts_minute),
        attemptsLastHour: BigInt(c.attempts_hour),
        failedLastHour: BigInt(c.failed_hour),
        liveDispatchers: directory.live().length,
        pausedGroups: Number(c.paused_groups),
        time: timestampFromDate(c.db_now),
      };
    },

    async setGroupQuota(req, ctx) {
      return auditor.change(ctx, req, async (audit) => {
        const groupId = required(req.groupId, "group_id");
        if (groupId.length > 128)
          throw new ConnectError("group_id is longer than 128 characters", Code.InvalidArgument);
        if (req.maxActiveTimers < 0n) {
          throw new ConnectError(
            "max_active_timers must not be negative (0 removes the group's override)",
            Code.InvalidArgument,
          );
        }
        const r = await store.setGroupQuota(pool, groupId, req.maxActiveTimers, audit);
        return {
          response: { quota: quotaOf(r.quota), previous: quotaOf(r.previous) },
          result: {
            max_active_timers: r.quota?.max_active_timers ?? null,
            previous_max_active_timers: r.previous?.max_active_timers ?? null,
          },
          recorded: true,
        };
      });
    },

    async listGroupQuotas(req) {
      const rows = await store.listGroupQuotas(pool, req.groupId || null);
      return { quotas: rows.map((r) => quotaOf(r, r.active)!) };
    },

    async listAuditEvents(req) {
      const size = checked(() => pageSize(req.pageSize));
      const before = req.pageToken === "" ? null : checked(() => decodeAuditCursor(req.pageToken));
      const rows = await store.listAuditEvents(pool, before, req.actor || null, req.action || null, size + 1);
      const page = rows.slice(0, size);
      const asObject = (v: unknown) =>
        typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, never>) : undefined;
      return {
        events: page.map((r) =>
          create(AuditEventSchema, {
            id: BigInt(r.id),
            time: timestampFromDate(r.at),
            actor: r.actor,
            action: r.action,
            arguments: asObject(r.arguments),
            outcome: r.outcome,
            result: asObject(r.result),
            traceId: r.trace_id ?? "",
            dryRun: asObject(r.arguments)?.["dryRun"] === true,
          }),
        ),
        nextPageToken: rows.length > size && page.length > 0 ? page[page.length - 1]!.id : "",
      };
    },
  };
}
