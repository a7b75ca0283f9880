// Plain HTTP servers for the tests' receivers: each request read whole before it is handled, on a
// free loopback port, closed together with its open connections.
import http from "node:http";
import type { AddressInfo } from "node:net";

/** An HTTP server that reads each request's whole body, then calls `handle` with it. */
export function bufferingServer(
  handle: (req: http.IncomingMessage, body: Buffer, res: http.ServerResponse) => void,
): http.Server {
  return http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => handle(req, Buffer.concat(chunks), res));
  });
}

/** Listens on a free loopback port; returns the port and how to close the server with its open connections. */
export async function listenOnLoopback(
  server: http.Server,
): Promise<{ port: number; close(): Promise<void> }> {
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
