-- Timers, their delivery history, and shard leases. Shipped migrations are never edited:
-- later changes are new numbered files.

-- Settings fixed for the life of a database (the shard count): services refuse to start
-- when their configuration disagrees, because a timer's shard is computed from it.
CREATE TABLE mesh_settings (
  key   text PRIMARY KEY,
  value text NOT NULL
);

-- state: 1 scheduled, 2 firing, 3 succeeded, 4 failed, 5 cancelled (timer.v1.TimerState).
CREATE TABLE timers (
  group_id           text        NOT NULL,
  timer_id           text        NOT NULL,
  shard              integer     NOT NULL,
  state              smallint    NOT NULL CHECK (state BETWEEN 1 AND 5),
  fire_at            timestamptz NOT NULL,
  -- When the next delivery attempt is due: fire_at, then the retry times.
  next_attempt_at    timestamptz NOT NULL,
  attempt            integer     NOT NULL DEFAULT 0,
  callback           jsonb       NOT NULL,
  payload            bytea       NOT NULL,
  labels             jsonb       NOT NULL DEFAULT '{}',
  max_attempts       integer     NOT NULL,
  initial_backoff_ms integer     NOT NULL,
  max_backoff_ms     integer     NOT NULL,
  backoff_multiplier double precision NOT NULL,
  -- SHA-256 of the create request as sent: a replay with the same hash is idempotent.
  request_hash       bytea       NOT NULL,
  -- W3C traceparent of the CreateTimer call, so the firing can link back to it.
  create_traceparent text,
  create_time        timestamptz NOT NULL DEFAULT now(),
  fired_time         timestamptz,
  finish_time        timestamptz,
  last_error         text,
  -- Who holds the in-flight delivery, and until when; an expired claim is taken back.
  claim_owner        text,
  claim_expires_at   timestamptz,
  PRIMARY KEY (group_id, timer_id)
);

CREATE INDEX timers_due_idx ON timers (next_attempt_at) WHERE state = 1;
CREATE INDEX timers_claimed_idx ON timers (claim_expires_at) WHERE state = 2;
CREATE INDEX timers_group_idx ON timers (group_id, fire_at, timer_id);
CREATE INDEX timers_finished_idx ON timers (finish_time) WHERE finish_time IS NOT NULL;

-- Every delivery attempt, so a timer's history can be explained later.
CREATE TABLE timer_attempts (
  id            bigserial   PRIMARY KEY,
  group_id      text        NOT NULL,
  timer_id      text        NOT NULL,
  attempt       integer     NOT NULL,
  dispatcher_id text        NOT NULL,
  started_at    timestamptz NOT NULL,
  finished_at   timestamptz NOT NULL,
  outcome       text        NOT NULL CHECK (outcome IN ('succeeded', 'retry', 'failed', 'abandoned')),
  error         text
);

CREATE INDEX timer_attempts_timer_idx ON timer_attempts (group_id, timer_id, attempt);

-- Fencing: a dispatcher claims a shard's timers only while it holds the shard's lease.
-- epoch grows by one at every change of owner.
CREATE TABLE shard_leases (
  shard      integer     PRIMARY KEY,
  owner      text,
  epoch      bigint      NOT NULL DEFAULT 0,
  expires_at timestamptz NOT NULL DEFAULT '-infinity'
);
