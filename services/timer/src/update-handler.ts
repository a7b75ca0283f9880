// timer.v1.TimerService/UpdateTimer: validate (update-timer.ts), apply with one conditional
// UPDATE (update-store.ts), and announce the new due time and version to the shard's owner,
// so a dispatcher holding the old time in memory drops it at once instead of at its claim.
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { authorizeGroup } from "../../shared/src/auth.js";
import { destinationOfJson } from "../../shared/src/callback-destination.js";
import {
  TimerState,
  UpdateTimerResponseSchema,
  type UpdateTimerRequest,
  type UpdateTimerResponse,
} from "../../shared/src/gen/timer/v1/timer_pb.js";
import { shardOf } from "../../shared/src/shard.js";
import { timerName } from "../../shared/src/timer-id.js";
import { rowToTimer, State } from "../../shared/src/timer-model.js";
import { announceTimers } from "./announce.js";
import type { TimerDeps } from "./handlers.js";
import { updateTimer } from "./update-store.js";
import { validateUpdate, type TimerPatch } from "./update-timer.js";
import { ValidationError } from "./validation.js";

// Below the 400 days from now that receivers accept in an announcement (mesh-messages.ts).
const MOVED_AWAY_ANNOUNCE_MS = 300 * 86_400_000;

/** Handles one UpdateTimer call. */
export async function updateTimerHandler(
  deps: Pick<TimerDeps, "pool" | "config" | "nats" | "tracer" | "log">,
  req: UpdateTimerRequest,
  ctx: HandlerContext,
): Promise<UpdateTimerResponse> {
  // An empty group_id is left to validation, which names the field.
  if (req.groupId !== "") authorizeGroup(ctx, req.groupId);
  let patch: TimerPatch;
  try {
    patch = validateUpdate(req, deps.config.limits, Date.now());
  } catch (err) {
    if (err instanceof ValidationError)
      throw new ConnectError(err.message, Code.InvalidArgument, undefined, undefined, err);
    throw err;
  }
  const shard = shardOf(patch.groupId, patch.timerId, deps.config.shardCount);
  const outcome = await updateTimer(deps.pool, patch, shard);
  const name = timerName(patch.groupId, patch.timerId);
  if (!outcome.updated) {
    switch (outcome.reason) {
      case "not_found":
        throw new ConnectError(`timer ${name} not found`, Code.NotFound);
      case "not_updatable":
        throw new ConnectError(
          `timer ${name} is ${TimerState[outcome.row.state]}; only a SCHEDULED or PAUSED timer can be updated`,
          Code.FailedPrecondition,
        );
      case "stale_version":
        throw new ConnectError(
          `timer ${name} is at version ${outcome.row.version}, not the expected ${patch.expectedVersion}; read it again and retry`,
          Code.Aborted,
        );
      case "contended":
        throw new ConnectError(`timer ${name} changed while it was being updated; retry`, Code.Aborted);
    }
  }
  const row = outcome.row;
  // A change of a scheduled timer due soon is announced: the owner may hold the previous
  // version (which its claim now refuses) and learns the new one here. A fire time moved far
  // out is announced too, so an owner holding it drops it (a due time beyond its lookahead);
  // the bound keeps the message within what receivers accept as a sane time. A paused timer
  // is not claimed anyway.
  const dueMs = row.next_attempt_at.getTime();
  const announce =
    dueMs - Date.now() <= deps.config.announceWindowMs ||
    (patch.fireAtMs !== undefined && dueMs - Date.now() <= MOVED_AWAY_ANNOUNCE_MS);
  if (row.state === State.Scheduled && announce) {
    announceTimers(deps, [
      {
        groupId: row.group_id,
        timerId: row.timer_id,
        shard: row.shard,
        dueMs,
        destination: destinationOfJson(row.callback),
        version: Number(row.version),
      },
    ]);
  }
  return create(UpdateTimerResponseSchema, { timer: rowToTimer(row) });
}
