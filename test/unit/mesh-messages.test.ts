// The mesh's NATS messages: what each receiver accepts and what it drops (with which reason).
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { metrics } from "@opentelemetry/api";
import { pino } from "pino";
import { Writable } from "node:stream";
import {
  DispatcherHeartbeatSchema,
  RebalanceReplySchema,
  TimerAnnouncementSchema,
} from "../../services/shared/src/gen/mesh/v1/mesh_pb.js";
import { MeshMessageDrops } from "../../services/shared/src/mesh-message-drops.js";
import {
  decodeAnnouncements,
  decodeHeartbeat,
  decodeLeave,
  decodeRebalanceReply,
  decodeRebalanceRequest,
  encodeAnnouncement,
  encodeAnnouncements,
  encodeHeartbeat,
  encodeLeave,
  encodeRebalanceReply,
  encodeRebalanceRequest,
  isHostPort,
  MAX_ANNOUNCED_PER_MESSAGE,
  MAX_ANNOUNCEMENT_BYTES,
  type Announcement,
} from "../../services/shared/src/mesh-messages.js";
import { shardOf } from "../../services/shared/src/shard.js";

const SHARDS = 64;
const NOW = Date.parse("2026-06-01T12:00:00Z");
const bytes = (s: string) => new TextEncoder().encode(s);

function announcement(over: Partial<Announcement> = {}): Announcement {
  const groupId = over.groupId ?? "billing";
  const timerId = over.timerId ?? "invoice-42";
  return {
    groupId,
    timerId,
    shard: shardOf(groupId, timerId, SHARDS),
    dueMs: NOW + 5_000,
    destination: "http://127.0.0.1:9000",
    version: 3,
    ...over,
  };
}

const reasonOf = (d: { ok: boolean; reason?: string }) => (d.ok ? "ok" : d.reason);

test("an announcement survives the round trip", () => {
  const a = announcement();
  assert.deepEqual(decodeAnnouncements(encodeAnnouncement(a), a.shard, SHARDS, NOW), {
    ok: true,
    value: [a],
  });
});

test("the issue's JSON announcement, and protobuf ones with bad ids, shards or times, are refused", () => {
  const a = announcement();
  // What a tenant's NATS callback used to inject: it wedged every claim batch of the shard.
  const json = bytes(JSON.stringify({ g: ["a", "b"], t: "x", s: 0, at: NOW }));
  assert.equal(decodeAnnouncements(json, 0, SHARDS, NOW).ok, false);
  assert.equal(
    reasonOf(decodeAnnouncements(new Uint8Array([0xff, 0xff, 0xff]), a.shard, SHARDS, NOW)),
    "undecodable",
  );
  for (const groupId of ['{"a","b"}', "", "a b", "x".repeat(129), "-lead", "grüße"]) {
    const bad = toBinary(
      TimerAnnouncementSchema,
      create(TimerAnnouncementSchema, { groupId, timerId: "t", shard: 0, dueAtMs: BigInt(NOW) }),
    );
    assert.equal(reasonOf(decodeAnnouncements(bad, 0, SHARDS, NOW)), "invalid_id", groupId);
  }
  const other = (a.shard + 1) % SHARDS;
  assert.equal(
    reasonOf(decodeAnnouncements(encodeAnnouncement({ ...a, shard: other }), other, SHARDS, NOW)),
    "invalid_shard",
    "not the shard the key hashes to",
  );
  assert.equal(
    reasonOf(decodeAnnouncements(encodeAnnouncement(a), other, SHARDS, NOW)),
    "invalid_shard",
    "not the subject's shard",
  );
  assert.equal(
    reasonOf(decodeAnnouncements(encodeAnnouncement(a), a.shard, a.shard, NOW)),
    "invalid_shard",
    "beyond SHARD_COUNT",
  );
  assert.equal(
    reasonOf(decodeAnnouncements(encodeAnnouncement({ ...a, dueMs: 0 }), a.shard, SHARDS, NOW)),
    "invalid_time",
  );
  assert.equal(
    reasonOf(
      decodeAnnouncements(
        encodeAnnouncement({ ...a, dueMs: NOW + 10 * 365 * 86_400_000 }),
        a.shard,
        SHARDS,
        NOW,
      ),
    ),
    "invalid_time",
  );
  assert.equal(
    reasonOf(
      decodeAnnouncements(encodeAnnouncement({ ...a, destination: "x".repeat(301) }), a.shard, SHARDS, NOW),
    ),
    "invalid_field",
  );
  assert.equal(
    reasonOf(decodeAnnouncements(new Uint8Array(MAX_ANNOUNCEMENT_BYTES + 1), a.shard, SHARDS, NOW)),
    "too_large",
  );
});

