// ScheduleService and the schedule advancer against real processes: the timer service, two
// dispatchers, Postgres and NATS, with a real HTTP receiver.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { hashToken } from "../../services/shared/src/auth.js";
import {
  AmbiguousTimePolicy,
  CreateScheduleRequestSchema,
  MissedFiringPolicy,
  NonexistentTimePolicy,
  OverlapPolicy,
  ScheduleState,
  type CreateScheduleRequest,
  type ScheduleSpec,
  type ScheduleSpecSchema,
} from "../../services/shared/src/gen/timer/v1/schedule_pb.js";
import { FIRING_ID_PATTERN } from "../../services/shared/src/timer-id.js";
import { bufCurl } from "../support/buf-curl.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { startHttpReceiver, type Received } from "../support/receivers.js";
import { GrpcScheduleClient } from "../support/schedule-client.js";
import { waitFor } from "../support/wait.js";

const TOKENS = JSON.stringify([
  { name: "billing-team", sha256: hashToken("billing-secret"), groups: ["billing"] },
  { name: "payroll-team", sha256: hashToken("payroll-secret"), groups: ["payroll"] },
]);

let mesh: TestMesh;
let client: GrpcScheduleClient;
let payroll: GrpcScheduleClient;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
/** Deliveries the receiver is told to take their time over (the overlap test). */
const slow = new Set<string>();
let release: () => void = () => {};
let released = new Promise<void>((r) => {
  release = r;
});

before(async () => {
  receiver = await startHttpReceiver(async (r) => {
    if (slow.has(r.timerId.split("@")[0] ?? "")) await released;
    return 200;
  });
  mesh = await startMesh({
    dispatchers: 2,
    env: { AUTH_TOKENS: TOKENS },
    // The timer service creates (and announces) only the firings due within 2 s: the advancer
    // must create every later one, or the schedules below stop.
    timerEnv: { ANNOUNCE_WINDOW: "2s" },
    // The poll finds firings whatever NATS does; short so a restarted dispatcher catches up soon.
    dispatcherEnv: {
      POLL_INTERVAL: "250ms",
      LOOKAHEAD: "2s",
      SCHEDULE_POLL_INTERVAL: "200ms",
      SCHEDULE_LEAD: "4s",
    },
  });
  client = new GrpcScheduleClient(`127.0.0.1:${mesh.timer.grpcPort}`, "billing-secret");
  payroll = new GrpcScheduleClient(`127.0.0.1:${mesh.timer.grpcPort}`, "payroll-secret");
});
after(async () => {
  release();
  client?.close();
  payroll?.close();
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
});

let counter = 0;
function scheduleReq(
  spec: MessageInitShape<typeof ScheduleSpecSchema>,
  over: Partial<Omit<CreateScheduleRequest, "$typeName">> = {},
): CreateScheduleRequest {
  counter += 1;
  return create(CreateScheduleRequestSchema, {
    groupId: "billing",
    scheduleId: `s${counter}-${Math.random().toString(36).slice(2, 8)}`,
    spec,
    template: {
      callback: { target: { case: "http", value: { url: receiver.url, headers: {} } } },
      payload: new TextEncoder().encode("tick"),
      labels: { team: "billing" },
    },
    ...over,
  });
}

const everySecond = { recurrence: { case: "cron" as const, value: "* * * * * *" } };

function deliveriesOf(scheduleId: string): Received[] {
  return receiver.received.filter((r) => r.timerId.startsWith(`${scheduleId}@`));
}

function instantOf(timerId: string): number {
  return Date.parse(timerId.slice(timerId.indexOf("@") + 1));
}

async function firingStates(
  scheduleId: string,
): Promise<{ timer_id: string; state: number; attempt: number; last_error: string | null }[]> {
  const { rows } = await mesh.db.pool.query(
    "SELECT timer_id, state, attempt, last_error FROM timers WHERE group_id = 'billing' AND schedule_id = $1 ORDER BY timer_id",
    [scheduleId],
  );
  return rows;
}

/** Latest instant among firings not yet delivered (SCHEDULED), or 0. */
async function latestScheduled(scheduleId: string): Promise<number> {
  const rows = await firingStates(scheduleId);
  return Math.max(0, ...rows.filter((r) => r.state === 1).map((r) => instantOf(r.timer_id)));
}

async function expectCode(p: Promise<unknown>, code: grpc.status, field?: string): Promise<void> {
  await assert.rejects(p, (err: grpc.ServiceError) => {
    assert.equal(
      err.code,
      code,
      `expected ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`,
    );
    if (field) assert.ok(err.details.includes(field), `message should name ${field}: ${err.details}`);
    return true;
  });
}

