import type { ShardOwnership } from "./scheduler.js";

/** Owns every shard: a dispatcher on its own. Claims in Postgres still make each firing unique. */
export class AllShards implements ShardOwnership {
  private readonly all: number[];
  constructor(shardCount: number) {
    this.all = Array.from({ length: shardCount }, (_, i) => i);
  }
  owned(): number[] {
    return this.all;
  }
  owns(shard: number): boolean {
    return shard >= 0 && shard < this.all.length;
  }
}
