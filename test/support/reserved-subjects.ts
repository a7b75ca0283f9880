// Subjects a tenant's NATS callback may not use (services/shared/src/tenant-subjects.ts), one of
// each reserved kind: the create path and the delivery path are tested against the same list.

/** One subject under each of the mesh's and the NATS server's reserved prefixes. */
export const RESERVED_SUBJECT_EXAMPLES = [
  "timers.shard.0",
  "mesh.dispatchers.heartbeat",
  "$JS.API.STREAM.LIST",
  "$SYS.x",
  "$KV.b.k",
  "_INBOX.x",
] as const;
