// The gRPC port of every service (servers.ts startGrpcServer): gRPC over HTTP/2 from
// @grpc/grpc-js, Connect and gRPC-Web over HTTP/1.1 from connect-node, on one port, plaintext or
// TLS (by ALPN), both through the same Connect interceptors and handler context.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import net from "node:net";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { durationFromMs, durationMs } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  createContextKey,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { RetryInfoSchema } from "../../services/shared/src/gen/google/rpc/error_details_pb.js";
import {
  CreateTimerRequestSchema,
  CreateTimerResponseSchema,
  TimerService,
  type CreateTimerRequest,
  type CreateTimerResponse,
} from "../../services/shared/src/gen/timer/v1/timer_pb.js";
import { startGrpcServer, type GrpcServer } from "../../services/shared/src/servers.js";
import { makeTestCertificates, type TestCertificates } from "../support/certificates.js";
import { waitFor } from "../support/wait.js";

const MAX_REQUEST_BYTES = 64 * 1024;
const interceptedKey = createContextKey<string>("", { description: "set by the test interceptor" });

/** What the test service saw: the calls that reached the handler, and why a waiting call's signal aborted. */
interface Seen {
  handled: number;
  intercepted: number;
  abortReasons: unknown[];
}

/**
 * A TimerService whose CreateTimer answers by group: "echo" returns what the context carried,
 * "wait" waits for ctx.signal, "retry" refuses with a RetryInfo detail.
 */
function testService(seen: Seen) {
  const unimplemented = () => {
    throw new ConnectError("not in this test", Code.Unimplemented);
  };
  return {
    async createTimer(req: CreateTimerRequest, ctx: HandlerContext): Promise<CreateTimerResponse> {
      seen.handled++;
      switch (req.groupId) {
        case "echo":
          ctx.responseHeader.set("x-answer-header", "h");
          ctx.responseTrailer.set("x-answer-trailer", "t");
          return create(CreateTimerResponseSchema, {
            created: true,
            // The request header, the interceptor's context value and the protocol, for the caller to check.
            timer: {
              timerId: req.timerId,
              groupId: `${ctx.requestHeader.get("x-test") ?? "-"}|${ctx.values.get(interceptedKey)}|${ctx.protocolName}`,
            },
          });
        case "wait":
          await new Promise<void>((resolve) =>
            ctx.signal.addEventListener("abort", () => resolve(), { once: true }),
          );
          seen.abortReasons.push(ctx.signal.reason);
          throw ctx.signal.reason;
        case "retry":
          throw new ConnectError("slow down", Code.ResourceExhausted, undefined, [
            { desc: RetryInfoSchema, value: { retryDelay: durationFromMs(1500) } },
          ]);
        default:
          throw new ConnectError(`unknown group ${req.groupId}`, Code.InvalidArgument);
      }
    },
    createTimers: unimplemented,
    getTimer: unimplemented,
    cancelTimer: unimplemented,
    listTimers: unimplemented,
  };
}

async function startTestPort(
  seen: Seen,
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer },
): Promise<GrpcServer> {
  const mark: Interceptor = (next) => (req) => {
    seen.intercepted++;
    req.contextValues.set(interceptedKey, "intercepted");
    return next(req);
  };
  return startGrpcServer({
    host: "127.0.0.1",
    port: 0,
    ...(tls ? { tls } : {}),
    maxRequestBytes: MAX_REQUEST_BYTES,
    interceptors: [mark],
    routes: (router) => router.service(TimerService, testService(seen)),
  });
}

const createTimerPath = `/${TimerService.typeName}/CreateTimer`;

/** One CreateTimer through a grpc-js client, with the given metadata and deadline. */
function grpcJsCall(
  client: grpc.Client,
  req: CreateTimerRequest,
  opts: { metadata?: grpc.Metadata; deadlineMs?: number } = {},
) {
  let header: grpc.Metadata | undefined;
  let trailer: grpc.Metadata | undefined;
  const response = new Promise<CreateTimerResponse>((resolve, reject) => {
    const call = client.makeUnaryRequest(
      createTimerPath,
      (m: CreateTimerRequest) => Buffer.from(toBinary(CreateTimerRequestSchema, m)),
      (b: Buffer) => fromBinary(CreateTimerResponseSchema, b),
      req,
      opts.metadata ?? new grpc.Metadata(),
      { deadline: Date.now() + (opts.deadlineMs ?? 15_000) },
      (err, res) => (err ? reject(err) : resolve(res!)),
    );
    call.on("metadata", (md) => (header = md));
    call.on("status", (s) => (trailer = s.metadata));
  });
  return { response, header: () => header, trailer: () => trailer };
}

