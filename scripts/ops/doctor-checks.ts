// The doctor's judgement, with no I/O: what each observation (a readiness answer, a metrics
// scrape, a row from Postgres) means, whether it is OK, worth a warning or a failure, and what
// the operator should do about it (an admin RPC, a runbook entry). doctor.ts gathers the
// observations, with a time limit on each, and prints what these functions return.

/** How a check came out. */
export type Status = "OK" | "WARN" | "FAIL";

/** One line of the doctor's report. */
export interface CheckResult {
  name: string;
  status: Status;
  /** What was found, in one line. */
  summary: string;
  /** Further lines: the shards, groups or services concerned. */
  details?: string[];
  /** What to do about it (absent when OK). */
  action?: string;
}

/** Thresholds, aligned with the alerts (infra/prometheus/alerts.yml) where one exists. */
export const LIMITS = {
  /** ShardLagHigh fires above 15 s; a few seconds is already unusual (OVERDUE_GRACE is 2 s). */
  lagWarnSeconds: 5,
  lagFailSeconds: 15,
  /** The SLA's on-time window: an overdue timer older than this already misses it. */
  overdueWarnSeconds: 30,
  /** DispatcherClockSkew fires above 1 s. */
  clockWarnSeconds: 1,
  /** DatabaseConnectionPoolExhaustion fires above 90 %. */
  poolWarnRatio: 0.9,
  /** Postgres connections in use against max_connections (less the superuser reserve). */
  postgresWarnRatio: 0.8,
  postgresFailRatio: 0.95,
} as const;

/** Runbook entry of an alert: its `### <AlertName>` heading in infra/README.md. */
export function runbook(alert: string): string {
  return `infra/README.md#${alert.toLowerCase()}`;
}

const ADMIN = 'grpcurl -plaintext -H "authorization: Bearer $TOKEN"';

/** A sample of the Prometheus text format. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a Prometheus text exposition (comments and malformed lines skipped). */
export function parsePrometheusText(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1]!] = l[2]!.replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    const value = m[4] === "+Inf" ? Infinity : m[4] === "-Inf" ? -Infinity : Number(m[4]);
    samples.push({ name: m[1]!, labels, value });
  }
  return samples;
}

/** The value of the first sample of `name`, undefined when there is none. */
export function sampleValue(samples: readonly Sample[], name: string): number | undefined {
  return samples.find((s) => s.name === name)?.value;
}

/** Which instance a scrape came from: target_info's service.instance.id (a dispatcher's DISPATCHER_ID). */
export function instanceOf(samples: readonly Sample[]): string | undefined {
  return samples.find((s) => s.name === "target_info")?.labels.service_instance_id;
}

/** What a service's /health/ready answered, or why it could not be asked. */
export type ReadinessProbe =
  | { status: number; body: { status?: string; checks?: Record<string, boolean>; optional?: string[] } }
  | { error: string };

/** The alert that covers a service being down. */
const DOWN_ALERT: Record<string, string> = {
  timer: "TimerServiceDown",
  admin: "AdminServiceDown",
  dispatcher: "DispatcherDown",
};

