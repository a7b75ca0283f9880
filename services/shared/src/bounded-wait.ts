// Waiting with a bound. Shutdown steps, readiness probes, NATS flushes and name resolution each
// wait for something that may never come (a server that went away, a hung query): they wait so
// long at most, then go on. One helper, so that every such wait clears its timer, never holds
// the process open, and never leaves a late rejection unhandled.

/**
 * `p`'s value wrapped as `{ value }` when it settles within `ms`, `undefined` when the time runs
 * out first. A rejection within the time rejects; a later one is ignored. Its timer does not hold
 * the process open.
 */
export async function within<T>(p: Promise<T>, ms: number): Promise<{ value: T } | undefined> {
  const settled = p.then((value) => ({ value }));
  settled.catch(() => {}); // a rejection after the time ran out has nobody waiting for it
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), Math.max(0, ms));
    timer.unref();
  });
  try {
    return await Promise.race([settled, expired]);
  } finally {
    clearTimeout(timer);
  }
}