const echo = (timerId: string) => create(CreateTimerRequestSchema, { groupId: "echo", timerId });

describe("one plaintext port: gRPC over h2c from grpc-js, Connect and gRPC-Web over HTTP/1.1 from connect-node", () => {
  const seen: Seen = { handled: 0, intercepted: 0, abortReasons: [] };
  let port: GrpcServer;
  let client: grpc.Client;
  let baseUrl: string;

  before(async () => {
    port = await startTestPort(seen);
    baseUrl = `http://127.0.0.1:${port.port}`;
    client = new grpc.Client(`127.0.0.1:${port.port}`, grpc.credentials.createInsecure());
  });
  after(async () => {
    client?.close();
    await port?.close(Date.now() + 1_000);
  });

  test("gRPC (grpc-js client) and Connect over HTTP/1.1 reach the same handler, through the interceptors, with headers and trailers", async () => {
    const metadata = new grpc.Metadata();
    metadata.set("x-test", "from-grpc");
    const call = grpcJsCall(client, echo("g1"), { metadata });
    const res = await call.response;
    assert.equal(res.timer?.groupId, "from-grpc|intercepted|grpc");
    assert.deepEqual(call.header()?.get("x-answer-header"), ["h"]);
    assert.deepEqual(call.trailer()?.get("x-answer-trailer"), ["t"]);

    const connect = createClient(TimerService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
    let trailer: Headers | undefined;
    const viaConnect = await connect.createTimer(echo("c1"), {
      headers: { "x-test": "from-connect" },
      onTrailer: (t) => (trailer = t),
    });
    assert.equal(viaConnect.timer?.groupId, "from-connect|intercepted|connect");
    assert.equal(trailer?.get("x-answer-trailer"), "t");

    const grpcWeb = createClient(TimerService, createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }));
    const viaGrpcWeb = await grpcWeb.createTimer(echo("w1"), { headers: { "x-test": "from-grpc-web" } });
    assert.equal(viaGrpcWeb.timer?.groupId, "from-grpc-web|intercepted|grpc-web");

    // The documented limit: HTTP/2 goes to grpc-js, which speaks gRPC only.
    const connectH2 = createClient(TimerService, createConnectTransport({ baseUrl, httpVersion: "2" }));
    await assert.rejects(connectH2.createTimer(echo("c2")));
  });

  test("an HTTP/1.1 request whose first bytes could start the HTTP/2 preface is read whole", async () => {
    // "P" is also the preface's first byte: the port must wait for more, then route to HTTP/1.1
    // with nothing lost.
    const body = JSON.stringify({ groupId: "echo", timerId: "split" });
    const request =
      `POST ${createTimerPath} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
    const answer = await new Promise<string>((resolve, reject) => {
      const sock = net.connect(port.port, "127.0.0.1", () => {
        sock.write(request.slice(0, 1));
        setTimeout(() => sock.write(request.slice(1)), 50);
      });
      let text = "";
      sock.on("data", (d: Buffer) => (text += d.toString()));
      sock.on("end", () => resolve(text));
      sock.on("error", reject);
    });
    assert.match(answer, /^HTTP\/1\.1 200/);
    assert.match(answer, /"timerId":"split"/);
  });

  test("a ConnectError's details (RetryInfo) reach a gRPC client as grpc-status-details-bin", async () => {
    const err = await grpcJsCall(
      client,
      create(CreateTimerRequestSchema, { groupId: "retry" }),
    ).response.then(
      () => assert.fail("should be refused"),
      (e: grpc.ServiceError) => e,
    );
    assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(err.details, "slow down");
    const [bin] = err.metadata.get("grpc-status-details-bin");
    assert.ok(Buffer.isBuffer(bin), "grpc-status-details-bin in the trailers");
    // Decoded the way Connect clients do it.
    const viaConnect = ConnectError.from(
      await createClient(TimerService, createConnectTransport({ baseUrl, httpVersion: "1.1" }))
        .createTimer(create(CreateTimerRequestSchema, { groupId: "retry" }))
        .catch((e: unknown) => e),
    );
    const [connectRetry] = viaConnect.findDetails(RetryInfoSchema);
    assert.equal(durationMs(connectRetry!.retryDelay!), 1500);
  });

  test("a deadline reaches the handler's ctx.signal as DEADLINE_EXCEEDED, a cancel as CANCELED", async () => {
    const before = seen.abortReasons.length;
    const err = await grpcJsCall(client, create(CreateTimerRequestSchema, { groupId: "wait" }), {
      deadlineMs: 300,
    }).response.then(
      () => assert.fail("should time out"),
      (e: grpc.ServiceError) => e,
    );
    assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED);
    await waitFor(() => seen.abortReasons.length > before, 10_000, "the handler to see its signal abort");
    const reason = seen.abortReasons[before];
    assert.ok(
      reason instanceof ConnectError && reason.code === Code.DeadlineExceeded,
      `abort reason ${String(reason)}`,
    );

    const handled = seen.handled;
    const call = client.makeUnaryRequest(
      createTimerPath,
      (m: CreateTimerRequest) => Buffer.from(toBinary(CreateTimerRequestSchema, m)),
      (b: Buffer) => fromBinary(CreateTimerResponseSchema, b),
      create(CreateTimerRequestSchema, { groupId: "wait" }),
      () => {},
    );
    await waitFor(() => seen.handled > handled, 10_000, "the second call to reach the handler");
    call.cancel();
    await waitFor(() => seen.abortReasons.length > before + 1, 10_000, "the handler to see the cancel");
    const cancelled = seen.abortReasons[before + 1];
    assert.ok(
      cancelled instanceof ConnectError && cancelled.code === Code.Canceled,
      `abort reason ${String(cancelled)}`,
    );
  });

  test("a request over the size limit is RESOURCE_EXHAUSTED before the handler, on both protocols; the connection goes on", async () => {
    const handled = seen.handled;
    const big = create(CreateTimerRequestSchema, {
      groupId: "echo",
      payload: new Uint8Array(MAX_REQUEST_BYTES + 1),
    });
    const err = await grpcJsCall(client, big).response.then(
      () => assert.fail("should be refused"),
      (e: grpc.ServiceError) => e,
    );
    assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED, err.details);
    assert.match(err.details, new RegExp(String(MAX_REQUEST_BYTES)));

    const connect = createClient(TimerService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
    const viaConnect = ConnectError.from(await connect.createTimer(big).catch((e: unknown) => e));
    assert.equal(viaConnect.code, Code.ResourceExhausted, viaConnect.message);
    assert.equal(seen.handled, handled, "neither reached the handler");

    assert.equal((await grpcJsCall(client, echo("after-big")).response).created, true);
  });
});

describe("one TLS port: h2 by ALPN to grpc-js, http/1.1 to connect-node, client certificates required", () => {
  const seen: Seen = { handled: 0, intercepted: 0, abortReasons: [] };
  let certs: TestCertificates;
  let port: GrpcServer;
  let ca: Buffer;
  let clientKey: Buffer;
  let clientCert: Buffer;

  before(async () => {
    certs = await makeTestCertificates();
    [ca, clientKey, clientCert] = await Promise.all([
      readFile(certs.caCert),
      readFile(certs.clientKey),
      readFile(certs.clientCert),
    ]);
    port = await startTestPort(seen, {
      cert: await readFile(certs.serverCert),
      key: await readFile(certs.serverKey),
      clientCa: ca,
    });
  });
  after(async () => {
    await port?.close(Date.now() + 1_000);
    await certs?.[Symbol.asyncDispose]();
  });

  /** A Connect client over HTTP/1.1 with TLS, presenting whatever certificates `tls` holds. */
  const tlsConnectClient = (tls: { ca: Buffer; key?: Buffer; cert?: Buffer }) =>
    createClient(
      TimerService,
      createConnectTransport({
        baseUrl: `https://127.0.0.1:${port.port}`,
        httpVersion: "1.1",
        nodeOptions: tls,
      }),
    );

  test("gRPC over h2 (grpc-js client) and Connect over http/1.1, each with a client certificate", async () => {
    const client = new grpc.Client(
      `127.0.0.1:${port.port}`,
      grpc.credentials.createSsl(ca, clientKey, clientCert),
    );
    try {
      const res = await grpcJsCall(client, echo("tls-grpc")).response;
      assert.equal(res.timer?.groupId, "-|intercepted|grpc");
    } finally {
      client.close();
    }
    const connect = tlsConnectClient({ ca, key: clientKey, cert: clientCert });
    assert.equal((await connect.createTimer(echo("tls-connect"))).timer?.groupId, "-|intercepted|connect");
  });

  test("without a client certificate the handshake fails, on either protocol", async () => {
    const client = new grpc.Client(`127.0.0.1:${port.port}`, grpc.credentials.createSsl(ca));
    try {
      const err = await grpcJsCall(client, echo("no-cert"), { deadlineMs: 5_000 }).response.then(
        () => assert.fail("should fail"),
        (e: grpc.ServiceError) => e,
      );
      assert.equal(err.code, grpc.status.UNAVAILABLE, err.details);
    } finally {
      client.close();
    }
    const connect = tlsConnectClient({ ca });
    await assert.rejects(connect.createTimer(echo("no-cert")));
    assert.equal(seen.handled, 2, "only the two calls with certificates were handled");
  });
});
