// `buf curl` the way an operator runs it: gRPC over plaintext HTTP/2, schema from server
// reflection, JSON in and out, an optional bearer token.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../", import.meta.url));
const buf = `${root}node_modules/.bin/buf`;

/**
 * What one `buf curl` call returned: the JSON response, or the gRPC error. `Json` is the shape the
 * caller expects of the response message (as the proto3 JSON mapping writes it); unchecked.
 */
export interface BufCurlResult<Json = unknown> {
  exitCode: number;
  /** The response message as JSON (undefined on error). */
  json: Json | undefined;
  /** The gRPC error code as buf prints it (e.g. "permission_denied"), undefined on success. */
  code: string | undefined;
  /** The error message, undefined on success. */
  message: string | undefined;
  stdout: string;
  stderr: string;
}

/**
 * Calls `<service>/<Method>` with `body` (an object, sent as JSON) and, when given,
 * `authorization: Bearer <token>`, on 127.0.0.1:<target> in plaintext HTTP/2, or at a base URL
 * (https://... with `extra` TLS flags such as --cacert). Never throws for a gRPC error: look at
 * `code`.
 */
export function bufCurl<Json = unknown>(
  target: number | string,
  method: string,
  body: unknown = {},
  token?: string,
  extra: string[] = [],
): Promise<BufCurlResult<Json>> {
  const base = typeof target === "number" ? `http://127.0.0.1:${target}` : target;
  const args = ["curl", "--timeout", "30s", "--protocol", "grpc"];
  if (base.startsWith("http:")) args.push("--http2-prior-knowledge");
  if (token !== undefined) args.push("-H", `authorization: Bearer ${token}`);
  args.push(...extra, "-d", JSON.stringify(body), `${base}/${method}`);
  return new Promise((resolve, reject) => {
    execFile(buf, args, { cwd: root, timeout: 45_000 }, (error, stdout, stderr) => {
      if (error && typeof error.code !== "number") {
        reject(new Error(`buf curl ${method} could not run: ${error.message}`, { cause: error }));
        return;
      }
      const exitCode = error ? Number(error.code) : 0;
      if (exitCode === 0) {
        resolve({
          exitCode,
          json: (stdout.trim() === "" ? {} : JSON.parse(stdout)) as Json,
          code: undefined,
          message: undefined,
          stdout,
          stderr,
        });
        return;
      }
      let code: string | undefined;
      let message: string | undefined;
      try {
        const e = JSON.parse(stderr) as { code?: string; message?: string };
        code = e.code;
        message = e.message;
      } catch {
        code = "unparsed";
        message = stderr;
      }
      resolve({ exitCode, json: undefined, code, message, stdout, stderr });
    });
  });
}

/** Like bufCurl, but throws unless the call succeeded; returns the response JSON. */
export async function bufCurlOk<Json = unknown>(
  target: number | string,
  method: string,
  body: unknown = {},
  token?: string,
  extra: string[] = [],
): Promise<Json> {
  const r = await bufCurl<Json>(target, method, body, token, extra);
  if (r.exitCode !== 0 || r.json === undefined) {
    throw new Error(`${method} failed: ${r.code}: ${r.message}\n${r.stderr}`);
  }
  return r.json;
}
