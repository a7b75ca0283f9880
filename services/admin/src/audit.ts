// The audit trail of operator changes. A change in Postgres records its own event in the same
// statement (audit-store.ts); changes elsewhere (drain, rebalance) and calls that failed are
// recorded here after the fact. Every event is also logged.
import { type Message, toJson } from "@bufbuild/protobuf";
import { ConnectError, type HandlerContext } from "@connectrpc/connect";
import { trace } from "@opentelemetry/api";
import type pg from "pg";
import { callerOf } from "../../shared/src/auth.js";
import { grpcCodeNameOf } from "../../shared/src/grpc-code-name.js";
import type { Logger } from "../../shared/src/logger.js";
import { type AuditInfo, type AuditResult, recordAudit } from "./audit-store.js";

/** What a change reports back: the response, the result summary, and whether the store already recorded it. */
export interface ChangeOutcome<T> {
  response: T;
  result: AuditResult;
  /** True when the event was written with the change itself. */
  recorded: boolean;
}

/** Errors whose audit event was already written (a purge stopped midway updates its own). */
const recordedErrors = new WeakSet<object>();

/** Marks an error as already recorded in the audit log. */
export function markRecorded<E>(err: E): E {
  if (typeof err === "object" && err !== null) recordedErrors.add(err);
  return err;
}

/** Whether the error's audit event was already written (see markRecorded). */
function isRecorded(err: unknown): boolean {
  return typeof err === "object" && err !== null && recordedErrors.has(err);
}

/** The trace of the call: ours when tracing, else the caller's traceparent. */
function traceIdOf(ctx: HandlerContext): string | null {
  const sc = trace.getActiveSpan()?.spanContext();
  if (sc && trace.isSpanContextValid(sc)) return sc.traceId;
  const m = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(
    ctx.requestHeader.get("traceparent") ?? "",
  );
  return m ? m[1]! : null;
}

/** Writes and logs audit events for the admin's changing calls. */
export class Auditor {
  constructor(
    private readonly pool: pg.Pool,
    private readonly log: Logger,
  ) {}

  /** Who is making this call, what it is, and with which arguments. */
  infoOf(ctx: HandlerContext, req: Message): AuditInfo {
    return {
      actor: callerOf(ctx).name,
      action: `${ctx.service.typeName}/${ctx.method.name}`,
      arguments: toJson(ctx.method.input, req),
      traceId: traceIdOf(ctx),
    };
  }

  /**
   * Runs a changing call and makes sure it is in the audit log: recorded by the change itself,
   * or here (success outside Postgres, or failure with its code and message).
   */
  async change<T>(
    ctx: HandlerContext,
    req: Message,
    run: (audit: AuditInfo) => Promise<ChangeOutcome<T>>,
  ): Promise<T> {
    const audit = this.infoOf(ctx, req);
    const dryRun = "dryRun" in req && req.dryRun === true;
    try {
      const out = await run(audit);
      if (!out.recorded) await recordAudit(this.pool, audit, "OK", out.result);
      this.log.info(
        { audit: { ...audit, dry_run: dryRun, outcome: "OK", result: out.result } },
        `audit: ${audit.action} by ${audit.actor}`,
      );
      return out.response;
    } catch (err) {
      const code = grpcCodeNameOf(err);
      const message = err instanceof ConnectError ? err.rawMessage : "internal error";
      if (!isRecorded(err)) {
        await recordAudit(this.pool, audit, code, { error: message }).catch((e: unknown) =>
          this.log.error({ err: e, audit }, "could not record a failed admin call in the audit log"),
        );
      }
      this.log.warn(
        { audit: { ...audit, dry_run: dryRun, outcome: code, result: { error: message } } },
        `audit: ${audit.action} by ${audit.actor} failed`,
      );
      throw err;
    }
  }
}