/** Every delivered firing: id pattern, once each, never before its instant. */
function checkDeliveries(list: Received[]): void {
  const ids = list.filter((r) => r.attempt === 1).map((r) => r.timerId);
  assert.equal(new Set(ids).size, ids.length, `a firing was delivered twice: ${ids.join(", ")}`);
  for (const r of list) {
    assert.match(r.timerId, FIRING_ID_PATTERN);
    assert.equal(r.groupId, "billing");
    assert.ok(
      r.receivedAtMs >= instantOf(r.timerId),
      `${r.timerId} arrived early, at ${new Date(r.receivedAtMs).toISOString()}`,
    );
  }
}

describe("firing", () => {
  test("an every-second schedule delivers each firing once, never early, and its next firing always exists", async () => {
    const req = scheduleReq(everySecond);
    const res = await client.call("createSchedule", req);
    assert.equal(res.created, true);
    const s = res.schedule!;
    assert.equal(s.state, ScheduleState.ACTIVE);
    assert.ok(s.nextFirings.length >= 1, "the first firing is stored with the schedule");
    const first = s.nextFirings[0]!;
    assert.equal(
      first.timerId,
      `${req.scheduleId}@${new Date(timestampMs(first.instant!)).toISOString().slice(0, 19)}Z`,
    );
    for (let seen = 1; seen <= 5; seen++) {
      await waitFor(() => deliveriesOf(req.scheduleId).length >= seen, 20_000, `firing ${seen}`);
      const delivered = Math.max(...deliveriesOf(req.scheduleId).map((r) => instantOf(r.timerId)));
      assert.ok(
        (await latestScheduled(req.scheduleId)) > delivered,
        "a later firing exists after each delivery",
      );
    }
    const list = deliveriesOf(req.scheduleId);
    checkDeliveries(list);
    assert.equal(list[0]?.body.toString(), "tick");
    const got = await client.call("getSchedule", {
      $typeName: "timer.v1.GetScheduleRequest",
      groupId: "billing",
      scheduleId: req.scheduleId,
    });
    assert.ok(got.schedule!.nextFirings.length >= 1);
    assert.ok(timestampMs(got.schedule!.lastInstant!) > instantOf(list[0]!.timerId));
    const { rows } = await mesh.db.pool.query("SELECT labels FROM timers WHERE schedule_id = $1 LIMIT 1", [
      req.scheduleId,
    ]);
    assert.deepEqual(rows[0].labels, { schedule: req.scheduleId, team: "billing" });
    await client.call("deleteSchedule", {
      $typeName: "timer.v1.DeleteScheduleRequest",
      groupId: "billing",
      scheduleId: req.scheduleId,
    });
  });

  test("a dispatcher restart loses no firing and duplicates none", async () => {
    const req = scheduleReq(everySecond);
    await client.call("createSchedule", req);
    await waitFor(() => deliveriesOf(req.scheduleId).length >= 2, 20_000, "the first firings");
    const stopped = mesh.dispatchers[0]!;
    await stopped.stop("SIGKILL");
    const restartedAt = Date.now();
    await mesh.addDispatcher("d1-again");
    await waitFor(
      () => deliveriesOf(req.scheduleId).some((r) => instantOf(r.timerId) > restartedAt + 3_000),
      30_000,
      "firings after the restart",
    );
    await client.call("pauseSchedule", {
      $typeName: "timer.v1.PauseScheduleRequest",
      groupId: "billing",
      scheduleId: req.scheduleId,
    });
    // Everything still in flight finishes (paused: nothing new starts).
    await waitFor(
      async () => (await firingStates(req.scheduleId)).every((r) => r.state !== 1 && r.state !== 2),
      30_000,
      "in-flight firings to finish",
    );
    const list = deliveriesOf(req.scheduleId);
    checkDeliveries(list);
    const instants = [...new Set(list.map((r) => instantOf(r.timerId)))].sort((a, b) => a - b);
    const succeeded = (await firingStates(req.scheduleId))
      .filter((r) => r.state === 3)
      .map((r) => instantOf(r.timer_id));
    assert.deepEqual(
      instants,
      succeeded.sort((a, b) => a - b),
      "every delivered firing succeeded, and only those",
    );
    for (let i = 1; i < instants.length; i++) {
      assert.equal(
        instants[i]! - instants[i - 1]!,
        1000,
        `no second lost between ${new Date(instants[i - 1]!).toISOString()} and the next`,
      );
    }
  });
});

