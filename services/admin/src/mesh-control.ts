// How the admin reaches the dispatchers: gRPC to one dispatcher (Drain, at the address of its
// heartbeat) and NATS request/reply to all of them at once (rebalance).
//
// Calls to a dispatcher carry the admin service's own token (DISPATCHER_TOKEN), never the
// operator's: the address comes from a heartbeat, and whoever could publish one would otherwise
// collect the bearer tokens of every operator who drains.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { NatsConnection } from "@nats-io/transport-node";
import { DispatcherService } from "../../shared/src/gen/dispatcher/v1/dispatcher_pb.js";
import type { Logger } from "../../shared/src/logger.js";
import type { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
import {
  decodeRebalanceReply,
  encodeRebalanceRequest,
  REBALANCE_REPLIES,
  REBALANCE_SUBJECT,
  type RebalanceAnswer,
} from "../../shared/src/mesh-messages.js";

/** TLS for calls to dispatchers: the CA to trust, and a client certificate for mTLS. */
export interface DispatcherTls {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** Calls dispatchers on behalf of operators. */
export class MeshControl {
  constructor(
    private readonly opts: {
      rebalanceWaitMs: number;
      callTimeoutMs: number;
      tls: DispatcherTls | undefined;
      /** The admin's own bearer token for dispatchers (undefined: call without one); read per call. */
      dispatcherToken: () => Promise<string | undefined>;
      shardCount: number;
    },
    private readonly log: Logger,
    private readonly drops: MeshMessageDrops,
  ) {}

  /**
   * Calls dispatcher.v1.DispatcherService/Drain at `address` with the admin's own token, and
   * returns the number of shards it released.
   */
  async drain(id: string, address: string, signal: AbortSignal): Promise<number> {
    const baseUrl = `${this.opts.tls ? "https" : "http"}://${address}`;
    const nodeOptions = this.opts.tls
      ? { ca: this.opts.tls.ca, cert: this.opts.tls.cert, key: this.opts.tls.key }
      : {};
    const token = await this.opts.dispatcherToken();
    const sessions = new Http2SessionManager(baseUrl, {}, nodeOptions);
    try {
      const client = createClient(
        DispatcherService,
        createGrpcTransport({ baseUrl, sessionManager: sessions }),
      );
      const headers = token ? { authorization: `Bearer ${token}` } : undefined;
      const res = await client.drain({}, { headers, signal, timeoutMs: this.opts.callTimeoutMs });
      return res.releasedShards;
    } catch (err) {
      const e = ConnectError.from(err);
      this.log.warn(
        { dispatcher: id, address, code: Code[e.code], error: e.rawMessage },
        "drain call failed",
      );
      if (e.code === Code.Unauthenticated || e.code === Code.PermissionDenied) {
        // The operator was allowed here; it is the admin service that the dispatcher refused.
        const fix = token
          ? "DISPATCHER_TOKEN of the admin service is not an admin token in the dispatcher's token list"
          : "the admin service has no DISPATCHER_TOKEN (or DISPATCHER_TOKEN_FILE) to present; set it to an admin token of the dispatchers";
        throw new ConnectError(`dispatcher ${id} refused the admin service: ${fix}`, Code.FailedPrecondition);
      }
      if (e.code === Code.Unavailable || e.code === Code.Unknown || e.code === Code.Internal) {
        throw new ConnectError(
          `dispatcher ${id} at ${address} could not be drained: ${e.rawMessage}`,
          Code.Unavailable,
        );
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
  async rebalance(nc: NatsConnection, undrain: string[], expected: number): Promise<RebalanceAnswer[]> {
    const answers: RebalanceAnswer[] = [];
    const body = encodeRebalanceRequest(undrain);
    try {
      const replies = await nc.requestMany(REBALANCE_SUBJECT, body, {
        maxWait: this.opts.rebalanceWaitMs,
        ...(expected > 0
          ? { strategy: "count" as const, maxMessages: expected }
          : { strategy: "timer" as const }),
      });
      for await (const msg of replies) {
        const reply = decodeRebalanceReply(msg.data, this.opts.shardCount);
        if (!reply.ok) {
          this.drops.drop(REBALANCE_REPLIES, reply.reason);
          continue;
        }
        answers.push(reply.value);
      }
    } catch (err) {
      // No dispatcher listening ends the iteration with an error: report who answered (nobody).
      this.log.warn({ err }, "rebalance request ended with an error");
    }
    return answers.sort((a, b) => a.dispatcherId.localeCompare(b.dispatcherId));
  }
}
