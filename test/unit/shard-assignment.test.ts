// The dispatcher's shard assignment and drain (shard-assignment.ts), with a fake membership and
// lease keeper: what it asks the leases for, and what it tells the others.
import assert from "node:assert/strict";
import { test } from "node:test";
import { pino } from "pino";
import { ShardAssignment } from "../../services/dispatcher/src/shard-assignment.js";
import { shardsOf } from "../../services/dispatcher/src/shard-ring.js";

const SHARDS = 64;

function setUp(active = ["d1", "d2"]) {
  const desired: number[][] = [];
  const drainingFlags: boolean[] = [];
  let owned: number[] = [];
  let ticks = 0;
  const assignment = new ShardAssignment({
    dispatcherId: "d1",
    shardCount: SHARDS,
    membership: {
      activeIds: () => active,
      setDraining: (d) => {
        drainingFlags.push(d);
      },
    },
    leases: {
      setDesired: (shards) => {
        desired.push(shards);
      },
      tick: async () => {
        ticks++;
        // The keeper releases what is no longer desired.
        owned = owned.filter((s) => desired.at(-1)?.includes(s));
      },
      owned: () => owned,
    },
    log: pino({ level: "silent" }),
  });
  return {
    assignment,
    desired,
    drainingFlags,
    own: (shards: number[]) => {
      owned = shards;
    },
    ticks: () => ticks,
  };
}

test("a dispatcher asks for its share of the ring among the active members", () => {
  const { assignment, desired } = setUp(["d1", "d2", "d3"]);
  assignment.reassign();
  assert.deepEqual(desired, [shardsOf("d1", ["d1", "d2", "d3"], SHARDS)]);
  assert.ok((desired[0]?.length ?? 0) > 0);
  assert.equal(assignment.draining, false);
});

test("a drain tells the others, asks for no shards, waits for the release and counts it", async () => {
  const { assignment, desired, drainingFlags, own, ticks } = setUp();
  own(shardsOf("d1", ["d1", "d2"], SHARDS));
  const before = shardsOf("d1", ["d1", "d2"], SHARDS).length;
  assert.equal(await assignment.drain(), before);
  assert.deepEqual(drainingFlags, [true]);
  assert.deepEqual(desired.at(-1), []);
  assert.equal(ticks(), 1);
  assert.equal(assignment.draining, true);
  // While draining, any reassignment (a member joins or leaves) still asks for nothing.
  assignment.reassign();
  assert.deepEqual(desired.at(-1), []);
});

test("an undrain takes the dispatcher's share again; undraining one not draining changes nothing", async () => {
  const { assignment, desired, drainingFlags } = setUp();
  assignment.undrain();
  assert.deepEqual(drainingFlags, []);
  await assignment.drain();
  assignment.undrain();
  assert.deepEqual(drainingFlags, [true, false]);
  assert.equal(assignment.draining, false);
  assignment.reassign();
  assert.deepEqual(desired.at(-1), shardsOf("d1", ["d1", "d2"], SHARDS));
});

test("at shutdown the dispatcher asks for no shards, without announcing a drain", () => {
  const { assignment, desired, drainingFlags } = setUp();
  assignment.stopTaking();
  assignment.reassign();
  assert.deepEqual(desired, [[]]);
  assert.deepEqual(drainingFlags, []);
});
