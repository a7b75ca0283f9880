// Which NATS subjects a tenant's callback may publish on. The mesh talks over NATS too, so a
// callback on a mesh subject would let a tenant forge announcements, heartbeats or JetStream API
// calls. The NATS permissions of the dispatcher's callback connection deny the reserved subjects
// (infra/nats/nats.conf); the timer service refuses them at create so the tenant hears why, and
// the dispatcher refuses them at delivery for timers stored before the rule existed.
//
// The rule here is wider than the server's deny list, on purpose:
//   - a subject is refused when its FIRST token is `timers`, `mesh` or `_INBOX` compared without
//     case (NATS subjects are case-sensitive, so `TIMERS.shard.0` is harmless to the mesh, but
//     such a subject only ever confuses), or starts with `$`: `$JS`, `$KV`, `$SYS`, and also
//     `$O` (object store), `$SRV`, `$MQTT`, JetStream acks (`$JS.ACK`) and any future system
//     subject. A single token such as `timers` is refused too.
//   - CALLBACK_NATS_SUBJECT_PREFIX (optional, e.g. `callbacks.{group}.`) narrows tenants further:
//     a subject must start with it, `{group}` replaced by the timer's group id. With `{group}`, a
//     group id containing "." is refused NATS callbacks: it would span several tokens, and group
//     `a` could then publish in group `a.b`'s space.
import { ConfigError, envOptional } from "./env.js";

/** The mesh's reserved subjects (COMMON design), each meaning `<prefix>.>`. */
export const RESERVED_SUBJECTS = ["timers.>", "mesh.>", "$JS.API.>", "$SYS.>", "$KV.>", "_INBOX.>"] as const;

const RESERVED_FIRST_TOKENS = new Set(["timers", "mesh", "_inbox"]);

/** The subject rule of one installation. */
export class TenantSubjects {
  /** `prefix` is the CALLBACK_NATS_SUBJECT_PREFIX template, or undefined for none. */
  constructor(readonly prefix: string | undefined) {}

  /** Why the group may not publish on `subject` (plain, safe to show the tenant), or undefined. */
  refusalOf(subject: string, groupId: string): string | undefined {
    const first = subject.split(".", 1)[0]!;
    if (first.startsWith("$") || RESERVED_FIRST_TOKENS.has(first.toLowerCase())) {
      return `is reserved for the timer mesh and the NATS server (${RESERVED_SUBJECTS.join(", ")}, and any subject starting with $); use a subject of your own`;
    }
    if (this.prefix === undefined) return undefined;
    if (this.prefix.includes("{group}") && groupId.includes(".")) {
      return `cannot be used by group "${groupId}": NATS callbacks must be under ${this.prefix}, and a group id containing "." would span several subject tokens`;
    }
    const required = this.prefix.replaceAll("{group}", groupId);
    if (!subject.startsWith(required) || subject.length === required.length) {
      return `must start with "${required}" (CALLBACK_NATS_SUBJECT_PREFIX)`;
    }
    return undefined;
  }

  /** One line for the start log. */
  describe(): string {
    return this.prefix === undefined
      ? `tenant NATS callbacks may use any subject outside ${RESERVED_SUBJECTS.join(", ")} and $*`
      : `tenant NATS callbacks must publish under ${this.prefix} (and never on ${RESERVED_SUBJECTS.join(", ")} or $*)`;
  }
}

const PREFIX_RE = /^([A-Za-z0-9_-]+|\{group\})(\.([A-Za-z0-9_-]+|\{group\}))*\.$/;

/** Reads CALLBACK_NATS_SUBJECT_PREFIX; a malformed prefix is a ConfigError naming it. */
export function loadTenantSubjects(env: Record<string, string | undefined>): TenantSubjects {
  const prefix = envOptional(env, "CALLBACK_NATS_SUBJECT_PREFIX");
  if (prefix !== undefined) {
    if (!PREFIX_RE.test(prefix)) {
      throw new ConfigError(
        `CALLBACK_NATS_SUBJECT_PREFIX must be dot-separated tokens of [A-Za-z0-9_-] or {group}, ending with "." (for example callbacks.{group}.), got "${prefix}"`,
      );
    }
    const probe = new TenantSubjects(undefined).refusalOf(`${prefix.replaceAll("{group}", "g")}x`, "g");
    if (probe) throw new ConfigError(`CALLBACK_NATS_SUBJECT_PREFIX "${prefix}" is under a reserved subject`);
  }
  return new TenantSubjects(prefix);
}
