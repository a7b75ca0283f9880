// Masking of credentials in what the services log (services/shared/src/redact.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { redactCredentials, redactDeep, redactUrl } from "../../services/shared/src/redact.js";

test("redactUrl masks the password, keeps the user, host and path", () => {
  const cases: [string, string][] = [
    ["postgres://timer:s3cr3t@db:5432/timers", "postgres://timer:****@db:5432/timers"],
    [
      "postgresql://timer:s%40cr%2Ft@db/timers?sslmode=require",
      "postgresql://timer:****@db/timers?sslmode=require",
    ],
    ["postgres://timer@db/timers", "postgres://****@db/timers"],
    ["postgres://db/timers", "postgres://db/timers"],
    // Not valid URLs: an unescaped "/", "@" or space in the password.
    ["postgres://timer:s3/cr3t@db/timers", "postgres://timer:****@db/timers"],
    ["postgres://timer:p@ss@db/timers", "postgres://timer:****@db/timers"],
    ["postgres://timer:s3cr3t pw@db/timers", "postgres://timer:****@db/timers"],
    // Password as a query parameter (libpq).
    [
      "postgres://db/timers?user=timer&password=s3cr3t&sslpassword=k3y",
      "postgres://db/timers?user=timer&password=****&sslpassword=****",
    ],
    // NATS: a token alone, user and password, a list of servers, no scheme.
    ["nats://t0k3n@nats:4222", "nats://****@nats:4222"],
    ["nats://timer:pw1@a:4222,nats://timer:pw2@b:4222", "nats://timer:****@a:4222,nats://timer:****@b:4222"],
    ["timer:pw1@a:4222", "timer:****@a:4222"],
    ["nats://a:4222,b:4222", "nats://a:4222,b:4222"],
  ];
  for (const [raw, masked] of cases) assert.equal(redactUrl(raw), masked, raw);
});

test("redactCredentials masks every URL's user info inside free text", () => {
  assert.equal(
    redactCredentials(
      'cannot connect to "postgres://timer:s3cr3t@db:5432/t" or nats://tok@n:4222, see http://host/x',
    ),
    'cannot connect to "postgres://timer:****@db:5432/t" or nats://****@n:4222, see http://host/x',
  );
  assert.equal(
    redactCredentials("connection string host=db password=s3cr3t user=timer"),
    "connection string host=db password=**** user=timer",
  );
  const stack = "Error: bad postgres://u:p4ss@h/d\n    at f (file:///app/node_modules/@nats-io/x.js:1:2)";
  assert.equal(
    redactCredentials(stack),
    "Error: bad postgres://u:****@h/d\n    at f (file:///app/node_modules/@nats-io/x.js:1:2)",
  );
});

test("redactDeep masks every string of a serialized error, nested ones included", () => {
  const serialized = {
    type: "Error",
    message: "x nats://u:p4ss@h:4222",
    code: 7,
    cause: { message: "y postgres://a:b@c/d" },
    list: ["tls://t@h"],
  };
  assert.deepEqual(redactDeep(serialized), {
    type: "Error",
    message: "x nats://u:****@h:4222",
    code: 7,
    cause: { message: "y postgres://a:****@c/d" },
    list: ["tls://****@h"],
  });
});
