// The read-only part of the AdminService: failed timers page by page, one timer explained,
// mesh-wide stats, and the audit log. Nothing here changes anything, so nothing is audited.
import { create, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AttemptSchema,
  AuditEventSchema,
  GroupActivitySchema,
  ShardPlacementSchema,
} from "../../shared/src/gen/admin/v1/admin_pb.js";
import { pageWithToken } from "../../shared/src/page-bytes.js";
import { shardOf } from "../../shared/src/shard.js";
import { spanContextOf } from "../../shared/src/telemetry/trace-context.js";
import { timerName } from "../../shared/src/timer-id.js";
import { rowToTimer, State } from "../../shared/src/timer-model.js";
import { decodeAuditCursor, decodeFailedCursor, encodeFailedCursor, pageSize } from "./admin-requests.js";
import { listAuditEvents } from "./audit-store.js";
import { shardComputation, whatHappensNext } from "./explain.js";
import { type AdminDeps, type AdminHandlers, checked, pauseOf, required } from "./handler-support.js";
import { explainTimer, listFailedTimers, timerAttempts } from "./inspect-store.js";
import { activeByGroup, meshCounters } from "./stats-store.js";

/** A stored JSON value as a Struct's fields when it is an object; undefined otherwise. */
function asObject(v: JsonValue): JsonObject | undefined {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? v : undefined;
}

/** ListFailedTimers, ExplainTimer, GetStats and ListAuditEvents. */
export function inspectHandlers(
  deps: AdminDeps,
): AdminHandlers<"listFailedTimers" | "explainTimer" | "getStats" | "listAuditEvents"> {
  const { pool, directory } = deps;
  return {
    async listFailedTimers(req) {
      const size = checked(() => pageSize(req.pageSize));
      const after =
        req.pageToken === "" ? null : checked(() => decodeFailedCursor(req.pageToken, req.groupId));
      const rows = await listFailedTimers(pool, req.groupId || null, after, size + 1, deps.listPageMaxBytes);
      const { page, nextPageToken } = pageWithToken(rows, size, (last) =>
        encodeFailedCursor(
          { finish: last.finish_key, groupId: last.group_id, timerId: last.timer_id },
          req.groupId,
        ),
      );
      return { timers: page.map(rowToTimer), nextPageToken };
    },

    async explainTimer(req) {
      const groupId = required(req.groupId, "group_id");
      const timerId = required(req.timerId, "timer_id");
      const shard = shardOf(groupId, timerId, deps.shardCount);
      const [row, attempts] = await Promise.all([
        explainTimer(pool, groupId, timerId, shard),
        timerAttempts(pool, groupId, timerId, shard),
      ]);
      if (!row) throw new ConnectError(`timer ${timerName(groupId, timerId)} not found`, Code.NotFound);
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
        ...(row.max_lateness_ms === null
          ? {}
          : {
              lateness: {
                fireAtMs: row.fire_at.getTime(),
                maxLatenessMs: Number(row.max_lateness_ms),
                policy: row.lateness_policy,
                started: row.fired_time !== null,
              },
            }),
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
            traceId: a.trace_id ?? "",
          }),
        ),
        next,
        claimOwner: row.state === State.Firing ? (row.claim_owner ?? "") : "",
        // A malformed stored traceparent (a caller's own header, stored as sent) names no trace.
        traceId: spanContextOf(row.create_traceparent)?.traceId ?? "",
      };
    },

    async getStats() {
      const [groups, c] = await Promise.all([activeByGroup(pool), meshCounters(pool)]);
      const activity = groups.map((g) =>
        create(GroupActivitySchema, {
          groupId: g.group_id,
          scheduled: BigInt(g.scheduled),
          firing: BigInt(g.firing),
          paused: BigInt(g.paused),
        }),
      );
      return {
        activeByGroup: activity,
        // Paused timers (a bulk pause) are active too: they fire once resumed.
        activeTimers: groups.reduce(
          (n, g) => n + BigInt(g.scheduled) + BigInt(g.firing) + BigInt(g.paused),
          0n,
        ),
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

    async listAuditEvents(req) {
      const size = checked(() => pageSize(req.pageSize));
      const before = req.pageToken === "" ? null : checked(() => decodeAuditCursor(req.pageToken));
      const rows = await listAuditEvents(pool, before, req.actor || null, req.action || null, size + 1);
      const page = rows.slice(0, size);
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
            dryRun: asObject(r.arguments)?.dryRun === true,
          }),
        ),
        nextPageToken: rows.length > size && page.length > 0 ? page[page.length - 1]!.id : "",
      };
    },
  };
}
