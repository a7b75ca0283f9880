// Shard leases in Postgres: the fence that keeps a stale dispatcher from firing. A dispatcher
// fires a shard's timers only while shard_leases says it is the owner, at the epoch it knows,
// and the lease has not expired; the claim statement checks exactly that (dispatch-store.ts).
//
// A shard lease is (shard, owner, epoch); it is valid while the owner's one dispatcher lease
// (dispatcher_leases) is, which this keeper renews every tick: one row, whatever the shard count.
//
// Hand-off is ordered: the old owner first stops claiming in the shard, then releases the
// lease; the new owner can only take a released or expired lease, and takes it with epoch + 1.
import type pg from "pg";
import type { Logger } from "../../shared/src/logger.js";
import { intervalOfMsSql } from "../../shared/src/time.js";
import type { ShardOwnership } from "./scheduler.js";

/** What the lease keeper tells the firing loop. */
export interface LeaseHooks {
  /** Shards about to be released: stop claiming in them and wait for claims in flight. */
  releasing(shards: number[]): Promise<void>;
  /**
   * Shards just acquired: load their due timers. `takenOver` are those whose previous owner
   * did not release them (its lease expired: it crashed, hung, or lost Postgres).
   */
  gained(shards: number[], takenOver: number[]): Promise<void>;
  /** Shards lost without a release (our lease expired and someone else took it). */
  lost(shards: number[]): void;
}

/** Holds, renews, acquires and releases this dispatcher's shard leases. */
export class LeaseKeeper implements ShardOwnership {
  private held = new Map<number, bigint>();
  private desired = new Set<number>();
  private ownedSorted: number[] = [];
  private lastRenewOkMs = 0;
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private again = false;
  private stopped = false;

  constructor(
    private readonly pool: pg.Pool,
    private readonly owner: string,
    /** This process (the claim owner written on its claims): see reclaimExpired. */
    private readonly incarnation: string,
    private readonly opts: { leaseTtlMs: number; tickMs: number },
    private readonly hooks: LeaseHooks,
    private readonly log: Logger,
  ) {}

  owned(): number[] {
    return this.ownedSorted;
  }

  owns(shard: number): boolean {
    return this.held.has(shard);
  }

  /** The epoch of our lease on `shard` (0 when not held). */
  epochOf(shard: number): bigint {
    return this.held.get(shard) ?? 0n;
  }

  /** Shards the assignment gives us; acquired and released on the next tick (run now). */
  setDesired(shards: number[]): void {
    this.desired = new Set(shards);
    void this.tick();
  }

  /** Starts the renew/acquire/release loop. */
  start(): void {
    const loop = () => {
      if (this.stopped) return;
      void this.tick().finally(() => {
        if (!this.stopped) this.timer = setTimeout(loop, this.opts.tickMs);
      });
    };
    loop();
  }

  /** Releases every lease in order (stop claiming, then release), ends our dispatcher lease, and stops. */
  async stop(): Promise<void> {
    this.desired = new Set();
    await this.tick();
    this.stopped = true;
    clearTimeout(this.timer);
    await this.ticking;
    await this.pool
      .query(
        `-- end_dispatcher_lease
         DELETE FROM dispatcher_leases WHERE owner = $1 AND NOT EXISTS (SELECT 1 FROM shard_leases WHERE owner = $1)`,
        [this.owner],
      )
      .catch((err: unknown) =>
        this.log.warn({ err }, "could not end the dispatcher lease; it expires by itself"),
      );
  }

