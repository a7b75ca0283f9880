// Which dispatcher owns which shard: rendezvous (highest-random-weight) hashing. For every
// shard, each member gets a pseudo-random weight from hash(member, shard); the highest wins.
//
// Why rendezvous rather than a ring with virtual nodes: with 1,024 shards and a handful of
// members it is cheap (shards x members hashes), needs no tuning of virtual-node counts for
// balance, and moves the minimum possible when membership changes: a joining member takes
// only the shards it now wins (about 1/N), and a leaving member's shards are spread over all
// the others, with no other shard moving. Every dispatcher computes the same map from the
// same member set because it depends on nothing else.
import { fnv1a32 } from "../../shared/src/shard.js";

const encoder = new TextEncoder();

// FNV-1a alone mixes its last bytes poorly; the murmur3 finalizer spreads them over all bits
// so that weights of consecutive shard numbers are independent.
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The weight of `member` for `shard`. */
export function weight(memberHash: number, shard: number): number {
  return fmix32(memberHash ^ fmix32(shard + 0x9e3779b9));
}

/** The owner of every shard for a set of members: `owners[shard]` is a member id. */
export function assignShards(members: readonly string[], shardCount: number): string[] {
  const sorted = [...new Set(members)].sort();
  if (sorted.length === 0) return [];
  const hashes = sorted.map((m) => fnv1a32(encoder.encode(m)));
  const owners = new Array<string>(shardCount);
  for (let s = 0; s < shardCount; s++) {
    let best = 0;
    let bestWeight = -1;
    for (let i = 0; i < sorted.length; i++) {
      const w = weight(hashes[i]!, s);
      // Ties (astronomically rare) go to the smaller id, which every member agrees on.
      if (w > bestWeight) {
        bestWeight = w;
        best = i;
      }
    }
    owners[s] = sorted[best]!;
  }
  return owners;
}

/** The shards `member` owns among `members`, ascending. */
export function shardsOf(member: string, members: readonly string[], shardCount: number): number[] {
  const owners = assignShards(members, shardCount);
  const out: number[] = [];
  for (let s = 0; s < owners.length; s++) if (owners[s] === member) out.push(s);
  return out;
}