test("an announcement carries the timer's version, in the first entry and in `more`; 0 from an old sender", () => {
  const list = announcementsOf(3, 3).map((a, i) => ({ ...a, version: [1, 7, Number.MAX_SAFE_INTEGER][i]! }));
  assert.deepEqual(decodeAnnouncements(encodeAnnouncements(list), 3, SHARDS, NOW), { ok: true, value: list });
  // A sender that predates versions leaves field 7 out: version 0, "claim whatever is stored".
  const a = announcement();
  const old = toBinary(TimerAnnouncementSchema, create(TimerAnnouncementSchema, wireEntry(a)));
  assert.deepEqual(decodeAnnouncements(old, a.shard, SHARDS, NOW), {
    ok: true,
    value: [{ ...a, destination: "", version: 0 }],
  });
});

test("a negative version, or one beyond a safe integer, refuses the message as invalid_field", () => {
  const [a, b] = announcementsOf(3, 2);
  for (const version of [-1n, BigInt(Number.MAX_SAFE_INTEGER) + 1n, -(2n ** 63n)]) {
    const first = toBinary(
      TimerAnnouncementSchema,
      create(TimerAnnouncementSchema, { ...wireEntry(a!), version }),
    );
    assert.equal(reasonOf(decodeAnnouncements(first, 3, SHARDS, NOW)), "invalid_field", `${version}`);
    const inMore = toBinary(
      TimerAnnouncementSchema,
      create(TimerAnnouncementSchema, { ...wireEntry(a!), more: [{ ...wireEntry(b!), version }] }),
    );
    assert.equal(reasonOf(decodeAnnouncements(inMore, 3, SHARDS, NOW)), "invalid_field", `more: ${version}`);
  }
});

/** An announcement's fields as the wire message has them, for forging messages the encoder refuses to write. */
function wireEntry(a: Announcement) {
  return { groupId: a.groupId, timerId: a.timerId, shard: a.shard, dueAtMs: BigInt(a.dueMs) };
}

/** `n` announcements of distinct timers of `shard` (ids searched for: the shard is the key's hash). */
function announcementsOf(shard: number, n: number, idLength = 8): Announcement[] {
  const out: Announcement[] = [];
  for (let i = 0; out.length < n; i++) {
    const timerId = `t${i}`.padEnd(idLength, "x");
    if (shardOf("billing", timerId, SHARDS) === shard) out.push(announcement({ timerId, shard }));
  }
  return out;
}

test("one message carries many timers of a shard, up to MAX_ANNOUNCED_PER_MESSAGE, in order", () => {
  const list = announcementsOf(3, MAX_ANNOUNCED_PER_MESSAGE);
  assert.deepEqual(decodeAnnouncements(encodeAnnouncements(list), 3, SHARDS, NOW), { ok: true, value: list });
  assert.throws(() => encodeAnnouncements([...list, list[0]!]), /1 to 1000 timers/);
  // A forged message beyond the count is refused (encoded by hand: the encoder will not).
  const tooMany = toBinary(
    TimerAnnouncementSchema,
    create(TimerAnnouncementSchema, { ...wireEntry(list[0]!), more: list.map(wireEntry) }),
  );
  assert.equal(reasonOf(decodeAnnouncements(tooMany, 3, SHARDS, NOW)), "too_large");
});

test("the largest valid batch fits MAX_ANNOUNCEMENT_BYTES: 1,000 timers with 128-character ids and 300-character destinations", () => {
  const groupId = "g".repeat(128);
  const long: Announcement[] = [];
  for (let i = 0; long.length < MAX_ANNOUNCED_PER_MESSAGE; i++) {
    const timerId = `t${i}`.padEnd(128, "x");
    if (shardOf(groupId, timerId, SHARDS) === 5)
      long.push({
        groupId,
        timerId,
        shard: 5,
        dueMs: NOW + 86_400_000,
        destination: "d".repeat(300),
        version: Number.MAX_SAFE_INTEGER,
      });
  }
  const data = encodeAnnouncements(long);
  assert.ok(data.length <= MAX_ANNOUNCEMENT_BYTES, `${data.length} bytes`);
  assert.deepEqual(decodeAnnouncements(data, 5, SHARDS, NOW), { ok: true, value: long });
});

