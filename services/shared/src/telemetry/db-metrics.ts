// Postgres telemetry by wrapping the pool: a database_query_duration_seconds histogram per
// named operation, a span per query when tracing is on (DB semantic conventions, SQL text
// without values), and pool gauges. Queries name themselves with a leading "-- name" comment;
// otherwise the first SQL keyword is the operation.
import type pg from "pg";
import { SpanKind, SpanStatusCode, trace, type Meter, type Tracer } from "@opentelemetry/api";
import { secondsSince } from "../time.js";
import { histogram, observableGauge } from "./instruments.js";

const NAME_RE = /^\s*--\s*([a-z_][a-z0-9_]*)/i;
const KEYWORD_RE = /^\s*(?:--[^\n]*\n\s*)*([a-z]+)/i;

/** The operation label of a SQL statement. */
export function operationOf(sql: string): string {
  return (NAME_RE.exec(sql)?.[1] ?? KEYWORD_RE.exec(sql)?.[1] ?? "query").toLowerCase();
}

/** Instruments `pool` in place; every pool.query is timed and (with tracing) traced. */
export function instrumentPool(
  pool: pg.Pool,
  meter: Meter,
  tracer: Tracer,
  tracing: boolean,
  maxConnections: number,
): void {
  const duration = histogram(meter, "database_query_duration_seconds");
  observableGauge(meter, "database_connections_active").addCallback((r) =>
    r.observe(pool.totalCount - pool.idleCount),
  );
  observableGauge(meter, "database_connections_idle").addCallback((r) => r.observe(pool.idleCount));
  observableGauge(meter, "database_connections_max").addCallback((r) => r.observe(maxConnections));
  // Active at max only says the pool is full; callers waiting says it is too small (or a query hangs).
  observableGauge(meter, "database_connections_waiting").addCallback((r) => r.observe(pool.waitingCount));

  const original = pool.query.bind(pool) as (...args: unknown[]) => Promise<unknown>;
  const wrapped = async (...args: unknown[]): Promise<unknown> => {
    const sql = typeof args[0] === "string" ? args[0] : String((args[0] as { text?: string })?.text ?? "");
    const operation = operationOf(sql);
    const start = performance.now();
    const timed = async (): Promise<unknown> => {
      let ok = false;
      try {
        const res = await original(...args);
        ok = true;
        return res;
      } finally {
        duration.record(secondsSince(start), ok ? { operation } : { operation, error: "true" });
      }
    };
    if (!tracing || !trace.getActiveSpan()) return timed();
    return tracer.startActiveSpan(
      `${operation} postgresql`,
      {
        kind: SpanKind.CLIENT,
        attributes: {
          "db.system.name": "postgresql",
          "db.system": "postgresql",
          "db.operation.name": operation,
          "db.query.text": sql,
        },
      },
      async (span) => {
        try {
          return await timed();
        } catch (err) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
          throw err;
        } finally {
          span.end();
        }
      },
    );
  };
  (pool as unknown as { query: typeof wrapped }).query = wrapped;
}
