// A throwaway certificate authority with a server certificate for 127.0.0.1/localhost and a
// client certificate, made with the openssl CLI, for TLS and mTLS tests.
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** PEM file paths of a test CA and the certificates it signed. */
export interface TestCertificates extends AsyncDisposable {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  try {
    await run("openssl", args, { cwd: dir });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT")
      throw new Error("openssl is not on PATH: apt-get install openssl", { cause: err });
    throw err;
  }
}

/** Makes a CA, a server certificate (127.0.0.1, localhost) and a client certificate, valid for a day. */
export async function makeTestCertificates(): Promise<TestCertificates> {
  const dir = await mkdtemp(join(tmpdir(), "certs-"));
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl(dir, [
    "req",
    "-x509",
    ...key,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "1",
    "-subj",
    "/CN=timer-mesh test CA",
  ]);
  await writeFile(join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await writeFile(join(dir, "client.ext"), "extendedKeyUsage=clientAuth\n");
  for (const name of ["server", "client"]) {
    await openssl(dir, [
      "req",
      ...key,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
      "-subj",
      `/CN=timer-mesh test ${name}`,
    ]);
    await openssl(dir, [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${name}.pem`,
      "-days",
      "1",
      "-extfile",
      `${name}.ext`,
    ]);
  }
  return {
    dir,
    caCert: join(dir, "ca.pem"),
    serverCert: join(dir, "server.pem"),
    serverKey: join(dir, "server.key"),
    clientCert: join(dir, "client.pem"),
    clientKey: join(dir, "client.key"),
    async [Symbol.asyncDispose]() {
      await rm(dir, { recursive: true, force: true });
    },
  };
}
