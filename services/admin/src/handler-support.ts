// What every part of admin.v1.AdminService shares: its dependencies, the type of a part, and the
// request checks and message shapes more than one part uses. main.ts joins the parts
// (mesh-handlers.ts, group-handlers.ts, bulk-handlers.ts, purge-handlers.ts, inspect-handlers.ts)
// into the one service.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type pg from "pg";
import {
  type AdminService,
  type PausedGroup,
  PausedGroupSchema,
} from "../../shared/src/gen/admin/v1/admin_pb.js";
import type { Logger } from "../../shared/src/logger.js";
import type { NatsLink } from "../../shared/src/nats.js";
import { RequestError } from "./admin-requests.js";
import type { Auditor } from "./audit.js";
import type { DispatcherDirectory } from "./dispatcher-directory.js";
import type { MeshControl } from "./mesh-control.js";

/** What the AdminService handlers work with. */
export interface AdminDeps {
  pool: pg.Pool;
  nats: NatsLink;
  directory: DispatcherDirectory;
  control: MeshControl;
  auditor: Auditor;
  shardCount: number;
  memberTtlMs: number;
  /** LIST_PAGE_MAX_BYTES: a ListFailedTimers page stops before this many bytes (at least one timer). */
  listPageMaxBytes: number;
  log: Logger;
}

/** Some of the AdminService's methods: one part of the service. */
export type AdminHandlers<Method extends keyof ServiceImpl<typeof AdminService>> = Pick<
  ServiceImpl<typeof AdminService>,
  Method
>;

/** Runs request checks, turning a RequestError into INVALID_ARGUMENT. */
export function checked<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof RequestError)
      throw new ConnectError(err.message, Code.InvalidArgument, undefined, undefined, err);
    throw err;
  }
}

/** The field's value; INVALID_ARGUMENT naming the field when it is empty. */
export function required(value: string, field: string): string {
  if (value === "") throw new ConnectError(`${field} is required`, Code.InvalidArgument);
  return value;
}

/** A group's pause as the API shows it; undefined when the group is not paused (no `at`). */
export function pauseOf(
  groupId: string,
  at: Date | null,
  by: string | null,
  reason: string | null,
): PausedGroup | undefined {
  return at
    ? create(PausedGroupSchema, {
        groupId,
        pausedTime: timestampFromDate(at),
        pausedBy: by ?? "",
        reason: reason ?? "",
      })
    : undefined;
}
