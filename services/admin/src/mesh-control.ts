// How the admin reaches the dispatchers: gRPC to one dispatcher (Drain, at the address of its
// heartbeat) and NATS request/reply to all of them at once (rebalance).
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { DispatcherService } from "../../shared/src/gen/dispatcher/v1/dispatcher_pb.js";
import type { Logger } from "../../shared/src/logger.js";
import { REBALANCE_SUBJECT } from "../../shared/src/nats.js";

/** A dispatcher's answer to a rebalance request. */
export interface RebalanceAnswer {
  id: string;
  draining: boolean;
  owned: number;
}

/** TLS for calls to dispatchers: the CA to trust, and a client certificate for mTLS. */
export interface DispatcherTls {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** Calls dispatchers on behalf of operators. */
export class MeshControl {
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder();

  constructor(
    private readonly nc: NatsConnection,
    private readonly opts: { rebalanceWaitMs: number; callTimeoutMs: number; tls: DispatcherTls | undefined },
    private readonly log: Logger,
  ) {}

  /**
   * Calls dispatcher.v1.DispatcherService/Drain at `address` with the operator's own
   * authorization header, and returns the number of shards it released.
   */
  async drain(id: string, address: string, authorization: string | null, signal: AbortSignal): Promise<number> {
    const baseUrl = `${this.opts.tls ? "https" : "http"}://${address}`;
    const nodeOptions = this.opts.tls ? { ca: this.opts.tls.ca, cert: this.opts.tls.cert, key: this.opts.tls.key } : {};
    const sessions = new Http2SessionManager(baseUrl, {}, nodeOptions);
    try {
      const client = createClient(DispatcherService, createGrpcTransport({ baseUrl, sessionManager: sessions }));
      const headers = authorization ? { authorization } : undefined;
      const res = await client.drain({}, { headers, signal, timeoutMs: this.opts.callTimeoutMs });
      return res.releasedShards;
    } catch (err) {
      const e = ConnectError.from(err);
      this.log.warn({ dispatcher: id, address, code: Code[e.code], error: e.rawMessage }, "drain call failed");
      if (e.code === Code.Unavailable || e.code === Code.Unknown || e.code === Code.Internal) {
        throw new ConnectError(`dispatcher ${id} at ${address} could not be drained: ${e.rawMessage}`, Code.Unavailable);
      }
      throw new ConnectError(`dispatcher ${id}: ${e.rawMessage}`, e.code);
    } finally {
      sessions.abort();
    }
  }

  /**
   * Asks every dispatcher to reconcile its shard leases now (undraining the named ones) and
   * collects the replies for up to REBALANCE_WAIT, or until `expected` have answered.
   */
  async rebalance(undrain: string[], expected: number): Promise<RebalanceAnswer[]> {
    const answers: RebalanceAnswer[] = [];
    const body = this.encoder.encode(JSON.stringify(undrain.length > 0 ? { undrain } : {}));
    try {
      const replies = await this.nc.requestMany(REBALANCE_SUBJECT, body, {
        maxWait: this.opts.rebalanceWaitMs,
        ...(expected > 0 ? { strategy: "count" as const, maxMessages: expected } : { strategy: "timer" as const }),
      });
      for await (const msg of replies) {
        try {
          const r = JSON.parse(this.decoder.decode(msg.data)) as { id: string; draining: boolean; owned: number };
          answers.push({ id: String(r.id), draining: r.draining === true, owned: Number(r.owned) || 0 });
        } catch (e) {
          this.log.warn({ err: e }, "ignoring malformed rebalance reply");
        }
      }
    } catch (err) {
      // No dispatcher listening ends the iteration with an error: report who answered (nobody).
      this.log.warn({ err }, "rebalance request ended with an error");
    }
    return answers.sort((a, b) => a.id.localeCompare(b.id));
  }
}
