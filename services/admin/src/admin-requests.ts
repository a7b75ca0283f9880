// Admin requests checked and turned into what the store needs: selections of timers, purge
// settings, page sizes and page tokens. No I/O; a RequestError names the field at fault.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { decodePageToken, encodePageToken, PAGE_TOKEN_REFUSED } from "../../shared/src/page-token.js";
import { durationToMs, timestampToMsFloor } from "../../shared/src/time.js";
import type {
  CancelTimersRequest,
  PurgeTimersRequest,
  RetryTimersRequest,
} from "../../shared/src/gen/admin/v1/admin_pb.js";

/** A request the admin cannot act on; the message names the field. */
export class RequestError extends Error {
  override name = "RequestError";
}

/** Most timers a bulk call changes, unless the request asks for fewer. */
export const DEFAULT_BULK_LIMIT = 1000;
export const MAX_BULK_LIMIT = 10_000;
/** Timers a bulk call shows by name. */
export const SAMPLE_SIZE = 20;
export const DEFAULT_PURGE_BATCH = 1000;
export const MAX_PURGE_BATCH = 10_000;

/** Which timers a bulk retry or cancel touches. */
export interface TimerSelection {
  groupId: string | null;
  timerId: string | null;
  /** fire_at >= fireAfter */
  fireAfter: Date | null;
  /** fire_at < fireBefore */
  fireBefore: Date | null;
  limit: number;
}

function tsDate(ts: Timestamp | undefined): Date | null {
  return ts ? new Date(timestampToMsFloor(ts)) : null;
}

/** A 1..max limit from a request field where 0 means the default. */
export function boundedLimit(value: number, field: string, fallback: number, max: number): number {
  if (value === 0) return fallback;
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new RequestError(`${field} must be between 1 and ${max} (0 for ${fallback}), got ${value}`);
  }
  return value;
}

function range(
  after: Timestamp | undefined,
  before: Timestamp | undefined,
): { fireAfter: Date | null; fireBefore: Date | null } {
  const fireAfter = tsDate(after);
  const fireBefore = tsDate(before);
  if (fireAfter && fireBefore && fireAfter.getTime() >= fireBefore.getTime()) {
    throw new RequestError("fire_after must be earlier than fire_before");
  }
  return { fireAfter, fireBefore };
}

/**
 * The failed timers a RetryTimers request selects: one timer (group_id + timer_id), a group's
 * (group_id), or a fire_at range (fire_after/fire_before, optionally within a group).
 */
export function retrySelection(req: RetryTimersRequest): TimerSelection & { single: boolean } {
  if (req.timerId !== "" && req.groupId === "") throw new RequestError("timer_id needs group_id");
  const r = range(req.fireAfter, req.fireBefore);
  if (req.groupId === "" && !r.fireAfter && !r.fireBefore) {
    throw new RequestError(
      "select the failed timers to retry: group_id (and timer_id for one timer), or a fire_after/fire_before range",
    );
  }
  return {
    groupId: req.groupId || null,
    timerId: req.timerId || null,
    ...r,
    limit: boundedLimit(req.limit, "limit", DEFAULT_BULK_LIMIT, MAX_BULK_LIMIT),
    single: req.timerId !== "",
  };
}

/** The scheduled timers a CancelTimers request selects: a group's, optionally in a fire_at range. */
export function cancelSelection(req: CancelTimersRequest): TimerSelection {
  if (req.groupId === "") throw new RequestError("group_id is required");
  return {
    groupId: req.groupId,
    timerId: null,
    ...range(req.fireAfter, req.fireBefore),
    limit: boundedLimit(req.limit, "limit", DEFAULT_BULK_LIMIT, MAX_BULK_LIMIT),
  };
}

/** The retention and batch size of a PurgeTimers request. */
export function purgeSettings(req: PurgeTimersRequest): { retentionMs: number; batchSize: number } {
  if (!req.retention) throw new RequestError('retention is required, e.g. "2592000s" for 30 days');
  const retentionMs = durationToMs(req.retention);
  if (!(retentionMs > 0)) throw new RequestError("retention must be positive");
  return {
    retentionMs,
    batchSize: boundedLimit(req.batchSize, "batch_size", DEFAULT_PURGE_BATCH, MAX_PURGE_BATCH),
  };
}

/** A page size: 1..1000, 100 when 0. */
export function pageSize(value: number): number {
  return boundedLimit(value, "page_size", 100, 1000);
}

/** Where a page of failed timers stopped: (finish_time as Postgres wrote it, group, timer). */
export interface FailedCursor {
  finish: string;
  groupId: string;
  timerId: string;
}

/** The opaque next_page_token of ListFailedTimers; bound to the group filter it was made for. */
export function encodeFailedCursor(c: FailedCursor, groupFilter: string): string {
  return encodePageToken({ f: c.finish, g: c.groupId, t: c.timerId }, groupFilter);
}

/** The cursor in a ListFailedTimers page_token; RequestError when it is malformed or for another filter. */
export function decodeFailedCursor(token: string, groupFilter: string): FailedCursor {
  const v = decodePageToken(token, groupFilter);
  if (v && typeof v.f === "string" && typeof v.g === "string" && typeof v.t === "string") {
    return { finish: v.f, groupId: v.g, timerId: v.t };
  }
  throw new RequestError(PAGE_TOKEN_REFUSED);
}

/** The id an audit page_token stands for (events older than it come next). */
export function decodeAuditCursor(token: string): string {
  if (!/^[1-9]\d{0,18}$/.test(token)) throw new RequestError("page_token is malformed");
  return token;
}