/** A service's readiness: ready (200), not ready (which checks fail), or not answering. */
export function judgeReadiness(
  service: "timer" | "admin" | "dispatcher",
  label: string,
  url: string,
  probe: ReadinessProbe,
): CheckResult {
  const name = `${label} ready`;
  const down = runbook(DOWN_ALERT[service]!);
  if ("error" in probe)
    return {
      name,
      status: "FAIL",
      summary: `${url}/health/ready does not answer: ${probe.error}`,
      action: `is the ${service} running and is this its HTTP port? Check its logs and restart it; runbook ${down}`,
    };
  const checks = probe.body.checks ?? {};
  const optional = new Set(probe.body.optional ?? []);
  const failing = Object.entries(checks)
    .filter(([, ok]) => !ok)
    .map(([c]) => (optional.has(c) ? `${c} (optional)` : c));
  const passing = Object.entries(checks)
    .filter(([, ok]) => ok)
    .map(([c]) => c);
  if (probe.status === 200)
    return failing.length === 0
      ? { name, status: "OK", summary: `${url} ready (${passing.join(", ") || "no checks"})` }
      : {
          name,
          status: "WARN",
          summary: `${url} ready, but ${failing.join(", ")} failing`,
          action:
            service === "timer"
              ? `announcements are skipped while NATS is away (dispatchers' polls find the timers): check NATS; runbook ${runbook("NatsDisconnected")}`
              : "check the failing dependency",
        };
  const what = probe.body.status === "stopping" ? "stopping" : `not ready: ${failing.join(", ") || "?"}`;
  return {
    name,
    status: "FAIL",
    summary: `${url} ${what}`,
    action: `fix what it depends on (${failing.join(", ") || "see its /health"}); its logs say why. Runbook ${down}`,
  };
}

/** The dispatchers Postgres has alive (unexpired leases) against those whose HTTP port was checked. */
export function judgeDispatcherCoverage(
  live: readonly string[],
  checked: readonly { url: string; id: string | undefined }[],
): CheckResult {
  const name = "dispatchers";
  if (live.length === 0)
    return {
      name,
      status: "FAIL",
      summary: "no dispatcher holds a live lease: nothing fires",
      action: `start dispatchers (kubectl get pods -l app=dispatcher; npm run dispatcher); runbook ${runbook("DispatcherDown")}`,
    };
  const seen = new Set(checked.map((c) => c.id).filter((id) => id !== undefined));
  const unchecked = live.filter((id) => !seen.has(id));
  if (unchecked.length === 0)
    return { name, status: "OK", summary: `${live.length} live (${live.join(", ")}), all checked` };
  return {
    name,
    status: "WARN",
    summary: `${live.length} live (${live.join(", ")}); not checked: ${unchecked.join(", ")}`,
    action:
      "pass each dispatcher's HTTP address with --dispatcher http://HOST:8081 (repeat the flag) to check it too",
  };
}

/** Postgres: reachable, its version, and connections in use against max_connections. */
export function judgePostgres(
  facts: { version: string; used: number; maxConnections: number; reserved: number } | { error: string },
): CheckResult {
  const name = "postgres";
  if ("error" in facts)
    return {
      name,
      status: "FAIL",
      summary: `unreachable: ${facts.error}`,
      action:
        "check DATABASE_URL, that Postgres runs and accepts connections (pg_isready); every service waits for it",
    };
  const usable = Math.max(1, facts.maxConnections - facts.reserved);
  const ratio = facts.used / usable;
  const summary = `Postgres ${facts.version}, ${facts.used} of ${usable} connections in use (${Math.round(ratio * 100)}%)`;
  if (ratio >= LIMITS.postgresWarnRatio)
    return {
      name,
      status: ratio >= LIMITS.postgresFailRatio ? "FAIL" : "WARN",
      summary,
      action:
        "new connections will be refused soon: lower DB_POOL_MAX × processes, find idle sessions (SELECT application_name, state, count(*) FROM pg_stat_activity GROUP BY 1, 2), or raise max_connections",
    };
  return { name, status: "OK", summary };
}

/** NATS: a connection and a round trip. */
export function judgeNats(url: string, facts: { rttMs: number } | { error: string }): CheckResult {
  const name = "nats";
  if ("error" in facts)
    return {
      name,
      status: "FAIL",
      summary: `${url}: ${facts.error}`,
      action: `dispatchers leave the mesh and announcements stop while NATS is away: check nats-server (its /healthz on the monitoring port) and NATS_URL/NATS_USER/NATS_PASSWORD; runbook ${runbook("NatsDisconnected")}`,
    };
  return { name, status: "OK", summary: `${url} connected, round trip ${facts.rttMs.toFixed(1)} ms` };
}

