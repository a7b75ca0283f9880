// The timer.v1.ScheduleService implementation: validate, store the schedule with the firings it
// needs in one transaction (schedule-store.ts), announce firings due soon. Authorization is the
// TimerService's: a group token manages its groups' schedules.

import { create, fromJson, toJson } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { authorizeGroup } from "../../shared/src/auth.js";
import { destinationOfJson } from "../../shared/src/callback-destination.js";
import {
  FiringTemplateSchema,
  type Schedule,
  ScheduleSchema,
  ScheduleState,
  type ScheduleService,
  ScheduleSpecSchema,
  type ScheduledFiring,
  ScheduledFiringSchema,
} from "../../shared/src/gen/timer/v1/schedule_pb.js";
import { decodePageToken, encodePageToken, PAGE_TOKEN_REFUSED } from "../../shared/src/page-token.js";
import {
  type ScheduleRules,
  firingInstants,
  jitterFor,
  localTimeOf,
} from "../../shared/src/schedule-instants.js";
import {
  type InsertedFiring,
  type ScheduleRow,
  ScheduleRowState,
  rulesOfRow,
} from "../../shared/src/schedule-rows.js";
import { firingId, instantOfFiringId } from "../../shared/src/timer-id.js";
import { timestampToMsCeil } from "../../shared/src/time.js";
import { announceTimers } from "./announce.js";
import type { TimerDeps } from "./handlers.js";
import {
  type Placement,
  createSchedule,
  deleteSchedule,
  getScheduleRow,
  listScheduleRows,
  nextFirings,
  pauseSchedule,
  resumeSchedule,
  updateSchedule,
} from "./schedule-store.js";
import {
  checkScheduleId,
  checkSpec,
  checkTemplate,
  specToStore,
  validateCreateSchedule,
} from "./schedule-validation.js";
import { ValidationError, checkId } from "./validation.js";

export type ScheduleDeps = Pick<TimerDeps, "pool" | "nats" | "config" | "log" | "tracer">;

/** How many next firings a Schedule shows. */
const NEXT_FIRINGS = 10;

