// Integration test: gRPC health + server reflection on a real gRPC port (startGrpcServer),
// exercised with the real `buf curl` CLI (reflection v1) and a Connect gRPC client (v1alpha).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type ConnectRouter } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { HealthStatus, registerHealthService } from "../../services/shared/src/grpc-health.js";
import { registerReflectionServices } from "../../services/shared/src/grpc-reflection.js";
import { startGrpcServer, type GrpcServer } from "../../services/shared/src/servers.js";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../services/shared/src/gen/grpc/health/v1/health_pb.js";
import {
  ServerReflection as ServerReflectionV1Alpha,
  ServerReflectionRequestSchema as RequestV1AlphaSchema,
  type ServerReflectionRequest as RequestV1Alpha,
  type ServerReflectionResponse as ResponseV1Alpha,
} from "../../services/shared/src/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { TimerService, file_timer_v1_timer } from "../../services/shared/src/gen/timer/v1/timer_pb.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bufBin = path.join(repoRoot, "node_modules", ".bin", "buf");

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `buf curl` with the given arguments; never throws on a non-zero exit code. */
function bufCurl(...args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    execFile(
      bufBin,
      ["curl", "--timeout", "20s", "--protocol", "grpc", "--http2-prior-knowledge", ...args],
      { cwd: repoRoot, timeout: 30_000 },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== "number") {
          reject(error); // could not spawn, or killed by the timeout
          return;
        }
        resolve({ code: error ? Number(error.code) : 0, stdout, stderr });
      },
    );
  });
}

function unimplemented(): never {
  throw new ConnectError("not implemented in this test", Code.Unimplemented);
}

