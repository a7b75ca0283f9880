// The bulk part of the AdminService: RetryTimers and CancelTimers, each a bulk change or its dry
// run (bulk-store.ts), answered and recorded the same way. A retry also tells each retried
// timer's shard owner, so it fires now rather than at the owner's next overdue scan.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { type TimerSummary, TimerSummarySchema } from "../../shared/src/gen/admin/v1/admin_pb.js";
import { TimerState } from "../../shared/src/gen/timer/v1/timer_pb.js";
import { destinationOfJson } from "../../shared/src/callback-destination.js";
import { publishAnnouncement } from "../../shared/src/mesh-messages.js";
import { shardOf } from "../../shared/src/shard.js";
import { timerName } from "../../shared/src/timer-id.js";
import { State } from "../../shared/src/timer-model.js";
import { cancelSelection, retrySelection, SAMPLE_SIZE, type TimerSelection } from "./admin-requests.js";
import type { ChangeOutcome } from "./audit.js";
import {
  type BulkAction,
  type BulkChange,
  type BulkPreview,
  bulkChange,
  CANCEL,
  previewBulkChange,
  RETRY,
  type SummaryRow,
  timerState,
} from "./bulk-store.js";
import { type AdminDeps, type AdminHandlers, checked } from "./handler-support.js";

/** A timer as bulk changes and bulk operations report it. */
export function timerSummaryOf(r: SummaryRow): TimerSummary {
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

/** What RetryTimersResponse and CancelTimersResponse share. */
interface BulkResponse {
  count: number;
  more: boolean;
  sample: TimerSummary[];
  dryRun: boolean;
  matched?: bigint;
}

/** A dry run's answer: how many the change would touch (at most the limit) and the first of them. */
function previewOutcome(
  action: BulkAction,
  sel: TimerSelection,
  p: BulkPreview,
): ChangeOutcome<BulkResponse> {
  const count = Math.min(p.matched, sel.limit);
  return {
    response: {
      count,
      more: p.matched > sel.limit,
      sample: p.sample.map(timerSummaryOf),
      dryRun: true,
      matched: BigInt(p.matched),
    },
    result: { dry_run: true, [`would_${action.verb}`]: count, matched: p.matched },
    recorded: true,
  };
}

/** A change's answer: how many it touched, whether more match, and the first of them. */
function changeOutcome(action: BulkAction, r: BulkChange): ChangeOutcome<BulkResponse> {
  const sample = r.changed.slice(0, SAMPLE_SIZE);
  return {
    response: { count: r.changed.length, more: r.more, sample: sample.map(timerSummaryOf), dryRun: false },
    result: {
      [action.countKey]: r.changed.length,
      more: r.more,
      sample: sample.map((t) => ({ group_id: t.group_id, timer_id: t.timer_id })),
    },
    recorded: true,
  };
}

/** RetryTimers and CancelTimers. */
export function bulkHandlers(deps: AdminDeps): AdminHandlers<"retryTimers" | "cancelTimers"> {
  const { pool, auditor } = deps;

  /** Tells each retried timer's shard owner, so it fires now rather than at the next overdue scan. */
  const announce = (rows: SummaryRow[]) => {
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
          version: 0, // not read here: the owner claims whatever version is stored
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

  /** A single-timer retry names what is wrong with that timer, rather than retrying nothing. */
  const checkRetryable = async (groupId: string, timerId: string) => {
    const state = await timerState(pool, groupId, timerId, shardOf(groupId, timerId, deps.shardCount));
    if (state === undefined)
      throw new ConnectError(`timer ${timerName(groupId, timerId)} not found`, Code.NotFound);
    if (state !== State.Failed) {
      throw new ConnectError(
        `timer ${timerName(groupId, timerId)} is ${TimerState[state]}; only FAILED timers can be retried`,
        Code.FailedPrecondition,
      );
    }
  };

  return {
    async retryTimers(req, ctx) {
      return auditor.change(ctx, req, async (audit) => {
        const sel = checked(() => retrySelection(req));
        if (sel.single && sel.groupId !== null && sel.timerId !== null)
          await checkRetryable(sel.groupId, sel.timerId);
        if (req.dryRun) return previewOutcome(RETRY, sel, await previewBulkChange(pool, RETRY, sel, audit));
        const r = await bulkChange(pool, RETRY, sel, audit);
        announce(r.changed);
        return changeOutcome(RETRY, r);
      });
    },

    async cancelTimers(req, ctx) {
      return auditor.change(ctx, req, async (audit) => {
        const sel = checked(() => cancelSelection(req));
        if (req.dryRun) return previewOutcome(CANCEL, sel, await previewBulkChange(pool, CANCEL, sel, audit));
        return changeOutcome(CANCEL, await bulkChange(pool, CANCEL, sel, audit));
      });
    },
  };
}