describe("lifecycle", () => {
  test("pause stops firings, resume goes on and fires missed ones under ALL", async () => {
    const req = scheduleReq({
      recurrence: { case: "interval", value: { interval: durationFromMs(1000) } },
      missedFiringPolicy: MissedFiringPolicy.ALL,
    });
    const key = { groupId: "billing", scheduleId: req.scheduleId };
    await client.call("createSchedule", req);
    await waitFor(() => deliveriesOf(req.scheduleId).length >= 1, 20_000, "a firing");
    const paused = await client.call("pauseSchedule", { $typeName: "timer.v1.PauseScheduleRequest", ...key });
    const pausedAt = Date.now();
    assert.equal(paused.schedule!.state, ScheduleState.PAUSED);
    assert.equal(
      paused.schedule!.nextFirings.filter((f) => timestampMs(f.instant!) > pausedAt + 1000).length,
      0,
    );
    const waiting = (await firingStates(req.scheduleId)).filter((r) => r.state === 1);
    assert.deepEqual(waiting, [], "no firing waits while paused");
    // Let a few instants pass while paused (measured on the clock, not slept over).
    await waitFor(() => Date.now() > pausedAt + 2_500, 10_000, "instants to pass");
    const resumed = await client.call("resumeSchedule", {
      $typeName: "timer.v1.ResumeScheduleRequest",
      ...key,
    });
    assert.equal(resumed.schedule!.state, ScheduleState.ACTIVE);
    await waitFor(
      () =>
        deliveriesOf(req.scheduleId).some(
          (r) => instantOf(r.timerId) > pausedAt + 1000 && instantOf(r.timerId) < pausedAt + 2000,
        ),
      20_000,
      "a firing missed while paused to be delivered (ALL)",
    );
    await waitFor(
      () =>
        deliveriesOf(req.scheduleId).some(
          (r) => instantOf(r.timerId) > Date.now() - 1500 && r.receivedAtMs > pausedAt + 3000,
        ),
      20_000,
      "firings to go on",
    );
    checkDeliveries(deliveriesOf(req.scheduleId));
    await client.call("deleteSchedule", { $typeName: "timer.v1.DeleteScheduleRequest", ...key });
  });

  test("update replaces the next firing; a stale expected_version is ABORTED", async () => {
    const req = scheduleReq({ recurrence: { case: "cron", value: "0 0 3 * * *" } });
    const key = { groupId: "billing", scheduleId: req.scheduleId };
    const created = (await client.call("createSchedule", req)).schedule!;
    const before = created.nextFirings[0]!;
    assert.equal(new Date(timestampMs(before.instant!)).toISOString().slice(11, 19), "03:00:00");
    const updated = await client.call("updateSchedule", {
      $typeName: "timer.v1.UpdateScheduleRequest",
      ...key,
      expectedVersion: created.version,
      spec: create(CreateScheduleRequestSchema, {
        spec: { recurrence: { case: "cron", value: "0 0 4 * * *" } },
      }).spec!,
      template: req.template!,
    });
    const s = updated.schedule!;
    assert.equal(s.version, created.version + 1n);
    assert.equal(s.nextFirings.length, 1);
    assert.equal(new Date(timestampMs(s.nextFirings[0]!.instant!)).toISOString().slice(11, 19), "04:00:00");
    const states = await firingStates(req.scheduleId);
    assert.equal(
      states.find((r) => r.timer_id === before.timerId)?.state,
      5,
      "the old next firing is cancelled",
    );
    await expectCode(
      client.call("updateSchedule", {
        $typeName: "timer.v1.UpdateScheduleRequest",
        ...key,
        expectedVersion: created.version,
        spec: req.spec!,
        template: req.template!,
      }),
      grpc.status.ABORTED,
    );
  });

  test("delete cancels the firings not started and the schedule is gone", async () => {
    const req = scheduleReq({ recurrence: { case: "cron", value: "0 0 3 * * *" } });
    const key = { groupId: "billing", scheduleId: req.scheduleId };
    await client.call("createSchedule", req);
    const res = await client.call("deleteSchedule", { $typeName: "timer.v1.DeleteScheduleRequest", ...key });
    assert.equal(res.cancelledFirings, 1);
    assert.deepEqual(
      (await firingStates(req.scheduleId)).map((r) => r.state),
      [5],
    );
    await expectCode(
      client.call("getSchedule", { $typeName: "timer.v1.GetScheduleRequest", ...key }),
      grpc.status.NOT_FOUND,
    );
  });

  test("a replayed create returns the stored schedule; a different one under the id is ALREADY_EXISTS", async () => {
    const req = scheduleReq({
      recurrence: { case: "cron", value: "0 0 3 * * *" },
      timeZone: "Europe/Berlin",
    });
    const first = await client.call("createSchedule", req);
    const replay = await client.call("createSchedule", req);
    assert.equal(replay.created, false);
    assert.equal(replay.schedule!.version, first.schedule!.version);
    await expectCode(
      client.call("createSchedule", { ...req, spec: { ...req.spec!, timeZone: "Asia/Tokyo" } }),
      grpc.status.ALREADY_EXISTS,
    );
    assert.equal((await firingStates(req.scheduleId)).length, 1, "one firing stored, whatever the replays");
  });

  test("another group's token is PERMISSION_DENIED", async () => {
    const req = scheduleReq({ recurrence: { case: "cron", value: "0 0 3 * * *" } });
    await client.call("createSchedule", req);
    const key = { groupId: "billing", scheduleId: req.scheduleId };
    await expectCode(payroll.call("createSchedule", scheduleReq(everySecond)), grpc.status.PERMISSION_DENIED);
    await expectCode(
      payroll.call("getSchedule", { $typeName: "timer.v1.GetScheduleRequest", ...key }),
      grpc.status.PERMISSION_DENIED,
    );
    await expectCode(
      payroll.call("listSchedules", {
        $typeName: "timer.v1.ListSchedulesRequest",
        groupId: "billing",
        pageSize: 0,
        pageToken: "",
      }),
      grpc.status.PERMISSION_DENIED,
    );
    await expectCode(
      payroll.call("deleteSchedule", { $typeName: "timer.v1.DeleteScheduleRequest", ...key }),
      grpc.status.PERMISSION_DENIED,
    );
    await expectCode(
      payroll.call("previewSchedule", { $typeName: "timer.v1.PreviewScheduleRequest", ...key, count: 1 }),
      grpc.status.PERMISSION_DENIED,
    );
    const listed = await client.call("listSchedules", {
      $typeName: "timer.v1.ListSchedulesRequest",
      groupId: "billing",
      pageSize: 1,
      pageToken: "",
    });
    assert.equal(listed.schedules.length, 1);
    assert.notEqual(listed.nextPageToken, "");
  });

  test("validation errors name the field", async () => {
    const cases: [CreateScheduleRequest, string][] = [
      [scheduleReq({ ...everySecond, timeZone: "Mars/Olympus" }), "spec.time_zone"],
      [scheduleReq({ recurrence: { case: "cron", value: "0 0 0 30 2 *" } }), "spec.cron"],
      [scheduleReq({ recurrence: { case: "cron", value: "every day" } }), "spec.cron"],
      [
        scheduleReq({ recurrence: { case: "interval", value: { interval: durationFromMs(500) } } }),
        "spec.interval.interval",
      ],
      [scheduleReq({ ...everySecond, jitter: durationFromMs(2 * 3_600_000) }), "spec.jitter"],
      [scheduleReq(everySecond, { scheduleId: "x".repeat(101) }), "schedule_id"],
      [
        scheduleReq(everySecond, {
          template: { $typeName: "timer.v1.FiringTemplate", payload: new Uint8Array(), labels: {} },
        }),
        "template.callback",
      ],
      [
        scheduleReq(everySecond, {
          template: create(CreateScheduleRequestSchema, {
            template: {
              callback: { target: { case: "http", value: { url: "ftp://example.com/x", headers: {} } } },
            },
          }).template!,
        }),
        "template.callback.http.url",
      ],
    ];
    for (const [req, field] of cases)
      await expectCode(client.call("createSchedule", req), grpc.status.INVALID_ARGUMENT, field);
    const { rows } = await mesh.db.pool.query(
      "SELECT count(*)::int AS n FROM schedules WHERE schedule_id = ANY($1)",
      [cases.map(([r]) => r.scheduleId)],
    );
    assert.equal(rows[0].n, 0);
  });
});

