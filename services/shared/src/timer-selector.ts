// timer.v1.TimerSelector: checked (errors name the field, e.g. "selector.fire_before"),
// authorized against the caller's token, and turned into a parameterized WHERE clause over the
// timers table. Used by ListTimers and by the admin's bulk operations, so both select alike.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { mayUseGroup, type Principal } from "./auth.js";
import { type TimerSelector, TimerState } from "./gen/timer/v1/timer_pb.js";
import {
  formatLabelSelector,
  type LabelRequirement,
  LabelSelectorError,
  labelSelectorSql,
  parseLabelSelector,
  type SqlParams,
} from "./label-selector.js";
import { ID_PATTERN, SCHEDULE_ID_PATTERN } from "./timer-id.js";
import { timestampToMsFloor } from "./time.js";

/** A checked selector, ready to be turned into SQL (timerSelectionSql). */
export interface TimerSelection {
  /** Exactly this group, or null with groupPrefix. */
  groupId: string | null;
  /** From group_pattern: groups starting with this ("" for "*"); null with groupId. */
  groupPrefix: string | null;
  timerIdPrefix: string | null;
  /** Sorted, distinct; empty for every state. */
  states: number[];
  /** fire_at >= fireAfterMs */
  fireAfterMs: number | null;
  /** fire_at < fireBeforeMs */
  fireBeforeMs: number | null;
  labels: LabelRequirement[];
  scheduleId: string | null;
}

// Group patterns are a group id's characters with one "*" at the end, as in tokens (auth.ts).
const GROUP_PATTERN_RE = /^(?:[A-Za-z0-9][A-Za-z0-9._:-]{0,126})?\*$/;
// Timer ids include schedule firings' ("<schedule>@<instant>"), so a prefix may contain "@".
const TIMER_ID_PREFIX_RE = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;
/** Fire-time bounds before this are taken for seconds passed as a Timestamp by mistake. */
const EARLIEST_MS = Date.UTC(2000, 0, 1);

function invalid(field: string, reason: string, cause?: unknown): ConnectError {
  return new ConnectError(`${field} ${reason}`, Code.InvalidArgument, undefined, undefined, cause);
}

function boundMs(ts: Timestamp | undefined, field: string): number | null {
  if (!ts) return null;
  if (ts.nanos < 0 || ts.nanos > 999_999_999) throw invalid(field, "nanos must be in [0, 999999999]");
  const ms = timestampToMsFloor(ts);
  if (ms < EARLIEST_MS)
    throw invalid(field, "is before 2000-01-01; is it in seconds rather than a Timestamp?");
  return ms;
}

/**
 * Checks a selector; `field` names it in errors ("selector"). Requires group_id or
 * group_pattern (not both). Throws INVALID_ARGUMENT naming the field at fault.
 */
export function checkTimerSelector(sel: TimerSelector | undefined, field = "selector"): TimerSelection {
  if (!sel) throw invalid(field, "is required");
  if (sel.groupId !== "" && sel.groupPattern !== "")
    throw invalid(`${field}.group_pattern`, "cannot be combined with group_id: set one");
  if (sel.groupId === "" && sel.groupPattern === "")
    throw invalid(`${field}.group_id`, "is required (or group_pattern, with an admin token)");
  if (sel.groupId !== "" && !ID_PATTERN.test(sel.groupId))
    throw invalid(
      `${field}.group_id`,
      "must be 1-128 characters of [A-Za-z0-9._:-], starting with a letter or digit",
    );
  if (sel.groupPattern !== "" && !GROUP_PATTERN_RE.test(sel.groupPattern))
    throw invalid(
      `${field}.group_pattern`,
      'must be "*" or a group id prefix ending in "*", e.g. "orders-*"',
    );
  if (sel.timerIdPrefix !== "" && !TIMER_ID_PREFIX_RE.test(sel.timerIdPrefix))
    throw invalid(
      `${field}.timer_id_prefix`,
      "must be 1-128 characters of [A-Za-z0-9._:@-], starting with a letter or digit",
    );
  for (const s of sel.states) {
    if (!(s in TimerState) || s === TimerState.UNSPECIFIED)
      throw invalid(`${field}.states`, `has an unknown state ${s}`);
  }
  const fireAfterMs = boundMs(sel.fireAfter, `${field}.fire_after`);
  const fireBeforeMs = boundMs(sel.fireBefore, `${field}.fire_before`);
  if (fireAfterMs !== null && fireBeforeMs !== null && fireAfterMs >= fireBeforeMs)
    throw invalid(`${field}.fire_before`, "must be later than fire_after");
  let labels: LabelRequirement[];
  try {
    labels = parseLabelSelector(sel.labelSelector);
  } catch (err) {
    if (err instanceof LabelSelectorError) throw invalid(`${field}.label_selector`, err.message, err);
    throw err;
  }
  if (sel.scheduleId !== "" && !SCHEDULE_ID_PATTERN.test(sel.scheduleId))
    throw invalid(
      `${field}.schedule_id`,
      "must be 1-100 characters of [A-Za-z0-9._:-], starting with a letter or digit",
    );
  return {
    groupId: sel.groupId || null,
    groupPrefix: sel.groupPattern === "" ? null : sel.groupPattern.slice(0, -1),
    timerIdPrefix: sel.timerIdPrefix || null,
    states: [...new Set<number>(sel.states)].sort((a, b) => a - b),
    fireAfterMs,
    fireBeforeMs,
    labels,
    scheduleId: sel.scheduleId || null,
  };
}

