// Works through bulk operations; one runner in every admin process. It takes a running
// operation nobody works on (a new one, or one whose worker's lease expired: that process
// stopped or was killed), runs its batches one after another (each renews the lease), and
// after each batch announces the timers it made due soon to their shards' owners. Several admin
// processes share the work; an operation is worked on by one at a time (operation-store.ts).
import { randomUUID } from "node:crypto";
import { fromJson } from "@bufbuild/protobuf";
import type pg from "pg";
import { destinationOfJson } from "../../shared/src/callback-destination.js";
import { StartBulkOperationRequestSchema } from "../../shared/src/gen/admin/v1/admin_pb.js";
import type { Logger } from "../../shared/src/logger.js";
import {
  type Announcement,
  MAX_DESTINATION_CHARS,
  publishAnnouncements,
} from "../../shared/src/mesh-messages.js";
import type { NatsLink } from "../../shared/src/nats.js";
import { State } from "../../shared/src/timer-model.js";
import { type BulkPlan, bulkPlanOf } from "./bulk-operation-plan.js";
import {
  type ChangedTimer,
  failOperation,
  type OperationRow,
  releaseOperations,
  runBatch,
  takeOperation,
} from "./operation-store.js";

/** How the runner paces itself. */
export interface RunnerSettings {
  /** BULK_OPERATION_LEASE: how long a worker holds an operation without finishing a batch. */
  leaseMs: number;
  /** BULK_OPERATION_POLL: how often an idle runner looks for operations to take over. */
  pollMs: number;
}

/** Timers due within this are announced after a batch; later ones are found by their owners' loads. */
const ANNOUNCE_WITHIN_MS = 60_000;
/** Consecutive failed batches after which an operation is marked FAILED. */
const MAX_BATCH_FAILURES = 5;

/** The plan of a stored operation: its request checked as when it started. */
export function planOfStored(op: OperationRow): BulkPlan {
  const req = fromJson(StartBulkOperationRequestSchema, op.request);
  return bulkPlanOf(req, op.create_time.getTime());
}

/** Runs bulk operations in this process until stopped. */
export class OperationRunner {
  /** This process as a worker in bulk_operations.worker. */
  readonly worker = `admin-${process.pid}-${randomUUID().slice(0, 8)}`;
  private stopped = false;
  /** Set by wake(): look again before idling (an operation may have been started meanwhile). */
  private woken = false;
  private wakeUp: (() => void) | undefined;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly pool: pg.Pool,
    private readonly nats: NatsLink,
    private readonly log: Logger,
    private readonly settings: RunnerSettings,
  ) {}

  /** Starts the loop. */
  start(): void {
    this.loop ??= this.run();
  }

  /** Looks for work now (an operation was just started here). */
  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  /** Stops after the batch in flight and hands this worker's operations back to any process. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.loop;
    await releaseOperations(this.pool, this.worker).catch((err: unknown) =>
      this.log.warn(
        { err },
        "could not release bulk operations; another admin takes them when their lease expires",
      ),
    );
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      // Cleared before looking: a wake() during the look (whose query may not see the new
      // operation yet) makes the loop look once more instead of idling.
      this.woken = false;
      let op: OperationRow | undefined;
      try {
        op = await takeOperation(this.pool, this.worker, this.settings.leaseMs);
      } catch (err) {
        this.log.warn({ err }, "could not look for bulk operations");
      }
      if (op) await this.work(op);
      else await this.idle();
    }
  }

  private idle(): Promise<void> {
    if (this.woken || this.stopped) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.wakeUp = undefined;
        resolve();
      };
      const t = setTimeout(done, this.settings.pollMs);
      this.wakeUp = done;
    });
  }

  private async work(op: OperationRow): Promise<void> {
    const log = this.log.child({ operation_id: op.id, action: op.action });
    let plan: BulkPlan;
    try {
      plan = planOfStored(op);
    } catch (err) {
      log.error({ err }, "a stored bulk operation no longer checks out; marking it FAILED");
      await failOperation(this.pool, op.id, this.worker, "the stored request could not be read").catch(
        (e: unknown) => log.error({ err: e }, "could not mark the bulk operation FAILED"),
      );
      return;
    }
    log.info({ worker: this.worker }, "working on bulk operation");
    let failures = 0;
    while (!this.stopped) {
      try {
        const out = await runBatch(this.pool, op.id, plan, this.worker, this.settings.leaseMs);
        failures = 0;
        if (out.kind === "lost") {
          log.info("bulk operation taken over or ended elsewhere; leaving it");
          return;
        }
        this.announce(out.changed, log);
        if (out.kind === "finished") {
          log.info({ state: out.state }, "bulk operation finished");
          return;
        }
      } catch (err) {
        failures++;
        log.warn({ err, failures }, "a bulk operation batch failed; it is retried");
        if (failures >= MAX_BATCH_FAILURES) {
          const message = err instanceof Error ? err.message : String(err);
          await failOperation(
            this.pool,
            op.id,
            this.worker,
            `batch failed ${failures} times: ${message}`,
          ).catch((e: unknown) => log.error({ err: e }, "could not mark the bulk operation FAILED"));
          return;
        }
        await new Promise((r) => setTimeout(r, Math.min(this.settings.pollMs, 1000) * failures));
      }
    }
  }

  /** Tells shard owners about changed timers now due soon (shift, resume, retry). */
  private announce(changed: ChangedTimer[], log: Logger): void {
    const nc = this.nats.ifConnected();
    if (!nc) return; // their owners' loads find them
    const soon = Date.now() + ANNOUNCE_WITHIN_MS;
    const byShard = new Map<number, Announcement[]>();
    for (const t of changed) {
      if (t.state !== State.Scheduled || t.next_attempt_at.getTime() > soon) continue;
      const destination = destinationOfJson(t.callback);
      if (destination.length > MAX_DESTINATION_CHARS) continue;
      const a: Announcement = {
        groupId: t.group_id,
        timerId: t.timer_id,
        shard: t.shard,
        dueMs: t.next_attempt_at.getTime(),
        destination,
        version: Number(t.version),
      };
      const list = byShard.get(t.shard);
      if (list) list.push(a);
      else byShard.set(t.shard, [a]);
    }
    try {
      for (const [shard, list] of byShard) publishAnnouncements(nc, shard, list);
    } catch (err) {
      log.warn(
        { err },
        "could not announce timers changed by a bulk operation; their owners' loads find them",
      );
    }
  }
}
