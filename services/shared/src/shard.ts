// Shard of a timer: FNV-1a (32-bit) over the UTF-8 bytes of group_id, one 0x00 byte, and the
// UTF-8 bytes of timer_id, taken as an unsigned integer modulo the shard count. FNV-1a is a
// few lines in any language, so callers and operators can compute it too (see README).

const encoder = new TextEncoder();

/** FNV-1a 32-bit hash of bytes, as an unsigned integer. */
export function fnv1a32(bytes: Uint8Array, seed = 0x811c9dc5): number {
  let h = seed;
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i]!;
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** FNV-1a 32-bit of utf8(groupId) || 0x00 || utf8(timerId): the hash a timer's shard is taken from. */
export function timerHash(groupId: string, timerId: string): number {
  const g = encoder.encode(groupId);
  const t = encoder.encode(timerId);
  const bytes = new Uint8Array(g.length + 1 + t.length);
  bytes.set(g, 0);
  bytes.set(t, g.length + 1);
  return fnv1a32(bytes);
}

/** The virtual shard of (groupId, timerId) for a mesh of shardCount shards. */
export function shardOf(groupId: string, timerId: string, shardCount: number): number {
  return timerHash(groupId, timerId) % shardCount;
}
