// The PEM files of TLS settings, read once at start. A missing or unreadable file stops the
// start with the variable that names it, so the operator knows which setting to fix.
import { readFile } from "node:fs/promises";

/** PEM material of a TLS gRPC port; with clientCa, clients must present a certificate it signed. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  clientCa?: Buffer;
}

/** Reads the PEM file at `path`, named by the environment variable `variable`; the error names both. */
export async function readPemFile(variable: string, path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new Error(`${variable}: cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** Reads the PEM files named by TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE. */
export async function readTlsMaterial(files: {
  certFile: string;
  keyFile: string;
  clientCaFile: string | undefined;
}): Promise<TlsMaterial> {
  const cert = await readPemFile("TLS_CERT_FILE", files.certFile);
  const key = await readPemFile("TLS_KEY_FILE", files.keyFile);
  if (files.clientCaFile === undefined) return { cert, key };
  return { cert, key, clientCa: await readPemFile("TLS_CLIENT_CA_FILE", files.clientCaFile) };
}
