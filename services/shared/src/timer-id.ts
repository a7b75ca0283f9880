// The rule for group and timer ids (and dispatcher ids, which travel in the same places), and how
// a timer's two ids are joined: one place, so the API, the mesh messages, the dispatcher's own
// configuration and every map or message naming a timer agree.

/** 1 to 128 characters: letters, digits, ".", "_", ":" and "-", starting with a letter or digit. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** Whether `value` is a well-formed group, timer or dispatcher id. */
export function isValidId(value: string): boolean {
  return ID_PATTERN.test(value);
}

/** A schedule id: an id of at most 100 characters, so that its firings' ids fit in 128. */
export const SCHEDULE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$/;

/**
 * The id of a schedule's firing: "<schedule_id>@<instant>", the nominal instant in RFC 3339 UTC
 * to the second. "@" occurs in no id a caller may choose, so a firing's id can never collide
 * with a one-shot timer's, and replaying a firing's creation (after a restart) finds it.
 */
export const FIRING_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

/** The timer id of a schedule's firing at `instantMs` (whole seconds). */
export function firingId(scheduleId: string, instantMs: number): string {
  return `${scheduleId}@${new Date(instantMs).toISOString().slice(0, 19)}Z`;
}

/** The nominal instant (ms) a firing's id carries: the inverse of firingId. */
export function instantOfFiringId(timerId: string): number {
  return Date.parse(timerId.slice(timerId.lastIndexOf("@") + 1));
}

/** Whether `value` is a timer id that may be stored: a caller's id or a schedule firing's. */
export function isValidTimerId(value: string): boolean {
  return ID_PATTERN.test(value) || FIRING_ID_PATTERN.test(value);
}

/** A map key for a timer's (group_id, timer_id): NUL cannot occur in either id. */
export function timerKey(groupId: string, timerId: string): string {
  return `${groupId}\u0000${timerId}`;
}

/** "group/timer": how messages, logs and delivery idempotency keys name a timer ("/" occurs in no id). */
export function timerName(groupId: string, timerId: string): string {
  return `${groupId}/${timerId}`;
}
