import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  GetStatusResponseSchema,
  OwnedShardSchema,
  type DispatcherService,
} from "../../shared/src/gen/dispatcher/v1/dispatcher_pb.js";
import type { Scheduler, ShardOwnership } from "./scheduler.js";

/** What the handlers read from a started dispatcher (main.ts: once Postgres and NATS are there). */
export interface DispatcherState {
  scheduler: Scheduler;
  ownership: ShardOwnership;
  members(): string[];
  draining(): boolean;
  drain(): Promise<number>;
}

/** The dispatcher.v1.DispatcherService implementation. */
export function createDispatcherService(deps: {
  dispatcherId: string;
  shardCount: number;
  version: string;
  startTimeMs: number;
  /** Undefined until the dispatcher has started; calls are refused until then (service-runtime.ts). */
  state: () => DispatcherState | undefined;
  shardLag: (shards: number[]) => Promise<Map<number, number>>;
}): ServiceImpl<typeof DispatcherService> {
  const started = (): DispatcherState => {
    const state = deps.state();
    if (!state) throw new ConnectError("dispatcher is starting; retry later", Code.Unavailable);
    return state;
  };
  return {
    async getStatus() {
      const s = started();
      const owned = s.ownership.owned();
      const lag = await deps.shardLag(owned);
      return create(GetStatusResponseSchema, {
        dispatcherId: deps.dispatcherId,
        members: s.members(),
        shards: owned.map((shard) =>
          create(OwnedShardSchema, {
            shard,
            epoch: s.ownership.epochOf(shard),
            lagSeconds: lag.get(shard) ?? 0,
          }),
        ),
        timersInMemory: BigInt(s.scheduler.held),
        deliveriesInFlight: BigInt(s.scheduler.deliveriesInFlight),
        shardCount: deps.shardCount,
        version: deps.version,
        startTime: timestampFromMs(deps.startTimeMs),
        draining: s.draining(),
      });
    },
    async drain() {
      return { releasedShards: await started().drain() };
    },
  };
}
