// Credentials out of what is logged or shown: connection URLs carry passwords (DATABASE_URL) or
// tokens (NATS_URL "nats://<token>@host"), and error messages sometimes quote them.

const MASK = "****";

/** Query parameters that hold a secret in a connection URL (libpq's `password`, `sslpassword`). */
const SECRET_PARAMS = /([?&;\s](?:password|sslpassword|pass|pwd|token|auth_token|secret)=)[^&#\s"']*/gi;

/**
 * A configured URL (or a comma-separated list of them, as NATS_URL allows) with user info and
 * password parameters masked: "postgres://timer:****@db:5432/timers", "nats://****@nats:4222".
 * It works on values that are not valid URLs too (a password with an unescaped "@", "/" or
 * space): everything between "://" and the last "@" is user info. The user name before ":"
 * is kept, since it helps to tell which account is meant; a lone user info is a token.
 */
export function redactUrl(value: string): string {
  return value
    .split(/,(?=\s*[a-z][a-z0-9+.-]*:\/\/)/i)
    .map(
      (one) =>
        maskUserInfo(one, /^(\s*[a-z][a-z0-9+.-]*:\/\/)(.*)@/is) ?? maskUserInfo(one, /^()([^/]*)@/s) ?? one,
    )
    .join(",")
    .replace(SECRET_PARAMS, `$1${MASK}`);
}

/**
 * Free text (an error message, a stack) with the user info of every URL in it masked. Inside
 * text a URL ends at white space or a quote, so a value that is not a valid URL should go
 * through redactUrl before it is quoted in a message.
 */
export function redactCredentials(text: string): string {
  return text
    .replace(
      /([a-z][a-z0-9+.-]*:\/\/)([^\s"'<>/]*)@/gi,
      (_m, scheme: string, info: string) => `${scheme + maskedInfo(info)}@`,
    )
    .replace(SECRET_PARAMS, `$1${MASK}`);
}

/** Every string in a value (a serialized error, log fields) passed through redactCredentials. */
export function redactDeep<T>(value: T, depth = 0): T {
  if (typeof value === "string") return redactCredentials(value) as T;
  if (depth > 8 || value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map((v) => redactDeep(v, depth + 1)) as T;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redactDeep(v, depth + 1)])) as T;
}

function maskUserInfo(value: string, pattern: RegExp): string | undefined {
  const m = pattern.exec(value);
  if (!m) return undefined;
  return `${m[1]! + maskedInfo(m[2]!)}@${value.slice(m[0].length)}`;
}

function maskedInfo(info: string): string {
  const colon = info.indexOf(":");
  return colon > 0 ? `${info.slice(0, colon)}:${MASK}` : MASK;
}
