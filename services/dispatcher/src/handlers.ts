import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { GetStatusResponseSchema, OwnedShardSchema, type DispatcherService } from "../../shared/src/gen/dispatcher/v1/dispatcher_pb.js";
import type { Scheduler, ShardOwnership } from "./scheduler.js";

/** The dispatcher.v1.DispatcherService implementation. */
export function createDispatcherService(deps: {
  dispatcherId: string;
  shardCount: number;
  version: string;
  startTimeMs: number;
  scheduler: Scheduler;
  ownership: ShardOwnership;
  members: () => string[];
  draining: () => boolean;
  shardLag: () => Promise<Map<number, number>>;
  drain: () => Promise<number>;
}): ServiceImpl<typeof DispatcherService> {
  return {
    async getStatus() {
      const lag = await deps.shardLag();
      return create(GetStatusResponseSchema, {
        dispatcherId: deps.dispatcherId,
        members: deps.members(),
        shards: deps.ownership.owned().map((s) =>
          create(OwnedShardSchema, { shard: s, epoch: deps.ownership.epochOf(s), lagSeconds: lag.get(s) ?? 0 }),
        ),
        timersInMemory: BigInt(deps.scheduler.held),
        deliveriesInFlight: BigInt(deps.scheduler.deliveriesInFlight),
        shardCount: deps.shardCount,
        version: deps.version,
        startTime: timestampFromMs(deps.startTimeMs),
        draining: deps.draining(),
      });
    },
    async drain() {
      return { releasedShards: await deps.drain() };
    },
  };
}
