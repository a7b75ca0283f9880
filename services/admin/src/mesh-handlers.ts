// The mesh part of the AdminService: which dispatchers are live and which shards each holds,
// and the two changes made through the dispatchers themselves, drain and rebalance (recorded in
// the audit log after the fact, as they change nothing in Postgres directly).
import { create } from "@bufbuild/protobuf";
import { timestampFromDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  DispatcherSchema,
  RebalanceReplySchema,
  ShardSchema,
} from "../../shared/src/gen/admin/v1/admin_pb.js";
import { type AdminDeps, type AdminHandlers, required } from "./handler-support.js";
import { inFlightCounts, listShards, ownedShardCounts } from "./shard-store.js";
import { durationToSeconds } from "../../shared/src/time.js";

/** ListDispatchers, ListShards, DrainDispatcher and RebalanceShards. */
export function meshHandlers(
  deps: AdminDeps,
): AdminHandlers<"listDispatchers" | "listShards" | "drainDispatcher" | "rebalanceShards"> {
  const { pool, directory, auditor } = deps;

  /**
   * The NATS connection, for the calls that work through the dispatchers' heartbeats and
   * replies. While NATS is away the admin service stays ready (its Postgres calls work), and
   * these answer UNAVAILABLE naming NATS: the dispatchers it would list are not heard.
   */
  const requireNats = () => {
    const nc = deps.nats.ifConnected();
    if (!nc)
      throw new ConnectError(
        "NATS is not connected: the admin service cannot reach the dispatchers now; retry later",
        Code.Unavailable,
      );
    return nc;
  };

  return {
    async listDispatchers() {
      requireNats();
      const [owned, inFlight] = await Promise.all([ownedShardCounts(pool), inFlightCounts(pool)]);
      const live = directory.live();
      const dispatchers = live.map((m) =>
        create(DispatcherSchema, {
          id: m.id,
          address: m.address,
          lastHeartbeatTime: timestampFromMs(m.lastSeenMs),
          version: m.version,
          startTime: m.startedAtMs ? timestampFromMs(m.startedAtMs) : undefined,
          draining: m.draining,
          ownedShards: owned.get(m.id) ?? 0,
          live: true,
          inFlight: BigInt(inFlight.get(m.id) ?? 0),
        }),
      );
      for (const [owner, n] of owned) {
        if (!live.some((m) => m.id === owner))
          dispatchers.push(
            create(DispatcherSchema, {
              id: owner,
              ownedShards: n,
              live: false,
              inFlight: BigInt(inFlight.get(owner) ?? 0),
            }),
          );
      }
      dispatchers.sort((a, b) => a.id.localeCompare(b.id));
      return { dispatchers };
    },

    async listShards(req) {
      let threshold: number | null = null;
      if (req.onlyLagging) {
        const t = req.lagThreshold;
        threshold = t ? durationToSeconds(t) : 1;
        if (threshold < 0) throw new ConnectError("lag_threshold must not be negative", Code.InvalidArgument);
      }
      const rows = await listShards(pool, req.owner || null, threshold);
      return {
        shardCount: deps.shardCount,
        shards: rows.map((r) =>
          create(ShardSchema, {
            shard: r.shard,
            owner: r.owner ?? "",
            epoch: BigInt(r.epoch),
            leaseExpireTime: r.expires_at ? timestampFromDate(r.expires_at) : undefined,
            leased: r.leased,
            lagSeconds: r.lag,
            dueCount: BigInt(r.due),
          }),
        ),
      };
    },

    async drainDispatcher(req, ctx) {
      requireNats();
      return auditor.change(ctx, req, async () => {
        const id = required(req.dispatcherId, "dispatcher_id");
        const d = directory.find(id);
        if (!d) {
          const live = directory.live().map((m) => m.id);
          throw new ConnectError(
            `dispatcher "${id}" is not live (no heartbeat within ${deps.memberTtlMs} ms); live: ${live.join(", ") || "none"}`,
            Code.NotFound,
          );
        }
        // With the admin service's own token: the operator's is never forwarded (mesh-control.ts).
        const released = await deps.control.drain(d.id, d.address, ctx.signal);
        return {
          response: { dispatcherId: d.id, releasedShards: released },
          result: { dispatcher_id: d.id, address: d.address, released_shards: released },
          recorded: false,
        };
      });
    },

    async rebalanceShards(req, ctx) {
      const nc = requireNats();
      return auditor.change(ctx, req, async () => {
        for (const id of req.undrain) required(id, "undrain[]");
        const live = directory.live();
        const answers = await deps.control.rebalance(nc, req.undrain, live.length);
        const missing = live.map((m) => m.id).filter((id) => !answers.some((a) => a.dispatcherId === id));
        return {
          response: { replies: answers.map((a) => create(RebalanceReplySchema, a)), missing },
          result: {
            replies: answers.map((a) => ({ id: a.dispatcherId, draining: a.draining, owned: a.ownedShards })),
            missing,
          },
          recorded: false,
        };
      });
    },
  };
}
