// The operator console in a real browser: Debian's Chromium, headless, driven by playwright-core,
// against a real mesh (Postgres, nats-server, timer service, a dispatcher, the admin service that
// serves the console) with real timers delivered to a real receiver. It walks the on-call
// questions: sign in, the shard map, a failed timer found, explained and retried, a group paused,
// the audit trail, the load ahead, schedules, and a group token refused the admin pages.
// Every page is saved as a screenshot under test-results/console/ (the README links there).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { hashToken } from "../../services/shared/src/auth.js";
import { ScheduleService } from "../../services/shared/src/gen/timer/v1/schedule_pb.js";
import {
  CreateTimerRequestSchema,
  RetryPolicySchema,
  TimerService,
  TimerState,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { spanContextOf } from "../../services/shared/src/telemetry/trace-context.js";
import { collectPageErrors, launchChromium, screenshot } from "../support/browser.js";
import { startMesh, type TestMesh } from "../support/mesh.js";
import { type Received, startHttpReceiver } from "../support/receivers.js";
import { startService, type ServiceProcess } from "../support/service-process.js";
import { waitForShardOwners } from "../support/shard-owners.js";
import { waitFor } from "../support/wait.js";

/** The production shard count: the map shows all 1,024. */
const SHARDS = 1024;
const OPS = "ops-console-5b1e8c2d7a9f43";
const ORDERS = "orders-console-3e7a1d9c4b2f61";
const TOKENS = JSON.stringify([
  { name: "ops", sha256: hashToken(OPS), admin: true },
  { name: "ci-orders", sha256: hashToken(ORDERS), groups: ["orders"] },
]);
const JAEGER = "http://jaeger.test:16686";
/** How long a step may take before the test fails naming it (never a bound on correctness). */
const STEP_MS = 30_000;

let mesh: TestMesh;
let admin: ServiceProcess;
let receiver: Awaited<ReturnType<typeof startHttpReceiver>>;
let timers: Client<typeof TimerService>;
let browser: Browser;
let consoleUrl: string;
/** The receiver answers 500 to orders/charge-7 until the "fix" is deployed. */
let receiverFixed = false;

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
const deliveriesOf = (group: string, id: string): Received[] =>
  receiver.received.filter((r) => r.groupId === group && r.timerId === id);

before(async () => {
  receiver = await startHttpReceiver((r) => {
    if (r.groupId === "orders" && r.timerId === "charge-7" && !receiverFixed) return 500;
    if (r.groupId === "billing") return 400; // a permanent failure: FAILED at once
    return 200;
  });
  mesh = await startMesh({ dispatchers: 1, env: { SHARD_COUNT: String(SHARDS), AUTH_TOKENS: TOKENS } });
  // DISPATCHER_TOKEN: the admin presents it to the dispatchers when it drains one.
  admin = await startService("admin", {
    ...mesh.envFor("admin"),
    JAEGER_UI_URL: JAEGER,
    DISPATCHER_TOKEN: OPS,
  });
  assert.ok(admin.consolePort, "the admin service serves the console");
  consoleUrl = `http://127.0.0.1:${admin.consolePort}/`;
  timers = createClient(
    TimerService,
    createGrpcTransport({ baseUrl: `http://127.0.0.1:${mesh.timer.grpcPort}` }),
  );
  await waitForShardOwners(mesh.db.pool, 1, SHARDS, STEP_MS);
  await seedTimers();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await admin?.[Symbol.asyncDispose]();
  await mesh?.[Symbol.asyncDispose]();
  await receiver?.close();
});

/** What the pages show: a timer that failed, its group's future work, a failing group, a schedule. */
async function seedTimers(): Promise<void> {
  const callback = { target: { case: "http" as const, value: { url: receiver.url, headers: {} } } };
  const soon = (groupId: string, timerId: string, extra: Partial<{ maxAttempts: number }> = {}) =>
    create(CreateTimerRequestSchema, {
      groupId,
      timerId,
      schedule: { case: "delay", value: durationFromMs(0) },
      callback,
      retryPolicy: create(RetryPolicySchema, {
        maxAttempts: extra.maxAttempts ?? 2,
        initialBackoff: durationFromMs(100),
      }),
    });
  // Sent with a traceparent: the console links the timer to the trace of its creation.
  await timers.createTimer(soon("orders", "charge-7"), {
    headers: {
      authorization: `Bearer ${OPS}`,
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    },
  });
  for (let i = 1; i <= 3; i++) await timers.createTimer(soon("billing", `invoice-${i}`), as(OPS));
  // Work ahead, for the groups' counts and the load-ahead chart.
  for (let i = 0; i < 30; i++) {
    await timers.createTimer(
      create(CreateTimerRequestSchema, {
        groupId: i % 3 === 0 ? "billing" : "orders",
        timerId: `later-${i}`,
        schedule: { case: "delay", value: durationFromMs(5 * 60_000 + i * 60_000) },
        callback,
      }),
      as(OPS),
    );
  }
  const schedules = createClient(
    ScheduleService,
    createGrpcTransport({ baseUrl: `http://127.0.0.1:${mesh.timer.grpcPort}` }),
  );
  await schedules.createSchedule(
    {
      groupId: "orders",
      scheduleId: "nightly-report",
      spec: { recurrence: { case: "cron", value: "0 30 2 * * *" }, timeZone: "Europe/Berlin" },
      template: { callback },
    },
    as(ORDERS),
  );
  await waitFor(
    async () => {
      const { rows } = await mesh.db.pool.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM timers WHERE state = $1 AND timer_id IN ('charge-7', 'invoice-1', 'invoice-2', 'invoice-3')",
        [TimerState.FAILED],
      );
      return rows[0]?.n === 4;
    },
    STEP_MS,
    "charge-7 and the billing invoices to fail",
  );
}

