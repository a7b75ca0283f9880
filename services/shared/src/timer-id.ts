// The rule for group and timer ids (and dispatcher ids, which travel in the same places): one
// place, so the API, the mesh messages and the dispatcher's own configuration agree.

/** 1 to 128 characters: letters, digits, ".", "_", ":" and "-", starting with a letter or digit. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** Whether `value` is a well-formed group, timer or dispatcher id. */
export function isValidId(value: string): boolean {
  return ID_PATTERN.test(value);
}