describe("overlap", () => {
  test("OVERLAP_POLICY_SKIP: firings due while one is still being delivered end CANCELLED naming it", async () => {
    const req = scheduleReq({ ...everySecond, overlapPolicy: OverlapPolicy.SKIP });
    slow.add(req.scheduleId);
    const key = { groupId: "billing", scheduleId: req.scheduleId };
    await client.call("createSchedule", req);
    await waitFor(
      () => deliveriesOf(req.scheduleId).length >= 1,
      20_000,
      "the first firing to reach the slow receiver",
    );
    const busy = deliveriesOf(req.scheduleId)[0]!.timerId;
    const skipped = await waitFor(
      async () =>
        (await firingStates(req.scheduleId)).filter((r) => r.state === 5 && r.last_error?.includes(busy))
          .length >= 2 || undefined,
      20_000,
      "later firings to be cancelled by the overlap",
    );
    assert.ok(skipped);
    assert.equal(
      deliveriesOf(req.scheduleId).length,
      1,
      "nothing else started while the first was in progress",
    );
    release();
    released = Promise.resolve();
    await waitFor(
      () => deliveriesOf(req.scheduleId).length >= 2,
      20_000,
      "firings to go on once the first finished",
    );
    const got = await client.call("getSchedule", { $typeName: "timer.v1.GetScheduleRequest", ...key });
    assert.ok(got.schedule!.skippedFirings >= 2n);
    await client.call("deleteSchedule", { $typeName: "timer.v1.DeleteScheduleRequest", ...key });
  });
});

