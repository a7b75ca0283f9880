// The purge part of the AdminService: PurgeTimers deletes finished timers older than a retention
// in batches (purge-store.ts), each its own short transaction, so a large purge neither holds
// locks for long nor loses what it did when it stops midway. The dispatchers do the same on their
// own (RETENTION_* settings, retention-loop.ts); PurgeTimers is for a shorter retention now.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { PurgeTimersResponseSchema } from "../../shared/src/gen/admin/v1/admin_pb.js";
import { grpcCodeNameOf } from "../../shared/src/grpc-code-name.js";
import { cutoffBefore } from "../../shared/src/retention.js";
import { purgeSettings } from "./admin-requests.js";
import { markRecorded } from "./audit.js";
import type { AuditInfo } from "./audit-store.js";
import { type AdminDeps, type AdminHandlers, checked } from "./handler-support.js";
import { endPurgeAudit, previewPurge, purgeBatch } from "./purge-store.js";

/** What a purge deleted, in how many batches. */
interface PurgeTotals {
  timers: number;
  attempts: number;
  batches: number;
}

/**
 * Runs purge batches until one comes back short or the caller goes away (CANCELED). When it
 * stops on an error after a batch committed, the purge's audit event says so and the error is
 * marked as recorded, so the Auditor does not record the call a second time.
 */
async function purgeInBatches(
  deps: AdminDeps,
  cutoff: string,
  batchSize: number,
  audit: AuditInfo,
  signal: AbortSignal,
): Promise<PurgeTotals> {
  let auditId: string | null = null;
  const totals: PurgeTotals = { timers: 0, attempts: 0, batches: 0 };
  try {
    for (;;) {
      // One short transaction per batch; a finished timer locked by someone else is skipped.
      const b = await purgeBatch(deps.pool, cutoff, batchSize, auditId, audit);
      auditId = b.auditId;
      totals.batches++;
      totals.timers += b.timers;
      totals.attempts += b.attempts;
      if (b.timers < batchSize) return totals;
      if (signal.aborted) {
        throw new ConnectError(
          `purge stopped by the caller after ${totals.batches} batches (${totals.timers} timers deleted)`,
          Code.Canceled,
        );
      }
    }
  } catch (err) {
    if (auditId !== null) {
      const code = grpcCodeNameOf(err);
      const id = auditId;
      await endPurgeAudit(deps.pool, id, code, {
        stopped_after_batches: totals.batches,
        error: err instanceof ConnectError ? err.rawMessage : "internal error",
      }).catch((e: unknown) =>
        deps.log.error({ err: e, audit_id: id }, "could not mark the purge's audit event"),
      );
      markRecorded(err);
    }
    throw err;
  }
}

/** PurgeTimers. */
export function purgeHandlers(deps: AdminDeps): AdminHandlers<"purgeTimers"> {
  return {
    async purgeTimers(req, ctx) {
      return deps.auditor.change<MessageInitShape<typeof PurgeTimersResponseSchema>>(
        ctx,
        req,
        async (audit) => {
          const { retentionMs, batchSize } = checked(() => purgeSettings(req));
          const { cutoff, exact } = await cutoffBefore(deps.pool, retentionMs);
          if (req.dryRun) {
            const p = await previewPurge(deps.pool, exact, audit);
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
          const done = await purgeInBatches(deps, exact, batchSize, audit, ctx.signal);
          return {
            response: {
              deletedTimers: BigInt(done.timers),
              deletedAttempts: BigInt(done.attempts),
              batches: done.batches,
              cutoffTime: timestampFromDate(cutoff),
              dryRun: false,
            },
            result: { deleted_timers: done.timers, deleted_attempts: done.attempts, batches: done.batches },
            recorded: true,
          };
        },
      );
    },
  };
}
