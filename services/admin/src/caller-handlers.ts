// WhoAmI: the caller's own token as the service sees it, so a client (the operator console)
// shows only what the token may do instead of learning it from PERMISSION_DENIED. Any valid
// token may call it (auth.ts: SCOPED_METHODS); it reads nothing and changes nothing, so it is
// not audited.
import { ANONYMOUS, callerOf } from "../../shared/src/auth.js";
import type { AdminHandlers } from "./handler-support.js";

/** WhoAmI. */
export function callerHandlers(): AdminHandlers<"whoAmI"> {
  return {
    whoAmI(_req, ctx) {
      const caller = callerOf(ctx);
      return {
        name: caller.name,
        admin: caller.admin,
        groups: [...caller.groups],
        // With AUTH_DISABLED the authenticator gives every call this very object (a token
        // that happens to be named "anonymous" is another object): no setting to pass down.
        authDisabled: caller === ANONYMOUS,
      };
    },
  };
}