describe("gRPC health and server reflection", () => {
  let grpcPort: GrpcServer;
  let baseUrl: string;
  const health = new HealthStatus();
  let sessionManager: Http2SessionManager;

  before(async () => {
    health.set(TimerService.typeName, ServingStatus.SERVING);
    // The services' own gRPC port: gRPC over h2c is served by grpc-js through the adapter
    // (grpc-js-server.ts), health's Watch as a server stream, reflection as a bidi stream.
    grpcPort = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      maxRequestBytes: 1024 * 1024,
      interceptors: [],
      routes: (router: ConnectRouter) => {
        registerHealthService(router, health);
        registerReflectionServices(router, [file_timer_v1_timer]);
        router.service(TimerService, {
          createTimer: unimplemented,
          createTimers: unimplemented,
          getTimer: unimplemented,
          cancelTimer: unimplemented,
          listTimers: unimplemented,
        });
      },
    });
    baseUrl = `http://127.0.0.1:${grpcPort.port}`;
    sessionManager = new Http2SessionManager(baseUrl);
  });

  after(async () => {
    sessionManager?.abort();
    await grpcPort?.close(Date.now());
  });

  // connect-node v2: the gRPC transport is always HTTP/2 (GrpcTransportOptions has no httpVersion).
  const transport = () => createGrpcTransport({ baseUrl, sessionManager });

  test("buf curl lists services and methods via reflection", async () => {
    const methods = await bufCurl("--list-methods", baseUrl);
    assert.equal(methods.code, 0, `buf curl --list-methods failed: ${methods.stderr}`);
    const methodLines = methods.stdout
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean);
    for (const m of ["CreateTimer", "GetTimer", "CancelTimer", "ListTimers"]) {
      assert.ok(methodLines.includes(`timer.v1.TimerService/${m}`), `missing ${m} in:\n${methods.stdout}`);
    }
    assert.ok(methodLines.includes("grpc.health.v1.Health/Check"), methods.stdout);
    assert.ok(methodLines.includes("grpc.health.v1.Health/Watch"), methods.stdout);

    // Same listing when buf is forced onto the older v1alpha reflection protocol.
    const alpha = await bufCurl("--reflect-protocol", "grpc-v1alpha", "--list-methods", baseUrl);
    assert.equal(alpha.code, 0, `buf curl --reflect-protocol grpc-v1alpha failed: ${alpha.stderr}`);
    assert.deepEqual(alpha.stdout, methods.stdout);

    const services = await bufCurl("--list-services", baseUrl);
    assert.equal(services.code, 0, `buf curl --list-services failed: ${services.stderr}`);
    const serviceLines = services.stdout
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean);
    assert.deepEqual([...serviceLines].sort(), [
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      // every service of the given files is listed, implemented here or not
      "timer.v1.TimerCallbackService",
      "timer.v1.TimerService",
    ]);
  });

  test("buf curl calls Health/Check through reflection", async () => {
    const whole = await bufCurl("-d", '{"service":""}', `${baseUrl}/grpc.health.v1.Health/Check`);
    assert.equal(whole.code, 0, `Health/Check failed: ${whole.stderr}`);
    assert.deepEqual(JSON.parse(whole.stdout), { status: "SERVING" });

    health.set(TimerService.typeName, ServingStatus.NOT_SERVING);
    const timer = await bufCurl(
      "-d",
      JSON.stringify({ service: TimerService.typeName }),
      `${baseUrl}/grpc.health.v1.Health/Check`,
    );
    health.set(TimerService.typeName, ServingStatus.SERVING);
    assert.equal(timer.code, 0, `Health/Check failed: ${timer.stderr}`);
    assert.deepEqual(JSON.parse(timer.stdout), { status: "NOT_SERVING" });

    const unknown = await bufCurl(
      "-d",
      '{"service":"no.such.Service"}',
      `${baseUrl}/grpc.health.v1.Health/Check`,
    );
    // buf curl exits with the gRPC code shifted left by three bits for RPC errors.
    assert.equal(unknown.code, Code.NotFound << 3, `stdout: ${unknown.stdout}\nstderr: ${unknown.stderr}`);
    assert.equal(JSON.parse(unknown.stderr).code, "not_found", unknown.stderr);
  });

  test("buf curl calls a TimerService method resolved through reflection", async () => {
    const res = await bufCurl("-d", "{}", `${baseUrl}/timer.v1.TimerService/GetTimer`);
    assert.equal(res.code, Code.Unimplemented << 3, `stdout: ${res.stdout}\nstderr: ${res.stderr}`);
    assert.equal(JSON.parse(res.stderr).code, "unimplemented", res.stderr);
  });

  test("v1alpha reflection via a Connect gRPC client", async () => {
    const client = createClient(ServerReflectionV1Alpha, transport());
    const requests: RequestV1Alpha[] = [
      create(RequestV1AlphaSchema, { messageRequest: { case: "listServices", value: "" } }),
      create(RequestV1AlphaSchema, {
        messageRequest: { case: "fileContainingSymbol", value: "timer.v1.TimerService" },
      }),
      create(RequestV1AlphaSchema, {
        messageRequest: { case: "fileContainingSymbol", value: "timer.v1.TimerService.CreateTimer" },
      }),
      create(RequestV1AlphaSchema, {
        messageRequest: { case: "fileContainingSymbol", value: "timer.v1.CreateTimerRequest" },
      }),
      create(RequestV1AlphaSchema, {
        messageRequest: { case: "fileContainingSymbol", value: "no.such.Symbol" },
      }),
      create(RequestV1AlphaSchema, {
        messageRequest: { case: "fileByFilename", value: "google/protobuf/timestamp.proto" },
      }),
    ];
    async function* send() {
      yield* requests;
    }
    const responses: ResponseV1Alpha[] = [];
    for await (const res of client.serverReflectionInfo(send())) responses.push(res);
    assert.equal(responses.length, requests.length, "one response per request");
    for (const [i, res] of responses.entries()) {
      assert.deepEqual(res.originalRequest?.messageRequest, requests[i]?.messageRequest);
    }
    const [list, bySvc, byMethod, byMsg, missing, byFile] = responses;

    assert.equal(list?.messageResponse.case, "listServicesResponse");
    assert.deepEqual(list.messageResponse.value.service.map((s) => s.name).sort(), [
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      // every service of the given files is listed, implemented here or not
      "timer.v1.TimerCallbackService",
      "timer.v1.TimerService",
    ]);

    const decode = (res: ResponseV1Alpha | undefined): FileDescriptorProto[] => {
      assert.equal(res?.messageResponse.case, "fileDescriptorResponse", JSON.stringify(res?.messageResponse));
      return res.messageResponse.value.fileDescriptorProto.map((b) =>
        fromBinary(FileDescriptorProtoSchema, b),
      );
    };
    const files = decode(bySvc);
    assert.equal(files[0]?.name, "timer/v1/timer.proto");
    const names = files.map((f) => f.name);
    assert.ok(names.includes("google/protobuf/timestamp.proto"), names.join(", "));
    assert.ok(names.includes("google/protobuf/duration.proto"), names.join(", "));
    assert.equal(new Set(names).size, names.length, "no file is sent twice");
    assert.ok(files[0]?.service.some((s) => s.name === "TimerService"));
    // The returned set is self-contained: it builds a registry that resolves the service.
    const [first, ...deps] = files;
    assert.ok(first);
    const registry = createFileRegistry(first, (name) => deps.find((d) => d.name === name));
    assert.equal(registry.getService("timer.v1.TimerService")?.methods.length, TimerService.methods.length);

    assert.equal(decode(byMethod)[0]?.name, "timer/v1/timer.proto");
    assert.equal(decode(byMsg)[0]?.name, "timer/v1/timer.proto");
    assert.deepEqual(
      decode(byFile).map((f) => f.name),
      ["google/protobuf/timestamp.proto"],
    );

    assert.equal(missing?.messageResponse.case, "errorResponse");
    assert.equal(missing.messageResponse.value.errorCode, Code.NotFound);
  });

  test("Health/Watch streams the current status and then changes", { timeout: 10_000 }, async () => {
    // Observe the server side unsubscribing once the client goes away.
    let serverUnsubscribed!: () => void;
    const unsubscribed = new Promise<void>((resolve) => (serverUnsubscribed = resolve));
    const subscribe = health.subscribe.bind(health);
    health.subscribe = (service, listener) => {
      const unsubscribe = subscribe(service, listener);
      return () => {
        unsubscribe();
        if (service === "late.Service") serverUnsubscribed();
      };
    };
    const client = createClient(Health, transport());
    const abort = new AbortController();
    const seen: ServingStatus[] = [];
    try {
      for await (const res of client.watch({ service: "late.Service" }, { signal: abort.signal })) {
        seen.push(res.status);
        if (seen.length === 1) health.set("late.Service", ServingStatus.SERVING);
        if (seen.length === 2) health.set("late.Service", ServingStatus.NOT_SERVING);
        if (seen.length === 3) break;
      }
    } finally {
      abort.abort();
      health.clear("late.Service");
    }
    assert.deepEqual(seen, [ServingStatus.SERVICE_UNKNOWN, ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    await unsubscribed; // the handler saw ctx.signal abort and cleaned up (the test times out otherwise)
    health.subscribe = subscribe;

    const list = await createClient(Health, transport()).list({});
    assert.deepEqual(Object.fromEntries(Object.entries(list.statuses).map(([k, v]) => [k, v.status])), {
      "": ServingStatus.SERVING,
      [TimerService.typeName]: ServingStatus.SERVING,
    });
  });
});
