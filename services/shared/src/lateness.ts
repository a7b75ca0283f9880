// The words of a lateness contract (timer.v1.LatenessContract): the policy's name and lengths of
// time as operators read them ("40m12s"). Shared by the dispatcher, which writes them into an
// EXPIRED timer's last_error, and ExplainTimer's sentences, so both say the same thing.
import { Lateness } from "./timer-model.js";

/** The name of a stored lateness_policy code, as timer.v1.LatenessPolicy spells it without its prefix. */
export function latenessPolicyName(policy: number): string {
  switch (policy) {
    case Lateness.Skip:
      return "SKIP";
    case Lateness.FireMarked:
      return "FIRE_MARKED";
    case Lateness.Fire:
      return "FIRE";
    default:
      return `policy ${policy}`;
  }
}

const UNITS: readonly (readonly [string, number])[] = [
  ["d", 86_400_000],
  ["h", 3_600_000],
  ["m", 60_000],
];

/**
 * A length of time in the compact form of Go's durations, zero parts left out: "250ms", "4.2s",
 * "5m", "40m12s", "1h5s", "2d3h". Under a minute it keeps milliseconds (a 5 s limit and a 5.4 s
 * lateness must not both read "5s"); from a minute on, whole seconds.
 */
export function compactDuration(ms: number): string {
  const sign = ms < 0 ? "-" : "";
  let rest = Math.floor(Math.abs(ms));
  if (rest < 1_000) return `${sign}${rest}ms`;
  if (rest < 60_000) return `${sign}${Number((rest / 1_000).toFixed(3))}s`;
  let out = "";
  for (const [unit, size] of UNITS) {
    const n = Math.floor(rest / size);
    if (n > 0) out += `${n}${unit}`;
    rest -= n * size;
  }
  const seconds = Math.floor(rest / 1_000);
  if (seconds > 0) out += `${seconds}s`;
  return sign + out;
}
