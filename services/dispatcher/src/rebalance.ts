// Operators (through the admin service, mesh-control.ts) ask every dispatcher at once to
// recompute its share of the shards and reconcile its leases with it now, and may name drained
// dispatchers that may take shards again. Each dispatcher answers with what it holds then
// (RebalanceReply), so the admin can report the outcome.
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "../../shared/src/logger.js";
import type { MeshMessageDrops } from "../../shared/src/mesh-message-drops.js";
import {
  decodeRebalanceRequest,
  encodeRebalanceReply,
  REBALANCE_SUBJECT,
} from "../../shared/src/mesh-messages.js";
import type { ShardAssignment } from "./shard-assignment.js";
import type { LeaseKeeper } from "./shard-leases.js";

/** Answers the admin's rebalance requests until the returned subscription is unsubscribed. */
export function subscribeRebalance(deps: {
  nats: NatsConnection;
  dispatcherId: string;
  assignment: Pick<ShardAssignment, "draining" | "reassign" | "undrain">;
  leases: Pick<LeaseKeeper, "tick" | "owned">;
  drops: MeshMessageDrops;
  log: Logger;
}): Subscription {
  const { nats, dispatcherId, assignment, leases, drops, log } = deps;
  return nats.subscribe(REBALANCE_SUBJECT, {
    callback: (err, msg) => {
      if (err) return;
      const req = decodeRebalanceRequest(msg.data);
      if (!req.ok) return drops.drop(REBALANCE_SUBJECT, req.reason);
      if (req.value.undrain.includes(dispatcherId)) assignment.undrain();
      assignment.reassign();
      void leases.tick();
      if (!msg.reply) return;
      try {
        msg.respond(
          encodeRebalanceReply({
            dispatcherId,
            draining: assignment.draining,
            ownedShards: leases.owned().length,
          }),
        );
      } catch (e) {
        log.warn({ err: e }, "could not answer a rebalance request");
      }
    },
  });
}