  /** Runs one renew/release/acquire round; concurrent calls coalesce into one more round. */
  tick(): Promise<void> {
    if (this.ticking !== undefined) {
      this.again = true;
      return this.ticking;
    }
    this.ticking = (async () => {
      do {
        this.again = false;
        try {
          await this.round();
        } catch (err) {
          this.log.error({ err }, "shard lease round failed");
          this.expireLocally();
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.ticking = undefined;
    });
    return this.ticking;
  }

  private async round(): Promise<void> {
    // 1. Release what we should no longer own: stop claiming first, then let go.
    const release = [...this.held.keys()].filter((s) => !this.desired.has(s));
    if (release.length > 0) {
      const epochs = release.map((s) => this.held.get(s)!);
      for (const s of release) this.held.delete(s);
      this.refresh();
      await this.hooks.releasing(release);
      await this.pool.query(
        `-- release_leases
         UPDATE shard_leases l SET owner = NULL
           FROM unnest($2::int[], $3::bigint[]) AS r(shard, epoch)
          WHERE l.shard = r.shard AND l.owner = $1 AND l.epoch = r.epoch`,
        [this.owner, release, epochs.map(String)],
      );
      this.log.info({ shards: release.length }, "released shards");
    }

    // 2. Renew our dispatcher lease (this keeps every shard lease we hold valid), then check
    //    which shards are still ours: any other was taken after our lease expired.
    await this.pool.query(
      `-- renew_dispatcher_lease
       INSERT INTO dispatcher_leases (owner, expires_at, incarnation) VALUES ($1, now() + ${intervalOfMsSql("$2")}, $3)
       ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at, incarnation = EXCLUDED.incarnation`,
      [this.owner, this.opts.leaseTtlMs, this.incarnation],
    );
    if (this.held.size > 0) {
      const { rows } = await this.pool.query<{ shard: number; epoch: string }>(
        `-- check_shard_leases
         SELECT shard, epoch FROM shard_leases WHERE owner = $1`,
        [this.owner],
      );
      const mine = new Map(rows.map((r) => [r.shard, BigInt(r.epoch)]));
      const lost = [...this.held.keys()].filter((s) => mine.get(s) !== this.held.get(s));
      if (lost.length > 0) {
        for (const s of lost) this.held.delete(s);
        this.refresh();
        this.log.warn({ shards: lost }, "lost shard leases to another dispatcher");
        this.hooks.lost(lost);
      }
    }
    // Monotonic: a step of the wall clock must neither fake nor hide a missed renewal.
    this.lastRenewOkMs = performance.now();

    // 3. Acquire what we should own and is free (released, expired, or ours from a previous run).
    const want = [...this.desired].filter((s) => !this.held.has(s));
    if (want.length > 0 && !this.stopped) {
      const { rows } = await this.pool.query<{ shard: number; epoch: string; previous_owner: string | null }>(
        `-- acquire_leases
         WITH free AS (
           SELECT l.shard, l.owner FROM shard_leases l
            WHERE l.shard = ANY($2::int[])
              AND (l.owner IS NULL OR l.owner = $1
                   OR NOT EXISTS (SELECT 1 FROM dispatcher_leases d WHERE d.owner = l.owner AND d.expires_at > now()))
            FOR UPDATE SKIP LOCKED
         )
         UPDATE shard_leases l
            SET owner = $1, epoch = l.epoch + 1
           FROM free WHERE l.shard = free.shard
          RETURNING l.shard, l.epoch, free.owner AS previous_owner`,
        [this.owner, want],
      );
      if (rows.length > 0) {
        for (const r of rows) this.held.set(r.shard, BigInt(r.epoch));
        this.refresh();
        const gained = rows.map((r) => r.shard).sort((a, b) => a - b);
        this.log.info({ shards: gained.length, waiting_for: want.length - gained.length }, "acquired shards");
        const takenOver = rows.filter((r) => r.previous_owner !== null).map((r) => r.shard);
        await this.hooks.gained(gained, takenOver);
      }
    }
  }

  // Without a successful renewal for a whole TTL our leases may have expired: stop claiming
  // locally too (the database would refuse the claims anyway).
  private expireLocally(): void {
    if (this.held.size > 0 && performance.now() - this.lastRenewOkMs > this.opts.leaseTtlMs) {
      const lost = [...this.held.keys()];
      this.held.clear();
      this.refresh();
      this.log.warn({ shards: lost.length }, "could not renew shard leases in time; stopped firing them");
      this.hooks.lost(lost);
    }
  }

  private refresh(): void {
    this.ownedSorted = [...this.held.keys()].sort((a, b) => a - b);
  }
}