test("every entry of a batch is checked: one bad entry refuses the message, and entries may not nest", () => {
  const list = announcementsOf(7, 5);
  const bad = (i: number, over: Partial<Announcement>) =>
    list.map((a, j) => (i === j ? { ...a, ...over } : a));
  assert.equal(
    reasonOf(decodeAnnouncements(encodeAnnouncements(bad(3, { timerId: "bad id" })), 7, SHARDS, NOW)),
    "invalid_id",
  );
  assert.equal(
    reasonOf(
      decodeAnnouncements(
        encodeAnnouncements(bad(4, { timerId: announcementsOf(8, 1)[0]!.timerId })),
        7,
        SHARDS,
        NOW,
      ),
    ),
    "invalid_shard",
  );
  assert.equal(
    reasonOf(decodeAnnouncements(encodeAnnouncements(bad(1, { dueMs: 0 })), 7, SHARDS, NOW)),
    "invalid_time",
  );
  assert.equal(
    reasonOf(decodeAnnouncements(encodeAnnouncements(bad(2, { destination: "a\nb" })), 7, SHARDS, NOW)),
    "invalid_field",
  );
  const nested = toBinary(
    TimerAnnouncementSchema,
    create(TimerAnnouncementSchema, {
      ...wireEntry(list[0]!),
      more: [{ ...wireEntry(list[1]!), more: [wireEntry(list[2]!)] }],
    }),
  );
  assert.equal(reasonOf(decodeAnnouncements(nested, 7, SHARDS, NOW)), "invalid_field");
});

test("a receiver that predates `more` still reads the first timer of a batch", () => {
  const list = announcementsOf(9, 3);
  const data = encodeAnnouncements(list);
  const old = fromBinary(TimerAnnouncementSchema, data);
  assert.deepEqual(
    [old.groupId, old.timerId, old.shard, Number(old.dueAtMs)],
    [list[0]!.groupId, list[0]!.timerId, 9, list[0]!.dueMs],
  );
});

test("a heartbeat survives the round trip; a malformed one is refused with its reason", () => {
  const hb = {
    dispatcherId: "d1",
    grpcAddress: "10.0.0.7:50052",
    version: "1.2.3",
    startedAtMs: NOW - 1_000,
    draining: true,
  };
  assert.deepEqual(decodeHeartbeat(encodeHeartbeat(hb), NOW), { ok: true, value: hb });
  // The JSON heartbeat of earlier versions (and of a tenant's forged callback) is no heartbeat.
  assert.equal(
    decodeHeartbeat(
      bytes(JSON.stringify({ id: "ghost", grpc: "127.0.0.1:1", version: "x", started: 0, draining: false })),
      NOW,
    ).ok,
    false,
  );
  assert.equal(reasonOf(decodeHeartbeat(encodeHeartbeat({ ...hb, dispatcherId: "" }), NOW)), "invalid_id");
  assert.equal(
    reasonOf(decodeHeartbeat(encodeHeartbeat({ ...hb, grpcAddress: "evil.example/steal" }), NOW)),
    "invalid_address",
  );
  assert.equal(
    reasonOf(decodeHeartbeat(encodeHeartbeat({ ...hb, startedAtMs: NOW + 3_600_000 }), NOW)),
    "invalid_time",
  );
  assert.equal(reasonOf(decodeHeartbeat(encodeHeartbeat({ ...hb, version: "v\n1" }), NOW)), "invalid_field");
  // Every C0 control character and DEL is refused; the printable characters around them are not.
  for (const c of ["\u0000", "\u001f", "\u007f"])
    assert.equal(
      reasonOf(decodeHeartbeat(encodeHeartbeat({ ...hb, version: `v${c}1` }), NOW)),
      "invalid_field",
    );
  for (const c of [" ", "~", "\u0080", "é"])
    assert.equal(reasonOf(decodeHeartbeat(encodeHeartbeat({ ...hb, version: `v${c}1` }), NOW)), "ok");
  const huge = toBinary(
    DispatcherHeartbeatSchema,
    create(DispatcherHeartbeatSchema, {
      ...hb,
      startedAtMs: BigInt(hb.startedAtMs),
      version: "v".repeat(5000),
    }),
  );
  assert.equal(reasonOf(decodeHeartbeat(huge, NOW)), "too_large");
});