export function createScheduleService(deps: ScheduleDeps): ServiceImpl<typeof ScheduleService> {
  const { pool, config } = deps;
  const placement = (): Placement => ({
    shardCount: config.shardCount,
    nowMs: Date.now(),
    leadMs: config.announceWindowMs,
  });

  const announce = (row: ScheduleRow, inserted: readonly InsertedFiring[]): void => {
    const now = Date.now();
    const soon = inserted.filter((f) => f.fireAtMs - now <= config.announceWindowMs);
    if (soon.length === 0) return;
    const destination = destinationOfJson(row.firing.callback);
    announceTimers(
      deps,
      soon.map((f) => ({
        groupId: f.groupId,
        timerId: f.timerId,
        shard: f.shard,
        dueMs: f.fireAtMs,
        destination,
        version: f.version,
      })),
    );
  };

  const view = async (row: ScheduleRow): Promise<Schedule> => {
    const rules = rulesOrUndefined(row);
    const firings = await nextFirings(pool, row.group_id, row.schedule_id, NEXT_FIRINGS);
    return toSchedule(
      row,
      firings.map((f) =>
        scheduledFiring(rules, row.schedule_id, instantOfFiringId(f.timer_id), f.fire_at.getTime()),
      ),
    );
  };

  const keyOf = (
    req: { groupId: string; scheduleId: string },
    ctx: HandlerContext,
  ): { groupId: string; scheduleId: string } => {
    const groupId = valid(() => checkId("group_id", req.groupId, true));
    authorizeGroup(ctx, groupId);
    return { groupId, scheduleId: valid(() => checkScheduleId(req.scheduleId)) };
  };

  const found = async (key: { groupId: string; scheduleId: string }): Promise<ScheduleRow> => {
    const row = await getScheduleRow(pool, key.groupId, key.scheduleId);
    if (row === undefined) throw notFound(key);
    return row;
  };

  return {
    async createSchedule(req, ctx) {
      if (req.groupId !== "") authorizeGroup(ctx, req.groupId);
      const at = placement();
      const s = valid(() => validateCreateSchedule(req, config.limits, at.nowMs));
      const stored = await createSchedule(pool, s, at);
      if (stored.conflict) {
        throw new ConnectError(
          `schedule ${s.groupId}/${s.scheduleId} already exists with a different spec or template`,
          Code.AlreadyExists,
        );
      }
      announce(stored.row, stored.inserted);
      return { schedule: await view(stored.row), created: stored.created };
    },

    async getSchedule(req, ctx) {
      return { schedule: await view(await found(keyOf(req, ctx))) };
    },

    async listSchedules(req, ctx) {
      const groupId = valid(() => checkId("group_id", req.groupId, true));
      authorizeGroup(ctx, groupId);
      if (req.pageSize < 0 || req.pageSize > 1000) {
        throw new ConnectError("page_size must be between 1 and 1000 (0 for 100)", Code.InvalidArgument);
      }
      const pageSize = req.pageSize || 100;
      let after = "";
      if (req.pageToken !== "") {
        const position = decodePageToken(req.pageToken, `schedules:${groupId}`);
        if (position === undefined || typeof position.s !== "string") {
          throw new ConnectError(PAGE_TOKEN_REFUSED, Code.InvalidArgument);
        }
        after = position.s;
      }
      const rows = await listScheduleRows(pool, groupId, after, pageSize + 1);
      const page = rows.slice(0, pageSize);
      const last = page[page.length - 1];
      const nextPageToken =
        rows.length > pageSize && last !== undefined
          ? encodePageToken({ s: last.schedule_id }, `schedules:${groupId}`)
          : "";
      return { schedules: await Promise.all(page.map(view)), nextPageToken };
    },

    async updateSchedule(req, ctx) {
      const key = keyOf(req, ctx);
      const at = placement();
      const rules = valid(() => checkSpec(req.spec, "spec", at.nowMs));
      const firing = valid(() => checkTemplate(req.template, key.groupId, key.scheduleId, config.limits));
      if (req.expectedVersion < 0n)
        throw new ConnectError("expected_version must not be negative", Code.InvalidArgument);
      const outcome = await updateSchedule(
        pool,
        {
          ...key,
          expectedVersion: req.expectedVersion,
          rules,
          specJson: specToStore(req.spec ?? create(ScheduleSpecSchema), at.nowMs),
          templateJson: toJson(FiringTemplateSchema, req.template ?? create(FiringTemplateSchema)),
          firing,
        },
        at,
      );
      if ("kind" in outcome) {
        if (outcome.kind === "not_found") throw notFound(key);
        throw new ConnectError(
          `schedule ${key.groupId}/${key.scheduleId} is at version ${outcome.version}, not ${req.expectedVersion}`,
          Code.Aborted,
        );
      }
      announce(outcome.row, outcome.inserted);
      return { schedule: await view(outcome.row) };
    },

    async pauseSchedule(req, ctx) {
      const key = keyOf(req, ctx);
      const row = await pauseSchedule(pool, key.groupId, key.scheduleId);
      if (row === undefined) throw notFound(key);
      return { schedule: await view(row) };
    },

    async resumeSchedule(req, ctx) {
      const key = keyOf(req, ctx);
      const change = await resumeSchedule(pool, key.groupId, key.scheduleId, placement());
      if (change === undefined) throw notFound(key);
      announce(change.row, change.inserted);
      return { schedule: await view(change.row) };
    },

    async deleteSchedule(req, ctx) {
      const key = keyOf(req, ctx);
      const cancelled = await deleteSchedule(pool, key.groupId, key.scheduleId);
      if (cancelled === undefined) throw notFound(key);
      return { cancelledFirings: cancelled };
    },

    async previewSchedule(req, ctx) {
      if (req.count < 0 || req.count > 1000) {
        throw new ConnectError("count must be between 1 and 1000 (0 for 10)", Code.InvalidArgument);
      }
      const now = Date.now();
      let rules: ScheduleRules;
      let scheduleId = "";
      if (req.scheduleId !== "" || req.groupId !== "") {
        if (req.spec !== undefined) {
          throw new ConnectError(
            "spec must not be set with group_id and schedule_id (preview one or the other)",
            Code.InvalidArgument,
          );
        }
        const row = await found(keyOf(req, ctx));
        rules = rulesOfRow(row);
        scheduleId = row.schedule_id;
      } else {
        rules = valid(() => checkSpec(req.spec, "spec", now));
      }
      let fromMs = now;
      if (req.fromTime !== undefined) {
        if (req.fromTime.nanos < 0 || req.fromTime.nanos > 999_999_999) {
          throw new ConnectError("from_time nanos must be in [0, 999999999]", Code.InvalidArgument);
        }
        fromMs = timestampToMsCeil(req.fromTime);
        if (fromMs < Date.UTC(2000, 0, 1) || fromMs > Date.UTC(2200, 0, 1)) {
          throw new ConnectError("from_time must be between 2000 and 2200", Code.InvalidArgument);
        }
      }
      const instants = firingInstantsOrInvalid(rules, fromMs, req.count || 10);
      return {
        timeZone: rules.timeZone,
        firings: instants.map((f) =>
          create(ScheduledFiringSchema, {
            instant: timestampFromMs(f.instantMs),
            localTime: f.localTime,
            fireAt: timestampFromMs(f.instantMs + jitterFor(scheduleId, f.instantMs, rules.jitterMs)),
            timerId: scheduleId === "" ? "" : firingId(scheduleId, f.instantMs),
            note: f.note,
          }),
        ),
      };
    },
  };
}

