// A TimerService client built with @grpc/grpc-js from the same protos: the way internal
// services call us.
import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import {
  CallbackSchema,
  CreateTimerRequestSchema,
  CreateTimersRequestSchema,
  TimerService,
  type CreateTimerRequest,
  type CreateTimersResult,
  type Timer,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";

type Methods = typeof TimerService.method;
type In<K extends keyof Methods> = MessageShape<Methods[K]["input"]>;
type Out<K extends keyof Methods> = MessageShape<Methods[K]["output"]>;

/** A promise-based grpc-js TimerService client. */
export class GrpcTimerClient {
  private readonly client: grpc.Client;
  constructor(target: string) {
    this.client = new grpc.Client(target, grpc.credentials.createInsecure());
  }

  call<K extends keyof Methods>(method: K, req: In<K>, metadata = new grpc.Metadata()): Promise<Out<K>> {
    const desc = TimerService.method[method];
    const input = desc.input as DescMessage;
    const output = desc.output as DescMessage;
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        `/${TimerService.typeName}/${desc.name}`,
        (m: In<K>) => Buffer.from(toBinary(input, m)),
        (b: Buffer) => fromBinary(output, b) as Out<K>,
        req,
        metadata,
        { deadline: Date.now() + 15_000 },
        (err, res) => (err ? reject(err) : resolve(res!)),
      );
    });
  }

  close(): void {
    this.client.close();
  }
}

/** One CreateTimers call with these creates; its results, one per create in order. */
export async function createTimers(
  client: GrpcTimerClient,
  reqs: CreateTimerRequest[],
  metadata?: grpc.Metadata,
): Promise<CreateTimersResult[]> {
  const res = await client.call(
    "createTimers",
    create(CreateTimersRequestSchema, { requests: reqs }),
    metadata,
  );
  assert.equal(res.results.length, reqs.length, "one result per create");
  return res.results;
}

/** Creates every timer, `concurrency` at a time, asserting each is new; the stored timers by id. */
export async function createAll(
  client: GrpcTimerClient,
  reqs: CreateTimerRequest[],
  concurrency = 100,
): Promise<Map<string, Timer>> {
  const out = new Map<string, Timer>();
  for (let i = 0; i < reqs.length; i += concurrency) {
    const res = await Promise.all(reqs.slice(i, i + concurrency).map((r) => client.call("createTimer", r)));
    for (const r of res) {
      assert.equal(r.created, true);
      out.set(r.timer!.timerId, r.timer!);
    }
  }
  return out;
}

/** A timer's fire_at in epoch milliseconds. */
export function fireAtMsOf(t: Timer): number {
  return timestampMs(t.fireAt!);
}

/** A create of a timer firing at `fireAtMs` with an HTTP callback to `url`. */
export function httpTimerAt(
  groupId: string,
  timerId: string,
  fireAtMs: number,
  url: string,
): CreateTimerRequest {
  return create(CreateTimerRequestSchema, {
    groupId,
    timerId,
    schedule: { case: "fireAt", value: timestampFromMs(fireAtMs) },
    callback: create(CallbackSchema, { target: { case: "http", value: { url, headers: {} } } }),
  });
}

/**
 * A create of a timer an hour out (nothing fires while a test looks at it) with an HTTP
 * callback to a closed port; `over` replaces any field.
 */
export function hourAhead(
  groupId: string,
  timerId: string,
  over: Partial<Omit<CreateTimerRequest, "$typeName">> = {},
): CreateTimerRequest {
  return create(CreateTimerRequestSchema, {
    groupId,
    timerId,
    schedule: { case: "delay", value: durationFromMs(3_600_000) },
    callback: { target: { case: "http", value: { url: "http://127.0.0.1:9/hook", headers: {} } } },
    ...over,
  });
}
