// What a caller is told when a create is over a limit: RESOURCE_EXHAUSTED naming the limit and
// the variable that sets it, with the retry delay as google.rpc.RetryInfo when waiting helps.
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "../../shared/src/gen/google/rpc/error_details_pb.js";
import type { TokenBuckets } from "./create-rate.js";
import type { QuotaRefusal } from "./group-quota.js";

/** Takes one create from the token's bucket; RESOURCE_EXHAUSTED with RetryInfo when it is empty. */
export function takeCreateToken(buckets: TokenBuckets, tokenName: string, nowMs: number): void {
  const d = buckets.take(tokenName, nowMs);
  if (d.allowed) return;
  throw new ConnectError(
    `token "${tokenName}" is over its create rate of ${buckets.ratePerSecond}/s with bursts of ${buckets.burst} ` +
      `(CREATE_RATE_PER_TOKEN, CREATE_BURST_PER_TOKEN); retry in ${d.retryAfterMs} ms`,
    Code.ResourceExhausted,
    undefined,
    [{ desc: RetryInfoSchema, value: { retryDelay: durationFromMs(d.retryAfterMs) } }],
  );
}

/**
 * Takes a CreateTimers call's `count` creates from the token's bucket at once: all or none, so
 * a refused call stores nothing. RESOURCE_EXHAUSTED with RetryInfo when they are not there yet;
 * without it when `count` is more than the bucket holds (CREATE_BURST_PER_TOKEN): waiting
 * cannot help, smaller calls can.
 */
export function takeCreateTokens(
  buckets: TokenBuckets,
  tokenName: string,
  nowMs: number,
  count: number,
): void {
  // Written without , ; : / (grpc-js clients leave those percent-encoded in a status message).
  if (count > buckets.burst) {
    throw new ConnectError(
      `token "${tokenName}" may make at most ${buckets.burst} creates at once (CREATE_BURST_PER_TOKEN) and this call has ${count}. Send fewer per call`,
      Code.ResourceExhausted,
    );
  }
  const d = buckets.take(tokenName, nowMs, count);
  if (d.allowed) return;
  throw new ConnectError(
    `token "${tokenName}" is over its create rate of ${buckets.ratePerSecond} per second with bursts of ${buckets.burst} ` +
      `(CREATE_RATE_PER_TOKEN and CREATE_BURST_PER_TOKEN). The ${count} creates of this call can be made in ${d.retryAfterMs} ms`,
    Code.ResourceExhausted,
    undefined,
    [{ desc: RetryInfoSchema, value: { retryDelay: durationFromMs(d.retryAfterMs) } }],
  );
}

/** The refusal of a create that would take a group over its limit of active timers. */
export function groupQuotaExceeded(r: QuotaRefusal): ConnectError {
  const limit = r.overridden
    ? `its own limit of ${r.limit} active timers (set by an admin with AdminService/SetGroupQuota, instead of GROUP_MAX_ACTIVE_TIMERS)`
    : `the limit of ${r.limit} active timers per group (GROUP_MAX_ACTIVE_TIMERS)`;
  return new ConnectError(
    `group "${r.groupId}" has ${r.active} active (scheduled or firing) timers: one more would exceed ${limit}`,
    Code.ResourceExhausted,
  );
}