test("grpc addresses are host:port with a DNS name, an IPv4 address or a bracketed IPv6 address", () => {
  for (const ok of [
    "127.0.0.1:50052",
    "[::1]:50052",
    "dispatcher-0.dispatcher.timers.svc.cluster.local:50052",
    "host:1",
    "host:65535",
  ]) {
    assert.ok(isHostPort(ok), ok);
  }
  for (const bad of [
    "",
    "host",
    "host:",
    ":50052",
    "host:0",
    "host:65536",
    "a b:1",
    "::1:50052",
    "[nonsense]:1",
    "1.2.3:80",
    "host:80/x",
    "user@host:1",
    "-host:1",
  ]) {
    assert.ok(!isHostPort(bad), bad);
  }
});

test("a goodbye is a DispatcherLeave; the bare id text of earlier versions is refused", () => {
  assert.deepEqual(decodeLeave(encodeLeave("d2")), { ok: true, value: "d2" });
  assert.equal(decodeLeave(bytes("d2")).ok, false);
  assert.equal(reasonOf(decodeLeave(encodeLeave("not an id"))), "invalid_id");
});

test("rebalance requests and replies: ids checked, counts bounded", () => {
  assert.deepEqual(decodeRebalanceRequest(encodeRebalanceRequest([])), { ok: true, value: { undrain: [] } });
  assert.deepEqual(decodeRebalanceRequest(encodeRebalanceRequest(["d1", "d2"])), {
    ok: true,
    value: { undrain: ["d1", "d2"] },
  });
  assert.equal(reasonOf(decodeRebalanceRequest(encodeRebalanceRequest(["d1", "bad id"]))), "invalid_id");
  assert.equal(
    reasonOf(decodeRebalanceRequest(encodeRebalanceRequest(Array.from({ length: 257 }, (_, i) => `d${i}`)))),
    "too_large",
  );
  assert.equal(decodeRebalanceRequest(bytes('{"undrain":["d1"]}')).ok, false);

  const reply = { dispatcherId: "d1", draining: false, ownedShards: 21 };
  assert.deepEqual(decodeRebalanceReply(encodeRebalanceReply(reply), SHARDS), { ok: true, value: reply });
  assert.equal(
    reasonOf(decodeRebalanceReply(encodeRebalanceReply({ ...reply, ownedShards: SHARDS + 1 }), SHARDS)),
    "invalid_shard",
  );
  const negative = toBinary(
    RebalanceReplySchema,
    create(RebalanceReplySchema, { dispatcherId: "d1", ownedShards: -1 }),
  );
  assert.equal(reasonOf(decodeRebalanceReply(negative, SHARDS)), "invalid_shard");
});

test("drops are logged at most once per subject per interval, with the count since the last line", () => {
  const lines: { subject: string; dropped: number; reasons: string[] }[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      lines.push(JSON.parse(String(chunk)));
      done();
    },
  });
  const drops = new MeshMessageDrops(metrics.getMeter("test"), pino(sink), 10_000);
  drops.drop("timers.shard.*", "undecodable", 0);
  for (let i = 1; i < 500; i++) drops.drop("timers.shard.*", i % 2 ? "invalid_id" : "undecodable", i);
  drops.drop("mesh.dispatchers.heartbeat", "invalid_address", 600);
  drops.drop("timers.shard.*", "invalid_shard", 10_000);
  assert.deepEqual(
    lines.map((l) => [l.subject, l.dropped, [...l.reasons].sort()]),
    [
      ["timers.shard.*", 1, ["undecodable"]],
      ["mesh.dispatchers.heartbeat", 1, ["invalid_address"]],
      ["timers.shard.*", 500, ["invalid_id", "invalid_shard", "undecodable"]],
    ],
  );
});
