// The groups part of the AdminService: pause and resume a group, list groups with their timers
// per state, and set or list a group's own limit of active timers.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { type GroupQuota, GroupQuotaSchema, GroupSchema } from "../../shared/src/gen/admin/v1/admin_pb.js";
import {
  type GroupQuotaRow,
  listGroupQuotas,
  listGroups,
  pauseGroup,
  resumeGroup,
  setGroupQuota,
} from "./group-store.js";
import { type AdminDeps, type AdminHandlers, pauseOf, required } from "./handler-support.js";

/** A stored quota as the API shows it, with the group's active timers when counted. */
function quotaOf(r: GroupQuotaRow, active?: string): GroupQuota {
  return create(GroupQuotaSchema, {
    groupId: r.group_id,
    maxActiveTimers: BigInt(r.max_active_timers),
    setBy: r.set_by,
    setTime: timestampFromDate(r.set_at),
    activeTimers: active === undefined ? 0n : BigInt(active),
  });
}

/** PauseGroup, ResumeGroup, ListGroups, SetGroupQuota and ListGroupQuotas. */
export function groupHandlers(
  deps: AdminDeps,
): AdminHandlers<"pauseGroup" | "resumeGroup" | "listGroups" | "setGroupQuota" | "listGroupQuotas"> {
  const { pool, auditor } = deps;
  return {
    async pauseGroup(req, ctx) {
      return auditor.change(ctx, req, async (audit) => {
        const groupId = required(req.groupId, "group_id");
        const p = await pauseGroup(pool, groupId, req.reason, audit);
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
        const r = await resumeGroup(pool, groupId, audit);
        return {
          response: { wasPaused: r.wasPaused, overdueTimers: BigInt(r.overdue) },
          result: { was_paused: r.wasPaused, overdue_timers: r.overdue },
          recorded: true,
        };
      });
    },

    async listGroups() {
      const rows = await listGroups(pool);
      return {
        groups: rows.map((r) =>
          create(GroupSchema, {
            groupId: r.group_id,
            scheduled: BigInt(r.scheduled),
            firing: BigInt(r.firing),
            succeeded: BigInt(r.succeeded),
            failed: BigInt(r.failed),
            cancelled: BigInt(r.cancelled),
            expired: BigInt(r.expired),
            pausedTimers: BigInt(r.paused_timers),
            due: BigInt(r.due),
            failedLastHour: BigInt(r.failed_last_hour),
            retrying: BigInt(r.retrying),
            pause: pauseOf(r.group_id, r.paused_at, r.paused_by, r.reason),
          }),
        ),
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
        const r = await setGroupQuota(pool, groupId, req.maxActiveTimers, audit);
        return {
          response: {
            quota: r.quota ? quotaOf(r.quota) : undefined,
            previous: r.previous ? quotaOf(r.previous) : undefined,
          },
          result: {
            max_active_timers: r.quota?.max_active_timers ?? null,
            previous_max_active_timers: r.previous?.max_active_timers ?? null,
          },
          recorded: true,
        };
      });
    },

    async listGroupQuotas(req) {
      const rows = await listGroupQuotas(pool, req.groupId || null);
      return { quotas: rows.map((r) => quotaOf(r, r.active)) };
    },
  };
}
