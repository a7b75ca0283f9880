// Bulk operations as long-running operations: StartBulkOperation (or its dry run),
// GetOperation, ListOperations, CancelOperation. Group tokens may call all four, but only for
// operations on one of their groups (a selector's group_id); an operation over a group_pattern
// is an admin's. The work itself is operation-runner.ts's.
import { randomUUID } from "node:crypto";
import { create, fromJson, type JsonValue, toJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { callerOf, mayUseGroup, type Principal } from "../../shared/src/auth.js";
import {
  type Operation,
  OperationSchema,
  OperationState,
  StartBulkOperationRequestSchema,
  type TimerSummary,
  TimerSummarySchema,
} from "../../shared/src/gen/admin/v1/admin_pb.js";
import { decodePageToken, encodePageToken, PAGE_TOKEN_REFUSED } from "../../shared/src/page-token.js";
import { authorizeSelection, likeLiteral } from "../../shared/src/timer-selector.js";
import { pageSize } from "./admin-requests.js";
import { timerSummaryOf } from "./bulk-handlers.js";
import { bulkPlanOf } from "./bulk-operation-plan.js";
import { type AdminDeps, type AdminHandlers, checked, required } from "./handler-support.js";
import type { OperationRunner } from "./operation-runner.js";
import {
  getOperation,
  insertOperation,
  listOperations,
  type OperationCursor,
  type OperationRow,
  previewOperation,
  requestCancel,
} from "./operation-store.js";

/** The API's Operation for a stored row. */
export function operationOf(row: OperationRow): Operation {
  return create(OperationSchema, {
    id: row.id,
    request: fromJson(StartBulkOperationRequestSchema, row.request),
    state: row.state as OperationState,
    createdBy: row.created_by,
    createTime: timestampFromDate(row.create_time),
    updateTime: timestampFromDate(row.update_time),
    finishTime: row.finish_time ? timestampFromDate(row.finish_time) : undefined,
    matchedAtStart: BigInt(row.matched_at_start),
    examined: BigInt(row.examined),
    changed: BigInt(row.changed),
    batches: row.batches,
    error: row.error ?? "",
    sample: row.sample.map((s) => fromJson(TimerSummarySchema, s)),
  });
}

/** Whether the caller may see an operation: its group's tokens, and admins. */
function mayUseOperation(p: Principal, row: OperationRow): boolean {
  return p.admin || (row.group_id !== null && mayUseGroup(p, row.group_id));
}

/** A token's group patterns as LIKE patterns ("orders-*" -> "orders-%"). */
function likePatterns(p: Principal): string[] {
  return p.groups.map((g) => (g.endsWith("*") ? `${likeLiteral(g.slice(0, -1))}%` : likeLiteral(g)));
}

function checkStates(states: OperationState[]): number[] {
  for (const s of states) {
    if (!(s in OperationState) || s === OperationState.UNSPECIFIED)
      throw new ConnectError(`states has an unknown state ${s}`, Code.InvalidArgument);
  }
  return [...new Set<number>(states)].sort((a, b) => a - b);
}

/** What StartBulkOperation answers: the operation, or a dry run's count and sample. */
interface StartAnswer {
  operation?: Operation;
  dryRun: boolean;
  matched?: bigint;
  sample?: TimerSummary[];
}

const OPERATION_ID_RE = /^op-[0-9a-f-]{36}$/;

/** StartBulkOperation, GetOperation, ListOperations, CancelOperation. */
export function operationHandlers(
  deps: AdminDeps,
  runner: OperationRunner,
): AdminHandlers<"startBulkOperation" | "getOperation" | "listOperations" | "cancelOperation"> {
  const { pool, auditor } = deps;

  /** The operation named by `id` if the caller may see it: NOT_FOUND, PERMISSION_DENIED otherwise. */
  const visibleOperation = async (ctx: HandlerContext, id: string): Promise<OperationRow> => {
    required(id, "id");
    const row = OPERATION_ID_RE.test(id) ? await getOperation(pool, id) : undefined;
    if (!row) throw new ConnectError(`operation ${id} not found`, Code.NotFound);
    const p = callerOf(ctx);
    if (!mayUseOperation(p, row))
      throw new ConnectError(`token "${p.name}" may not use operation ${id}`, Code.PermissionDenied);
    return row;
  };

  return {
    async startBulkOperation(req, ctx) {
      return auditor.change<StartAnswer>(ctx, req, async (audit) => {
        const plan = bulkPlanOf(req, Date.now());
        authorizeSelection(callerOf(ctx), plan.selection);
        if (req.dryRun) {
          const p = await previewOperation(pool, plan);
          return {
            response: { dryRun: true, matched: BigInt(p.matched), sample: p.sample.map(timerSummaryOf) },
            result: {
              dry_run: true,
              action: plan.action,
              matched: p.matched,
              sample: p.sample.map((t) => ({ group_id: t.group_id, timer_id: t.timer_id })),
            },
            recorded: false,
          };
        }
        const row = await insertOperation(
          pool,
          {
            id: `op-${randomUUID()}`,
            groupId: plan.selection.groupId,
            request: toJson(StartBulkOperationRequestSchema, req) as JsonValue,
            createdBy: audit.actor,
          },
          plan,
          audit,
        );
        runner.wake();
        return {
          response: { operation: operationOf(row), dryRun: false },
          result: { operation_id: row.id, matched_at_start: Number(row.matched_at_start) },
          recorded: true,
        };
      });
    },

    async getOperation(req, ctx) {
      return { operation: operationOf(await visibleOperation(ctx, req.id)) };
    },

    async listOperations(req, ctx) {
      const p = callerOf(ctx);
      if (req.groupId !== "" && !mayUseGroup(p, req.groupId))
        throw new ConnectError(`token "${p.name}" may not use group "${req.groupId}"`, Code.PermissionDenied);
      const states = checkStates(req.states);
      const size = checked(() => pageSize(req.pageSize));
      const tag = `ops\u0000${req.groupId}\u0000${states.join(",")}`;
      let before: OperationCursor | null = null;
      if (req.pageToken !== "") {
        const v = decodePageToken(req.pageToken, tag);
        if (!v || typeof v.c !== "string" || typeof v.i !== "string")
          throw new ConnectError(PAGE_TOKEN_REFUSED, Code.InvalidArgument);
        before = { createTime: v.c, id: v.i };
      }
      const rows = await listOperations(
        pool,
        { groupId: req.groupId || null, visible: p.admin ? null : likePatterns(p), states },
        before,
        size + 1,
      );
      const page = rows.slice(0, size);
      const last = page[page.length - 1];
      return {
        operations: page.map(operationOf),
        nextPageToken:
          rows.length > size && last ? encodePageToken({ c: last.create_time_text, i: last.id }, tag) : "",
      };
    },

    async cancelOperation(req, ctx) {
      return auditor.change(ctx, req, async () => {
        const row = await visibleOperation(ctx, req.id);
        const now = (await requestCancel(pool, row.id, callerOf(ctx).name)) ?? row;
        runner.wake();
        return {
          response: { operation: operationOf(now) },
          result: { operation_id: row.id, state: OperationState[now.state] ?? String(now.state) },
          recorded: false,
        };
      });
    },
  };
}
