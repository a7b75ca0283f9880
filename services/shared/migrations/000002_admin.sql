-- Operator state: paused groups, and the audit trail of every admin change.

-- Timers of a paused group stay SCHEDULED and are not claimed; when the group is resumed
-- they are overdue and fire oldest first through the dispatchers' catch-up path.
CREATE TABLE paused_groups (
  group_id  text        PRIMARY KEY,
  paused_at timestamptz NOT NULL DEFAULT now(),
  paused_by text        NOT NULL,
  reason    text        NOT NULL DEFAULT ''
);

CREATE TABLE audit_events (
  id         bigserial   PRIMARY KEY,
  at         timestamptz NOT NULL DEFAULT now(),
  -- Who: the token's name (never the token).
  actor      text        NOT NULL,
  -- What: the RPC, e.g. admin.v1.AdminService/PauseGroup.
  action     text        NOT NULL,
  arguments  jsonb       NOT NULL,
  -- OK, or the error code, and a JSON summary of what changed.
  outcome    text        NOT NULL,
  result     jsonb       NOT NULL DEFAULT '{}',
  trace_id   text
);

CREATE INDEX audit_events_at_idx ON audit_events (at);
