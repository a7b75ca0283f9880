// A Connect client for one dispatcher's DispatcherService (GetStatus, Drain).
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DispatcherService } from "../../services/shared/src/gen/dispatcher/v1/dispatcher_pb.js";

/** A DispatcherService client on 127.0.0.1:port. */
export function dispatcherClient(port: number): Client<typeof DispatcherService> {
  return createClient(DispatcherService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
}