/** Unowned shards of one last owner (null: never owned): how many, and the first few. */
export interface UnownedShards {
  lastOwner: string | null;
  count: number;
  firstShards: number[];
}

/** Every shard has a live owner (an unexpired lease). */
export function judgeShardOwners(facts: {
  shardCount: number;
  owners: { owner: string; shards: number }[];
  unowned: UnownedShards[];
}): CheckResult {
  const name = "shard owners";
  const owned = facts.owners.map((o) => `${o.owner}: ${o.shards}`).join(", ");
  const unownedCount = facts.unowned.reduce((n, u) => n + u.count, 0);
  if (unownedCount === 0)
    return { name, status: "OK", summary: `all ${facts.shardCount} shards owned (${owned})` };
  return {
    name,
    status: "FAIL",
    summary: `${unownedCount} of ${facts.shardCount} shards have no live owner: their timers do not fire`,
    details: [
      ...facts.unowned.map(
        (u) =>
          `last owner ${u.lastOwner ?? "none"}: ${u.count} shard(s) (${u.firstShards.join(", ")}${u.count > u.firstShards.length ? ", …" : ""})`,
      ),
      ...(owned ? [`owned: ${owned}`] : []),
    ],
    action: `a dead owner's shards move after LEASE_TTL; if they stay unowned, are dispatchers running and ready? ${ADMIN} 127.0.0.1:50053 admin.v1.AdminService/ListDispatchers, then ${ADMIN} -d '{}' 127.0.0.1:50053 admin.v1.AdminService/RebalanceShards; runbook ${runbook("ShardsUnowned")}`,
  };
}

/** The oldest due timer of a shard (paused groups left out), as the lag query returns it. */
export interface ShardBacklog {
  shard: number;
  /** Live owner, null when the lease expired or was never taken. */
  owner: string | null;
  lagSeconds: number;
  groupId: string;
  timerId: string;
}

/** Shard lag: the worst shards, judged as ShardLagHigh judges them. */
export function judgeShardLag(backlogs: readonly ShardBacklog[]): CheckResult {
  const name = "shard lag";
  const sorted = [...backlogs].sort((a, b) => b.lagSeconds - a.lagSeconds);
  const worst = sorted[0];
  if (!worst || worst.lagSeconds <= LIMITS.lagWarnSeconds)
    return {
      name,
      status: "OK",
      summary: worst
        ? `max ${worst.lagSeconds.toFixed(1)} s (shard ${worst.shard}); ${backlogs.length} shard(s) with due timers`
        : "no shard has due timers waiting",
    };
  const lagging = sorted.filter((b) => b.lagSeconds > LIMITS.lagWarnSeconds);
  const byOwner = new Map<string, number>();
  for (const b of lagging) byOwner.set(b.owner ?? "none", (byOwner.get(b.owner ?? "none") ?? 0) + 1);
  return {
    name,
    status: worst.lagSeconds > LIMITS.lagFailSeconds ? "FAIL" : "WARN",
    summary: `${lagging.length} shard(s) lag more than ${LIMITS.lagWarnSeconds} s, worst ${worst.lagSeconds.toFixed(1)} s (shard ${worst.shard}, owner ${worst.owner ?? "none"})`,
    details: [`lagging shards by owner: ${[...byOwner].map(([o, n]) => `${o}: ${n}`).join(", ")}`],
    action: `is the owner alive and keeping up? ${ADMIN} -d '{"onlyLagging":true,"lagThreshold":"5s"}' 127.0.0.1:50053 admin.v1.AdminService/ListShards; drain a stuck owner with AdminService/DrainDispatcher; runbook ${runbook("ShardLagHigh")}`,
  };
}

