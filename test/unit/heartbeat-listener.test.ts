// The liveness rule the dispatchers and the admin share (heartbeat-listener.ts): who joined,
// who changed, who left, and who is forgotten after the TTL; and what the listener does with
// its own heartbeats and with messages that do not decode.
import assert from "node:assert/strict";
import { test } from "node:test";
import { metrics } from "@opentelemetry/api";
import { pino } from "pino";
import {
  type HeardDispatcher,
  HeardDispatchers,
  HeartbeatListener,
  liveMembers,
} from "../../services/shared/src/heartbeat-listener.js";
import { MeshMessageDrops } from "../../services/shared/src/mesh-message-drops.js";
import {
  type DropReason,
  encodeHeartbeat,
  encodeLeave,
  type Heartbeat,
} from "../../services/shared/src/mesh-messages.js";

const TTL = 3_000;

function heartbeat(id: string, draining = false): Heartbeat {
  return { dispatcherId: id, grpcAddress: `${id}:50052`, version: "1", startedAtMs: 0, draining };
}

const ids = (list: HeardDispatcher[]) => list.map((m) => m.id);

test("live dispatchers are those heard within the TTL, sorted", () => {
  const m = (id: string, lastSeenMs: number): HeardDispatcher => ({
    id,
    address: `${id}:1`,
    version: "1",
    startedAtMs: 0,
    draining: false,
    lastSeenMs,
  });
  assert.deepEqual(ids(liveMembers([m("d3", 9_000), m("d1", 10_000), m("d2", 6_000)], 10_000, TTL)), [
    "d1",
    "d3",
  ]);
  // Exactly one TTL old is still alive.
  assert.deepEqual(ids(liveMembers([m("d1", 7_000)], 10_000, TTL)), ["d1"]);
});

test("a heartbeat says whether its dispatcher joined, changed its draining flag, or is only alive still", () => {
  const view = new HeardDispatchers(TTL);
  assert.equal(view.heartbeat(heartbeat("d2"), 1_000), "joined");
  assert.equal(view.heartbeat(heartbeat("d1"), 1_000), "joined");
  assert.equal(view.heartbeat(heartbeat("d2"), 1_500), "renewed");
  assert.equal(view.heartbeat(heartbeat("d2", true), 2_000), "draining_changed");
  assert.equal(view.heartbeat(heartbeat("d2", true), 2_500), "renewed");
  assert.deepEqual(view.list(), [
    { id: "d1", address: "d1:50052", version: "1", startedAtMs: 0, draining: false, lastSeenMs: 1_000 },
    { id: "d2", address: "d2:50052", version: "1", startedAtMs: 0, draining: true, lastSeenMs: 2_500 },
  ]);
});

test("a dispatcher silent for longer than the TTL is forgotten, and returned once", () => {
  const view = new HeardDispatchers(TTL);
  view.heartbeat(heartbeat("d1"), 1_000);
  view.heartbeat(heartbeat("d2"), 2_000);
  assert.deepEqual(view.expire(4_000), []);
  assert.deepEqual(ids(view.expire(4_001)), ["d1"]);
  assert.deepEqual(ids(view.list()), ["d2"]);
  assert.deepEqual(view.expire(4_002), []);
  // Heard again, it joins again.
  assert.equal(view.heartbeat(heartbeat("d1"), 4_500), "joined");
});

test("a goodbye removes the dispatcher and outranks its heartbeats for one TTL", () => {
  const view = new HeardDispatchers(TTL);
  view.heartbeat(heartbeat("d1"), 1_000);
  assert.equal(view.leave("d1", 2_000)?.id, "d1");
  assert.deepEqual(view.list(), []);
  // A heartbeat sent before the goodbye, arriving after it.
  assert.equal(view.heartbeat(heartbeat("d1"), 2_100), "ignored");
  assert.deepEqual(view.list(), []);
  // A restarted d1, a TTL later, is believed again.
  assert.equal(view.heartbeat(heartbeat("d1"), 5_000), "joined");
  // A goodbye from a dispatcher never heard removes nothing.
  assert.equal(view.leave("d9", 5_000), undefined);
});

test("an expired goodbye no longer hides a dispatcher that comes back", () => {
  const view = new HeardDispatchers(TTL);
  view.leave("d1", 1_000);
  view.expire(4_500);
  assert.equal(view.heartbeat(heartbeat("d1"), 4_500), "joined");
});

/** Drops recorded rather than counted. */
class RecordedDrops extends MeshMessageDrops {
  readonly dropped: string[] = [];
  constructor() {
    super(metrics.getMeter("test"), pino({ level: "silent" }));
  }
  override drop(subject: string, reason: DropReason): void {
    this.dropped.push(`${subject} ${reason}`);
  }
}

test("the listener keeps its own heartbeats and goodbye out of the view, and drops what does not decode", () => {
  const NOW = Date.parse("2026-06-01T12:00:00Z");
  const drops = new RecordedDrops();
  const events: string[] = [];
  const listener = new HeartbeatListener({
    ttlMs: TTL,
    drops,
    selfId: "d1",
    events: {
      selfHeard: (nowMs) => events.push(`self ${nowMs - NOW}`),
      heard: (id, change) => events.push(`${id} ${change}`),
      left: (id, known) => events.push(`${id} left ${known ? "known" : "unknown"}`),
    },
  });
  listener.receiveHeartbeat(encodeHeartbeat({ ...heartbeat("d1"), startedAtMs: NOW }), NOW + 1);
  listener.receiveHeartbeat(encodeHeartbeat({ ...heartbeat("d2"), startedAtMs: NOW }), NOW + 2);
  listener.receiveLeave(encodeLeave("d1"), NOW + 3);
  listener.receiveHeartbeat(new TextEncoder().encode('{"id":"ghost"}'), NOW + 4);
  listener.receiveLeave(encodeLeave("not an id"), NOW + 5);
  listener.receiveLeave(encodeLeave("d2"), NOW + 6);
  listener.receiveLeave(encodeLeave("d3"), NOW + 7);
  assert.deepEqual(events, ["self 1", "d2 joined", "d2 left known", "d3 left unknown"]);
  assert.deepEqual(drops.dropped, [
    "mesh.dispatchers.heartbeat undecodable",
    "mesh.dispatchers.leave invalid_id",
  ]);
  assert.deepEqual(listener.heard.list(), []);
});

test("without a self id (the admin) every dispatcher's heartbeat is taken into the view", () => {
  const NOW = Date.parse("2026-06-01T12:00:00Z");
  const listener = new HeartbeatListener({ ttlMs: TTL, drops: new RecordedDrops() });
  listener.receiveHeartbeat(encodeHeartbeat({ ...heartbeat("d1"), startedAtMs: NOW }), NOW);
  assert.deepEqual(ids(listener.heard.list()), ["d1"]);
});
