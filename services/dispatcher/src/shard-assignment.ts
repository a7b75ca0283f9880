// Which shards this dispatcher asks its lease keeper for, and draining. The answer is the shard
// ring's share (shard-ring.ts) of the live members that take shards, or nothing while this
// dispatcher drains: a drained dispatcher stays in the mesh, alive and answering, but holds no
// shard until a rebalance request names it (rebalance.ts) or it restarts. The draining flag and
// the assignment live together because every reassignment must read the flag.
import type { Logger } from "../../shared/src/logger.js";
import type { Membership } from "./membership.js";
import type { LeaseKeeper } from "./shard-leases.js";
import { shardsOf } from "./shard-ring.js";

/** This dispatcher's wanted shards, and its draining state. */
export class ShardAssignment {
  private drainingNow = false;

  constructor(
    private readonly deps: {
      dispatcherId: string;
      shardCount: number;
      membership: Pick<Membership, "activeIds" | "setDraining">;
      leases: Pick<LeaseKeeper, "setDesired" | "tick" | "owned">;
      log: Logger;
    },
  ) {}

  /** Whether this dispatcher is draining (or stopping): it asks for no shards. */
  get draining(): boolean {
    return this.drainingNow;
  }

  /** Tells the lease keeper the shards to hold now, from the live members (none while draining). */
  reassign(): void {
    const { dispatcherId, membership, shardCount, leases } = this.deps;
    leases.setDesired(this.drainingNow ? [] : shardsOf(dispatcherId, membership.activeIds(), shardCount));
  }

  /**
   * Drains: tells the others (so they take the shards over), releases every shard, and returns
   * how many were released. The dispatcher keeps running, owning nothing.
   */
  async drain(): Promise<number> {
    const { membership, leases, log } = this.deps;
    const before = leases.owned().length;
    this.drainingNow = true;
    membership.setDraining(true);
    this.reassign();
    await leases.tick();
    const released = before - leases.owned().length;
    log.info({ released }, "drained");
    return released;
  }

  /** Ends a drain (no-op when not draining): the dispatcher takes its share of shards again. */
  undrain(): void {
    if (!this.drainingNow) return;
    this.drainingNow = false;
    this.deps.membership.setDraining(false);
    this.deps.log.info("resumed taking shards after drain");
  }

  /**
   * At shutdown: from now on ask for no shards, whatever the members do, without telling anyone
   * (the goodbye does that).
   */
  stopTaking(): void {
    this.drainingNow = true;
  }
}