/** The single oldest due timer of the mesh (paused groups left out). */
export function judgeOldestOverdue(oldest: ShardBacklog | undefined): CheckResult {
  const name = "oldest overdue timer";
  if (!oldest) return { name, status: "OK", summary: "none: every due timer has been claimed" };
  const summary = `${oldest.groupId}/${oldest.timerId} due ${oldest.lagSeconds.toFixed(1)} s ago (shard ${oldest.shard}, owner ${oldest.owner ?? "none"})`;
  if (oldest.lagSeconds <= LIMITS.overdueWarnSeconds) return { name, status: "OK", summary };
  return {
    name,
    status: "WARN",
    summary,
    action: `past the SLA's 30 s already; see why: ${ADMIN} -d '{"groupId":"${oldest.groupId}","timerId":"${oldest.timerId}"}' 127.0.0.1:50053 admin.v1.AdminService/ExplainTimer`,
  };
}

/** "+0.012 s", "-1.500 s"; under half a millisecond is "+0.000 s", never "-0.000 s". */
function signedSeconds(s: number): string {
  const v = Math.abs(s) < 0.0005 ? 0 : s;
  return `${v < 0 ? "-" : "+"}${Math.abs(v).toFixed(3)} s`;
}

/** Clock offsets against Postgres: this machine's, and each dispatcher's dispatcher_clock_offset_seconds. */
export function judgeClockOffsets(
  local: { offsetMs: number; uncertaintyMs: number } | { error: string },
  dispatchers: readonly { label: string; offsetSeconds: number | undefined }[],
): CheckResult {
  const name = "clock offset";
  const parts: string[] = [];
  const off: string[] = [];
  if ("error" in local) parts.push(`this machine: not measured (${local.error})`);
  else {
    const s = local.offsetMs / 1000;
    parts.push(`this machine ${signedSeconds(s)} (±${(local.uncertaintyMs / 1000).toFixed(3)})`);
    if (Math.abs(s) > LIMITS.clockWarnSeconds) off.push("this machine");
  }
  for (const d of dispatchers) {
    if (d.offsetSeconds === undefined) {
      parts.push(`${d.label}: not reported`);
      continue;
    }
    parts.push(`${d.label} ${signedSeconds(d.offsetSeconds)}`);
    if (Math.abs(d.offsetSeconds) > LIMITS.clockWarnSeconds) off.push(d.label);
  }
  const summary = `vs Postgres: ${parts.join(", ")}`;
  if (off.length === 0) return { name, status: "OK", summary };
  return {
    name,
    status: "WARN",
    summary,
    details: [`more than ${LIMITS.clockWarnSeconds} s off: ${off.join(", ")}`],
    action: `timers still fire on time (dispatchers follow Postgres's clock); fix time sync (chrony/NTP) on those hosts, or on the database server when all are off; runbook ${runbook("DispatcherClockSkew")}`,
  };
}

/** Each service's Postgres pool from its /metrics: active against max, and callers waiting. */
export function judgePoolUse(
  pools: readonly {
    label: string;
    active: number | undefined;
    max: number | undefined;
    waiting: number | undefined;
  }[],
): CheckResult {
  const name = "pool use";
  const parts: string[] = [];
  const busy: string[] = [];
  let queued = false;
  for (const p of pools) {
    if (p.active === undefined || p.max === undefined) {
      parts.push(`${p.label}: not reported`);
      continue;
    }
    const waiting = p.waiting ?? 0;
    parts.push(`${p.label} ${p.active}/${p.max}${waiting > 0 ? ` (${waiting} waiting)` : ""}`);
    if (p.active / Math.max(1, p.max) >= LIMITS.poolWarnRatio || waiting > 0) busy.push(p.label);
    queued ||= waiting > 0;
  }
  const summary = parts.length > 0 ? parts.join(", ") : "no service's metrics could be read";
  if (busy.length === 0) return { name, status: "OK", summary };
  return {
    name,
    status: "WARN",
    summary,
    details: [`pool (nearly) exhausted: ${busy.join(", ")}`],
    action: `slow queries hold connections (Database dashboard, database_query_duration_seconds by operation), or DB_POOL_MAX is too small; runbook ${runbook(queued ? "DatabaseConnectionPoolSaturated" : "DatabaseConnectionPoolExhaustion")}`,
  };
}

