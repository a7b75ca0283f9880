// A StartBulkOperationRequest checked and turned into what the store walks and applies: the
// selection, the states the action moves timers from, the shift resolved to numbers, the batch
// size. No I/O; errors are INVALID_ARGUMENT naming the field.
import { Code, ConnectError } from "@connectrpc/connect";
import type { StartBulkOperationRequest } from "../../shared/src/gen/admin/v1/admin_pb.js";
import { TimerState } from "../../shared/src/gen/timer/v1/timer_pb.js";
import { State } from "../../shared/src/timer-model.js";
import { durationToMs, timestampToMsCeil } from "../../shared/src/time.js";
import { checkTimerSelector, type TimerSelection } from "../../shared/src/timer-selector.js";

/** The five actions; the stored bulk_operations.action. */
export type BulkActionName = "cancel" | "retry" | "shift" | "pause" | "resume";

/** A shift resolved: every timer to one time, or by a number of milliseconds. */
export type ShiftPlan = { toMs: number; byMs: null } | { toMs: null; byMs: number };

/** What an operation does, checked. */
export interface BulkPlan {
  action: BulkActionName;
  selection: TimerSelection;
  /** States the action moves timers from, narrowed by the selector's states. */
  fromStates: number[];
  /** Set for a shift. */
  shift: ShiftPlan | null;
  batchSize: number;
}

/** The states each action changes (admin.proto's comments on BulkCancel, BulkRetry, ...). */
export const FROM_STATES: Readonly<Record<BulkActionName, readonly number[]>> = {
  cancel: [State.Scheduled, State.Paused],
  retry: [State.Failed, State.Expired],
  shift: [State.Scheduled, State.Paused],
  pause: [State.Scheduled],
  resume: [State.Paused],
};

export const DEFAULT_BATCH_SIZE = 500;
export const MAX_BATCH_SIZE = 10_000;
/** Largest shift, either way, and how far ahead `to` may be: a year and a day. */
export const MAX_SHIFT_MS = 366 * 86_400_000;
/** Fire times before this are taken for seconds passed as a Timestamp by mistake. */
const EARLIEST_MS = Date.UTC(2000, 0, 1);

function invalid(field: string, reason: string): ConnectError {
  return new ConnectError(`${field} ${reason}`, Code.InvalidArgument);
}

const stateNames = (states: readonly number[]) => states.map((s) => TimerState[s]).join(" and ");

function shiftOf(req: StartBulkOperationRequest, nowMs: number): ShiftPlan | null {
  if (req.action.case !== "shift") return null;
  const s = req.action.value.shift;
  switch (s.case) {
    case "by": {
      const d = s.value;
      if (
        d.nanos < -999_999_999 ||
        d.nanos > 999_999_999 ||
        (d.seconds > 0n && d.nanos < 0) ||
        (d.seconds < 0n && d.nanos > 0)
      )
        throw invalid("shift.by", "is not a valid Duration");
      const byMs = Math.round(durationToMs(d));
      if (byMs === 0) throw invalid("shift.by", "must not be zero");
      if (Math.abs(byMs) > MAX_SHIFT_MS) throw invalid("shift.by", "must be at most 366 days either way");
      return { toMs: null, byMs };
    }
    case "to": {
      const ts = s.value;
      if (ts.nanos < 0 || ts.nanos > 999_999_999)
        throw invalid("shift.to", "nanos must be in [0, 999999999]");
      const toMs = timestampToMsCeil(ts);
      if (toMs < EARLIEST_MS)
        throw invalid("shift.to", "is before 2000-01-01; is it in seconds rather than a Timestamp?");
      if (toMs - nowMs > MAX_SHIFT_MS) throw invalid("shift.to", "must be at most 366 days from now");
      return { toMs, byMs: null };
    }
    default:
      throw invalid("shift", "needs by or to");
  }
}

/** Checks a StartBulkOperationRequest (`nowMs` bounds a shift's `to`). */
export function bulkPlanOf(req: StartBulkOperationRequest, nowMs: number): BulkPlan {
  const selection = checkTimerSelector(req.selector, "selector");
  if (req.action.case === undefined)
    throw invalid("action", "is required: one of cancel, retry, shift, pause, resume");
  const action: BulkActionName = req.action.case;
  const from = FROM_STATES[action];
  const fromStates =
    selection.states.length === 0 ? [...from] : from.filter((s) => selection.states.includes(s));
  if (fromStates.length === 0)
    throw invalid("selector.states", `leaves nothing to ${action}: it applies to ${stateNames(from)} timers`);
  if (
    req.batchSize !== 0 &&
    (!Number.isInteger(req.batchSize) || req.batchSize < 1 || req.batchSize > MAX_BATCH_SIZE)
  )
    throw invalid(
      "batch_size",
      `must be between 1 and ${MAX_BATCH_SIZE} (0 for ${DEFAULT_BATCH_SIZE}), got ${req.batchSize}`,
    );
  if (req.reason.length > 1000) throw invalid("reason", "is over 1000 characters");
  return {
    action,
    selection,
    fromStates,
    shift: shiftOf(req, nowMs),
    batchSize: req.batchSize || DEFAULT_BATCH_SIZE,
  };
}
