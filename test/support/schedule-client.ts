// A ScheduleService client built with @grpc/grpc-js from the same protos, with an optional
// bearer token: the way internal services call us.
import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { ScheduleService } from "../../services/shared/src/gen/timer/v1/schedule_pb.js";

type Methods = typeof ScheduleService.method;
type In<K extends keyof Methods> = MessageShape<Methods[K]["input"]>;
type Out<K extends keyof Methods> = MessageShape<Methods[K]["output"]>;

/** A promise-based grpc-js ScheduleService client. */
export class GrpcScheduleClient {
  private readonly client: grpc.Client;
  constructor(
    target: string,
    private readonly token?: string,
  ) {
    this.client = new grpc.Client(target, grpc.credentials.createInsecure());
  }

  call<K extends keyof Methods>(method: K, req: In<K>): Promise<Out<K>> {
    const desc = ScheduleService.method[method];
    const input = desc.input as DescMessage;
    const output = desc.output as DescMessage;
    const metadata = new grpc.Metadata();
    if (this.token !== undefined) metadata.set("authorization", `Bearer ${this.token}`);
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        `/${ScheduleService.typeName}/${desc.name}`,
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