/** A paused group, with its due timers waiting for the resume. */
export interface PausedGroup {
  groupId: string;
  pausedAt: Date;
  pausedBy: string;
  reason: string;
  due: number;
}

/** Paused groups whose timers came due: they wait, on purpose, until someone resumes the group. */
export function judgePausedGroups(paused: readonly PausedGroup[], now: Date): CheckResult {
  const name = "paused groups";
  const waiting = paused.filter((p) => p.due > 0);
  if (waiting.length === 0)
    return {
      name,
      status: "OK",
      summary: paused.length === 0 ? "none paused" : `${paused.length} paused, none with due timers`,
    };
  return {
    name,
    status: "WARN",
    summary: `${waiting.length} paused group(s) have due timers waiting: ${waiting.map((p) => `${p.groupId} (${p.due})`).join(", ")}`,
    details: waiting.map(
      (p) =>
        `${p.groupId}: paused ${Math.round((now.getTime() - p.pausedAt.getTime()) / 60_000)} min ago by ${p.pausedBy}${p.reason ? ` ("${p.reason}")` : ""}, ${p.due} due`,
    ),
    action: `once the receiver is back: ${ADMIN} -d '{"groupId":"${waiting[0]!.groupId}"}' 127.0.0.1:50053 admin.v1.AdminService/ResumeGroup (they fire at once, oldest first); runbook ${runbook("PausedGroupHasDueTimers")}`,
  };
}

/** Timers that ended FAILED in the last hour, per group. */
export function judgeRecentFailures(failed: readonly { groupId: string; count: number }[]): CheckResult {
  const name = "failed timers (1 h)";
  const total = failed.reduce((n, f) => n + f.count, 0);
  if (total === 0) return { name, status: "OK", summary: "none in the last hour" };
  const first = failed[0]!.groupId;
  return {
    name,
    status: "WARN",
    summary: `${total} timer(s) ended FAILED in the last hour: ${failed.map((f) => `${f.groupId} (${f.count})`).join(", ")}`,
    action: `see why: ${ADMIN} -d '{"groupId":"${first}","pageSize":20}' 127.0.0.1:50053 admin.v1.AdminService/ListFailedTimers; once fixed, AdminService/RetryTimers (dryRun first); runbook ${runbook("TimerExecutionFailuresHigh")}`,
  };
}

/** A check that gave no answer in time. */
export function timedOut(name: string, ms: number): CheckResult {
  return {
    name,
    status: "FAIL",
    summary: `no answer within ${ms} ms`,
    action: "the service or database it asks is hanging: check it directly",
  };
}

/** A check that could not run because what it reads is unavailable. */
export function notChecked(name: string, why: string): CheckResult {
  return { name, status: "WARN", summary: `not checked: ${why}` };
}

/** Exit code: 1 when a check FAILed (or WARNed, with --strict), 0 otherwise. */
export function doctorExitCode(results: readonly CheckResult[], strict: boolean): number {
  const bad = results.some((r) => r.status === "FAIL" || (strict && r.status === "WARN"));
  return bad ? 1 : 0;
}

/** The report as text: one line per check, then what to do for those that are not OK. */
export function formatDoctorText(results: readonly CheckResult[], at: Date): string {
  const count = (s: Status) => results.filter((r) => r.status === s).length;
  const width = Math.max(...results.map((r) => r.name.length));
  const out = [
    `doctor ${at.toISOString()}: ${results.length} checks, ${count("OK")} OK, ${count("WARN")} WARN, ${count("FAIL")} FAIL`,
    "",
  ];
  for (const r of results) {
    out.push(`${r.status.padEnd(4)}  ${r.name.padEnd(width)}  ${r.summary}`);
    const indent = " ".repeat(width + 8);
    for (const d of r.details ?? []) out.push(`${indent}${d}`);
    if (r.action) out.push(`${indent}do: ${r.action}`);
  }
  return out.join("\n");
}
