// The rule for group and timer ids (and dispatcher ids, which travel in the same places), and how
// a timer's two ids are joined: one place, so the API, the mesh messages, the dispatcher's own
// configuration and every map or message naming a timer agree.

/** 1 to 128 characters: letters, digits, ".", "_", ":" and "-", starting with a letter or digit. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** Whether `value` is a well-formed group, timer or dispatcher id. */
export function isValidId(value: string): boolean {
  return ID_PATTERN.test(value);
}

/** A map key for a timer's (group_id, timer_id): NUL cannot occur in either id. */
export function timerKey(groupId: string, timerId: string): string {
  return `${groupId}\u0000${timerId}`;
}

/** "group/timer": how messages, logs and delivery idempotency keys name a timer ("/" occurs in no id). */
export function timerName(groupId: string, timerId: string): string {
  return `${groupId}/${timerId}`;
}