function firingInstantsOrInvalid(
  rules: ScheduleRules,
  fromMs: number,
  count: number,
): ReturnType<typeof firingInstants> {
  try {
    return firingInstants(rules, fromMs, count);
  } catch (err) {
    throw new ConnectError(
      `spec.cron ${(err as Error).message}`,
      Code.InvalidArgument,
      undefined,
      undefined,
      err,
    );
  }
}

/** The rules of a stored row, or undefined when its spec no longer validates (a zone gone from the runtime). */
function rulesOrUndefined(row: ScheduleRow): ScheduleRules | undefined {
  try {
    return rulesOfRow(row);
  } catch {
    return undefined;
  }
}

/** One firing of a stored schedule, with its local time and the note of the policy that placed it. */
function scheduledFiring(
  rules: ScheduleRules | undefined,
  scheduleId: string,
  instantMs: number,
  fireAtMs: number,
): ScheduledFiring {
  let note = "";
  let localTime = new Date(instantMs).toISOString().replace(".000Z", "Z");
  if (rules !== undefined) {
    localTime = localTimeOf(rules.timeZone, instantMs);
    try {
      const [again] = firingInstants({ ...rules, startMs: null, endMs: null }, instantMs, 1);
      if (again?.instantMs === instantMs) note = again.note;
    } catch {
      note = "";
    }
  }
  return create(ScheduledFiringSchema, {
    instant: timestampFromMs(instantMs),
    localTime,
    fireAt: timestampFromMs(fireAtMs),
    timerId: firingId(scheduleId, instantMs),
    note,
  });
}

const STATE_OF_ROW: Record<number, ScheduleState> = {
  [ScheduleRowState.Active]: ScheduleState.ACTIVE,
  [ScheduleRowState.Paused]: ScheduleState.PAUSED,
  [ScheduleRowState.Completed]: ScheduleState.COMPLETED,
};

function toSchedule(row: ScheduleRow, next: ScheduledFiring[]): Schedule {
  return create(ScheduleSchema, {
    groupId: row.group_id,
    scheduleId: row.schedule_id,
    spec: fromJson(ScheduleSpecSchema, row.spec),
    template: fromJson(FiringTemplateSchema, row.template),
    state: STATE_OF_ROW[row.state] ?? ScheduleState.UNSPECIFIED,
    version: BigInt(row.version),
    createTime: timestampFromMs(row.create_time.getTime()),
    updateTime: timestampFromMs(row.update_time.getTime()),
    nextFirings: next,
    ...(row.last_instant === null ? {} : { lastInstant: timestampFromMs(row.last_instant.getTime()) }),
    skippedFirings: BigInt(row.skipped_firings),
  });
}

function valid<T>(check: () => T): T {
  try {
    return check();
  } catch (err) {
    if (err instanceof ValidationError) {
      throw new ConnectError(err.message, Code.InvalidArgument, undefined, undefined, err);
    }
    throw err;
  }
}

function notFound(key: { groupId: string; scheduleId: string }): ConnectError {
  return new ConnectError(`schedule ${key.groupId}/${key.scheduleId} not found`, Code.NotFound);
}