async function signedIn(token: string): Promise<{ context: BrowserContext; page: Page; errors: string[] }> {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const errors = collectPageErrors(page);
  const res = await page.goto(consoleUrl);
  assert.ok(res, "the console answers");
  assert.match(res.headers()["content-security-policy"] ?? "", /default-src 'none'/);
  await page.locator('input[name="token"]').fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  // Signed in, or refused with the reason shown.
  await page.locator('[data-testid="whoami"], .sign-in [role="alert"]').first().waitFor();
  const refused = page.locator('.sign-in [role="alert"]');
  if (await refused.isVisible()) assert.fail(`sign-in refused: ${await refused.textContent()}`);
  return { context, page, errors };
}

/** Follows a link of the navigation, and waits for its page (a field of the last one is not this one's). */
async function openPage(page: Page, link: string, heading: string): Promise<void> {
  await page.getByRole("navigation").getByRole("link", { name: link, exact: true }).click();
  await page.getByRole("heading", { name: heading, exact: true }).waitFor();
}

/** Waits until `selector`'s text contains `text` (the page refreshes itself; no reload). */
async function waitForText(page: Page, selector: string, text: string): Promise<void> {
  await page.locator(selector, { hasText: text }).first().waitFor();
}

test("an admin signs in, reads the mesh, retries a failed timer and pauses a group, all from the console", async () => {
  const { context, page, errors } = await signedIn(OPS);
  try {
    await waitForText(page, '[data-testid="whoami"]', "ops · admin");
    // The token is kept in the tab only: not in the URL, not in a cookie.
    assert.ok(!page.url().includes(OPS), "the token is not in the URL");
    assert.deepEqual(await context.cookies(), [], "the console sets no cookie");
    assert.equal(await page.evaluate('sessionStorage.getItem("timer-console.token")'), OPS);

    // Mesh: "who owns shard 417 and is it behind?"
    await page
      .locator('[data-testid="shard-map"] .cell')
      .nth(SHARDS - 1)
      .waitFor();
    assert.equal(await page.locator('[data-testid="shard-map"] .cell').count(), SHARDS);
    await waitForText(page, '[data-testid="dispatchers"] tr[data-dispatcher="d1"]', "live");
    await page.locator('[data-testid="shard-map"] [data-shard="417"]').click();
    await waitForText(page, '[data-testid="shard-detail"]', "d1");
    await waitForText(page, '[data-testid="shard-detail"]', "417");
    await screenshot(page, "mesh");

    // Failed: "why did this timer not fire?"
    await openPage(page, "Failed", "Failed timers");
    await page.locator('tr[data-timer="orders/charge-7"]').waitFor();
    await waitForText(page, '[data-testid="failed-summary"]', "HTTP 500");
    await screenshot(page, "failed");
    await page.locator('tr[data-timer="orders/charge-7"] a').click();
    await waitForText(page, '[data-testid="timer-state"]', "FAILED");
    await page.locator('[data-testid="attempts"] tbody tr').nth(1).waitFor();
    assert.equal(await page.locator('[data-testid="attempts"] tbody tr').count(), 2);
    await screenshot(page, "timer-failed");
    // Each attempt links to its own trace in Jaeger: the traceparent the receiver got.
    const first = deliveriesOf("orders", "charge-7")[0];
    assert.ok(first, "the receiver saw the first attempt");
    const firstTrace = spanContextOf(first.traceparent)?.traceId;
    assert.ok(firstTrace, `a traceparent on the delivery: ${first.traceparent}`);
    await page.locator(`[data-testid="attempts"] a[href="${JAEGER}/trace/${firstTrace}"]`).waitFor();
    await page.locator(`a[href="${JAEGER}/trace/4bf92f3577b34da6a3ce929d0e0e4736"]`).waitFor();

    // The receiver is fixed; the operator retries, and watches it succeed without a reload.
    receiverFixed = true;
    await page.getByRole("button", { name: "Retry…" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Retry", exact: true }).click();
    await waitForText(page, 'dialog [role="status"]', "Scheduled again");
    await page.getByRole("dialog").getByRole("button", { name: "Close" }).click();
    await waitForText(page, '[data-testid="timer-state"]', "SUCCEEDED");
    await page.locator('[data-testid="attempts"] tbody tr').nth(2).waitFor();
    await waitForText(page, '[data-testid="attempts"] tbody tr', "succeeded");
    await screenshot(page, "timer-history");
    const deliveries = deliveriesOf("orders", "charge-7");
    assert.equal(deliveries.length, 3, "two failed attempts, then the retry delivered once");

    // Groups: pause "orders" with a reason, and see the pause.
    await openPage(page, "Groups", "Groups");
    await page.locator('tr[data-group="orders"]').waitFor();
    await page.locator('tr[data-group="orders"]').getByRole("button", { name: "Pause…" }).click();
    await page.getByRole("dialog").locator('input[name="reason"]').fill("receiver down, INC-42");
    await page.getByRole("dialog").getByRole("button", { name: "Pause", exact: true }).click();
    await waitForText(page, 'dialog [role="status"]', "Paused");
    await page.getByRole("dialog").getByRole("button", { name: "Close" }).click();
    await waitForText(page, 'tr[data-group="orders"] [data-testid="pause"]', "receiver down, INC-42");
    await waitForText(page, 'tr[data-group="orders"] [data-testid="pause"]', "by ops");
    const { rows } = await mesh.db.pool.query<{ paused_by: string; reason: string }>(
      "SELECT paused_by, reason FROM paused_groups WHERE group_id = 'orders'",
    );
    assert.deepEqual(rows, [{ paused_by: "ops", reason: "receiver down, INC-42" }]);
    // billing's three invoices failed within the hour: it is listed first, as failing.
    assert.equal(
      await page.locator('[data-testid="groups"] tbody tr').first().getAttribute("data-group"),
      "billing",
    );
    await screenshot(page, "groups");

    // Failed, in bulk: the dry run counts billing's failures before anything changes.
    await openPage(page, "Failed", "Failed timers");
    await page.locator('input[name="bulk-group"]').fill("billing");
    await page.getByRole("button", { name: "Retry failed…" }).click();
    await waitForText(page, '[data-testid="dry-run"]', "3 timer(s) match");
    await screenshot(page, "failed-bulk-dry-run");
    await page.getByRole("dialog").getByRole("button", { name: "Retry 3" }).click();
    await waitForText(page, 'dialog [role="status"]', "Started op-");
    await page.getByRole("dialog").getByRole("button", { name: "Close" }).click();
    await waitForText(page, '[data-testid="operation"]', "SUCCEEDED: 3 changed");

    // Audit: the changes made here went through the audited RPCs, under the token's name.
    await openPage(page, "Audit", "Audit log");
    await page.locator('input[name="action"]').fill("PauseGroup");
    await page.locator('input[name="action"]').press("Enter");
    await waitForText(page, '[data-testid="audit"] tr[data-action="PauseGroup"]', "ops");
    // The filter applied: every other action is gone (the unfiltered list showed PauseGroup too).
    await page
      .locator('[data-testid="audit"] tbody tr:not([data-action="PauseGroup"])')
      .first()
      .waitFor({ state: "detached" });
    // Another filter applied, then cleared and applied again within one frame, as a fast
    // operator (or a busy machine) does: the field's late echo of the first apply must not
    // put it back (it did, and left the list filtered).
    // (No named helpers inside: tsx would wrap them in a __name() the page does not have.)
    const shown = await page
      .locator('input[name="action"]')
      .evaluate(async (input: { value: string; dispatchEvent(event: Event): boolean }) => {
        input.value = "StartBulkOperation";
        input.dispatchEvent(new Event("input"));
        input.dispatchEvent(new Event("change"));
        for (let i = 0; i < 20; i++) await Promise.resolve(); // the page re-renders, its effects wait for a frame
        input.value = "";
        input.dispatchEvent(new Event("input"));
        for (let i = 0; i < 20; i++) await Promise.resolve();
        input.dispatchEvent(new Event("change"));
        for (let i = 0; i < 20; i++) await Promise.resolve();
        return input.value;
      });
    assert.equal(shown, "", "the cleared field stays cleared");
    await waitForText(page, '[data-testid="audit"] tr[data-action="RetryTimers"]', "ops");
    await screenshot(page, "audit");

    // Load ahead and schedules.
    await openPage(page, "Load ahead", "Load ahead");
    // The 30 timers ahead show as 30 bars of one minute each (the empty minutes are .empty).
    await page.locator('[data-testid="load-chart"] rect.bar:not(.empty)').nth(29).waitFor();
    await screenshot(page, "load-ahead");
    await openPage(page, "Schedules", "Schedules");
    await page.locator('input[name="group"]').fill("orders");
    await page.locator('input[name="group"]').press("Enter");
    await waitForText(page, 'article[data-schedule="nightly-report"]', "nightly-report@");
    await screenshot(page, "schedules");

    // Mesh, before a deploy: drain the dispatcher (its shards go unowned: it is the only one),
    // then undrain it, each after a confirmation.
    await openPage(page, "Mesh", "Mesh");
    await page.locator('tr[data-dispatcher="d1"]').getByRole("button", { name: "Drain…" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Drain", exact: true }).click();
    await waitForText(page, 'dialog [role="status"]', "d1 drained: released 1024 shard(s)");
    await page.getByRole("dialog").getByRole("button", { name: "Close" }).click();
    await page
      .locator('[data-testid="shard-map"] .cell.unowned')
      .nth(SHARDS - 1)
      .waitFor();
    await waitForText(page, 'tr[data-dispatcher="d1"]', "draining");
    await screenshot(page, "mesh-drained");
    await page.locator('tr[data-dispatcher="d1"]').getByRole("button", { name: "Undrain…" }).click();
    await page.getByRole("dialog").getByRole("button", { name: "Undrain", exact: true }).click();
    await waitForText(page, 'dialog [role="status"]', "d1 taking shards");
    await page.getByRole("dialog").getByRole("button", { name: "Close" }).click();
    await page.locator('[data-testid="shard-map"] .cell.unowned').first().waitFor({ state: "detached" });

    assert.deepEqual(errors, [], "no page error, no Content-Security-Policy violation");
  } catch (err) {
    // What the page showed when a step failed, beside the others.
    await screenshot(page, "failure-admin");
    throw err;
  } finally {
    await context.close();
  }
});

test("a group token sees its own group's timers and is refused the admin pages", async () => {
  const { context, page } = await signedIn(ORDERS);
  try {
    await waitForText(page, '[data-testid="whoami"]', "ci-orders · groups orders");
    await openPage(page, "Mesh", "Mesh needs an admin token");
    await waitForText(page, '[data-testid="forbidden"]', "Mesh needs an admin token");
    await screenshot(page, "forbidden-for-group-token");
    // Not only hidden: the server refuses the admin RPC to this token.
    const status = await page.evaluate(async (token) => {
      const res = await fetch("/admin.v1.AdminService/ListShards", {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: "{}",
      });
      return { status: res.status, body: await res.text() };
    }, ORDERS);
    assert.equal(status.status, 403, status.body);
    assert.match(status.body, /permission_denied/);
    // Its own group's timer: found, without the admin-only history.
    await page.goto(`${consoleUrl}#/timer/orders/charge-7`);
    await waitForText(page, '[data-testid="timer-state"]', "SUCCEEDED");
    // Another group's timer: refused by the timer service.
    await page.goto(`${consoleUrl}#/timer/billing/invoice-1`);
    await waitForText(page, ".freshness .error", "PERMISSION_DENIED");
  } catch (err) {
    await screenshot(page, "failure-group-token");
    throw err;
  } finally {
    await context.close();
  }
});
