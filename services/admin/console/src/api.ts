// The console's only way to the mesh: the same Connect API that grpcurl and the services use,
// called through @connectrpc/connect-web on the console's own origin (the admin process serves
// admin.v1 there and forwards timer.v1, so the Content-Security-Policy can say connect-src 'self').
// Every call carries the operator's token; what it may do is decided by the servers, per call.
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { createContext } from "preact";
import { useContext } from "preact/hooks";
import { AdminService, type WhoAmIResponse } from "../../../shared/src/gen/admin/v1/admin_pb.js";
import { ScheduleService } from "../../../shared/src/gen/timer/v1/schedule_pb.js";
import { TimerService } from "../../../shared/src/gen/timer/v1/timer_pb.js";

/** A call that has not answered within this is abandoned (the next refresh tries again). */
const CALL_TIMEOUT_MS = 15_000;

export interface Api {
  admin: Client<typeof AdminService>;
  timers: Client<typeof TimerService>;
  schedules: Client<typeof ScheduleService>;
}

/** What /config.json says: set by the admin process's environment. */
export interface ConsoleConfig {
  jaegerUiUrl: string | null;
  version: string;
}

/** Everything a page needs: the clients, who the token is, and the console's settings. */
export interface Session {
  api: Api;
  me: WhoAmIResponse;
  config: ConsoleConfig;
  signOut(): void;
}

/**
 * Clients that send `token` as a bearer header. A call answered UNAUTHENTICATED (the token was
 * revoked or mistyped) calls `onUnauthenticated`, which signs the operator out.
 */
export function createApi(token: string, onUnauthenticated: () => void): Api {
  const bearer: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    try {
      return await next(req);
    } catch (err) {
      if (ConnectError.from(err).code === Code.Unauthenticated) onUnauthenticated();
      throw err;
    }
  };
  const transport = createConnectTransport({
    baseUrl: window.location.origin,
    interceptors: [bearer],
    defaultTimeoutMs: CALL_TIMEOUT_MS,
  });
  return {
    admin: createClient(AdminService, transport),
    timers: createClient(TimerService, transport),
    schedules: createClient(ScheduleService, transport),
  };
}

export async function loadConfig(): Promise<ConsoleConfig> {
  const res = await fetch("config.json", { cache: "no-store" });
  if (!res.ok) throw new Error(`config.json: HTTP ${res.status}`);
  const body = (await res.json()) as Partial<ConsoleConfig>;
  return { jaegerUiUrl: body.jaegerUiUrl ?? null, version: body.version ?? "" };
}

/** "PERMISSION_DENIED: ..." from a failed call: the code as grpcurl and the logs spell it. */
export function errorText(err: unknown): string {
  const e = ConnectError.from(err);
  const code = Code[e.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  return `${code}: ${e.rawMessage}`;
}

/** The call was refused because the token lacks the right (not because something broke). */
export function isPermissionDenied(err: unknown): boolean {
  return ConnectError.from(err).code === Code.PermissionDenied;
}

/**
 * The group a page about one group starts on: the first the token names exactly (a pattern such
 * as "orders-*" or "*" names no one group); empty when there is none.
 */
export function firstExactGroup(groups: string[]): string {
  return groups.find((g) => !g.includes("*")) ?? "";
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error("useSession outside a signed-in console");
  return session;
}
