import { pino, type Logger } from "pino";
import { logTraceFields } from "./telemetry/trace-context.js";

/** A pino JSON logger for one service; `service` is on every line. */
export function createLogger(service: string, level: string): Logger {
  return pino({
    level,
    base: { service, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    // Lines written inside a traced operation carry its trace_id and span_id.
    mixin: logTraceFields,
  });
}

export type { Logger };