describe("PreviewSchedule", () => {
  const berlin = (policy: MessageInitShape<typeof ScheduleSpecSchema>) =>
    create(CreateScheduleRequestSchema, {
      spec: { recurrence: { case: "cron", value: "0 30 2 * * *" }, timeZone: "Europe/Berlin", ...policy },
    }).spec!;
  const preview = async (spec: ScheduleSpec, from: string, count: number) =>
    (
      await client.call("previewSchedule", {
        $typeName: "timer.v1.PreviewScheduleRequest",
        groupId: "",
        scheduleId: "",
        spec,
        fromTime: timestampFromMs(Date.parse(from)),
        count,
      })
    ).firings.map((f) => (f.note === "" ? f.localTime : `${f.localTime} ${f.note}`));

  test("is reachable through reflection as the README's example calls it (buf curl, JSON)", async () => {
    const res = await bufCurl<{ firings: { localTime: string; note?: string }[] }>(
      mesh.timer.grpcPort,
      "timer.v1.ScheduleService/PreviewSchedule",
      {
        spec: { cron: "0 30 2 * * *", timeZone: "Europe/Berlin" },
        fromTime: "2026-03-28T00:00:00Z",
        count: 3,
      },
      "billing-secret",
    );
    assert.equal(res.code, undefined, res.stderr);
    assert.deepEqual(
      res.json?.firings.map((f) => f.localTime),
      ["2026-03-28T02:30:00+01:00", "2026-03-29T03:30:00+02:00", "2026-03-30T02:30:00+02:00"],
    );
  });

  test("02:30 Europe/Berlin on 2026-03-29 under each nonexistent-time policy", async () => {
    assert.deepEqual(await preview(berlin({}), "2026-03-28T00:00:00Z", 3), [
      "2026-03-28T02:30:00+01:00",
      "2026-03-29T03:30:00+02:00 shifted forward: 02:30 does not exist on 2026-03-29",
      "2026-03-30T02:30:00+02:00",
    ]);
    assert.deepEqual(
      await preview(berlin({ nonexistentTimePolicy: NonexistentTimePolicy.SKIP }), "2026-03-28T00:00:00Z", 2),
      ["2026-03-28T02:30:00+01:00", "2026-03-30T02:30:00+02:00"],
    );
  });

  test("02:30 Europe/Berlin on 2026-10-25 under each ambiguous-time policy", async () => {
    const from = "2026-10-25T00:00:00Z";
    assert.deepEqual(await preview(berlin({}), from, 1), ["2026-10-25T02:30:00+02:00 first of two 02:30"]);
    assert.deepEqual(await preview(berlin({ ambiguousTimePolicy: AmbiguousTimePolicy.LAST }), from, 1), [
      "2026-10-25T02:30:00+01:00 second of two 02:30",
    ]);
    assert.deepEqual(await preview(berlin({ ambiguousTimePolicy: AmbiguousTimePolicy.BOTH }), from, 3), [
      "2026-10-25T02:30:00+02:00 first of two 02:30",
      "2026-10-25T02:30:00+01:00 second of two 02:30",
      "2026-10-26T02:30:00+01:00",
    ]);
  });

  test("a stored schedule's preview carries its firings' timer ids", async () => {
    const req = scheduleReq({ recurrence: { case: "cron", value: "0 0 3 * * *" } });
    await client.call("createSchedule", req);
    const res = await client.call("previewSchedule", {
      $typeName: "timer.v1.PreviewScheduleRequest",
      groupId: "billing",
      scheduleId: req.scheduleId,
      fromTime: timestampFromMs(Date.parse("2030-01-01T00:00:00Z")),
      count: 2,
    });
    assert.equal(res.timeZone, "UTC");
    assert.deepEqual(
      res.firings.map((f) => f.timerId),
      [`${req.scheduleId}@2030-01-01T03:00:00Z`, `${req.scheduleId}@2030-01-02T03:00:00Z`],
    );
  });
});