/**
 * Throws PERMISSION_DENIED unless the caller may act on what the selection covers: a group
 * token only on one of its groups (group_id); group_pattern only with an admin token.
 */
export function authorizeSelection(p: Principal, sel: TimerSelection, field = "selector"): void {
  if (sel.groupId === null) {
    if (!p.admin)
      throw new ConnectError(
        `token "${p.name}" may not use ${field}.group_pattern: it needs an admin token (name one group in ${field}.group_id)`,
        Code.PermissionDenied,
      );
    return;
  }
  if (!mayUseGroup(p, sel.groupId))
    throw new ConnectError(`token "${p.name}" may not use group "${sel.groupId}"`, Code.PermissionDenied);
}

/** `value` as a LIKE pattern matching itself literally (with ESCAPE '\'). */
export function likeLiteral(value: string): string {
  return value.replace(/[\\%_]/g, (c) => `\\${c}`);
}

/**
 * SQL true for the timers the selection matches (`alias` prefixes the columns, e.g. "t."),
 * every value pushed onto `params`. The group comes first so that an index led by group_id
 * (or the primary key's group_id within a shard) can be used.
 */
export function timerSelectionSql(sel: TimerSelection, params: SqlParams, alias = ""): string {
  const c = (name: string) => `${alias}${name}`;
  const terms: string[] = [];
  if (sel.groupId !== null) terms.push(`${c("group_id")} = ${params.add(sel.groupId, "text")}`);
  else if (sel.groupPrefix)
    terms.push(`${c("group_id")} LIKE ${params.add(`${likeLiteral(sel.groupPrefix)}%`, "text")} ESCAPE '\\'`);
  if (sel.timerIdPrefix !== null)
    terms.push(
      `${c("timer_id")} LIKE ${params.add(`${likeLiteral(sel.timerIdPrefix)}%`, "text")} ESCAPE '\\'`,
    );
  if (sel.states.length > 0) terms.push(`${c("state")} = ANY(${params.add(sel.states, "smallint[]")})`);
  if (sel.fireAfterMs !== null)
    terms.push(`${c("fire_at")} >= ${params.add(new Date(sel.fireAfterMs), "timestamptz")}`);
  if (sel.fireBeforeMs !== null)
    terms.push(`${c("fire_at")} < ${params.add(new Date(sel.fireBeforeMs), "timestamptz")}`);
  if (sel.labels.length > 0) terms.push(labelSelectorSql(sel.labels, params, c("labels")));
  if (sel.scheduleId !== null) terms.push(`${c("schedule_id")} = ${params.add(sel.scheduleId, "text")}`);
  return terms.length === 0 ? "true" : terms.join(" AND ");
}

/** The selection as one canonical string (page tokens are bound to it). */
export function selectionKey(sel: TimerSelection): string {
  return JSON.stringify([
    sel.groupId,
    sel.groupPrefix,
    sel.timerIdPrefix,
    sel.states,
    sel.fireAfterMs,
    sel.fireBeforeMs,
    formatLabelSelector(sel.labels),
    sel.scheduleId,
  ]);
}

/**
 * The selection of a ListTimers request: `groupId` (the request's) and the selector's group_id
 * must agree, one of them set; group_pattern is refused (ListTimers lists one group).
 */
export function listSelection(groupId: string, sel: TimerSelector): TimerSelection {
  if (sel.groupPattern !== "")
    throw invalid(
      "selector.group_pattern",
      "is for AdminService bulk operations only; ListTimers lists one group",
    );
  if (groupId !== "" && sel.groupId !== "" && sel.groupId !== groupId)
    throw invalid("selector.group_id", `must equal group_id ("${groupId}") or be empty`);
  return checkTimerSelector({ ...sel, groupId: groupId || sel.groupId });
}
