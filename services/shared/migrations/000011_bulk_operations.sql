-- Bulk operations (admin.v1.AdminService/StartBulkOperation): one row per long-running
-- operation, its progress written in the same transaction as each batch of timers it changes,
-- so an operation interrupted by a restart resumes exactly after the last committed batch.

CREATE TABLE bulk_operations (
  id               text        PRIMARY KEY,
  -- The selector's group_id (NULL for an admin's group_pattern): what group tokens may see.
  group_id         text,
  -- The StartBulkOperationRequest as proto JSON.
  request          jsonb       NOT NULL,
  -- cancel, retry, shift, pause, resume
  action           text        NOT NULL,
  -- admin.v1.OperationState: 1 RUNNING, 2 SUCCEEDED, 3 FAILED, 4 CANCELLED.
  state            smallint    NOT NULL CHECK (state BETWEEN 1 AND 4),
  created_by       text        NOT NULL,
  -- Who started it, as the audit events of its end record it (actor, action, arguments, trace).
  audit            jsonb       NOT NULL,
  create_time      timestamptz NOT NULL DEFAULT now(),
  update_time      timestamptz NOT NULL DEFAULT now(),
  finish_time      timestamptz,
  batch_size       integer     NOT NULL CHECK (batch_size BETWEEN 1 AND 10000),
  matched_at_start bigint      NOT NULL DEFAULT 0,
  examined         bigint      NOT NULL DEFAULT 0,
  changed          bigint      NOT NULL DEFAULT 0,
  batches          integer     NOT NULL DEFAULT 0,
  error            text,
  -- Up to 20 changed timers (admin.v1.TimerSummary as JSON), the first batches'.
  sample           jsonb       NOT NULL DEFAULT '[]',
  -- The last timer key (shard, group_id, timer_id) walked; the walk goes on after it in
  -- primary-key order, so no timer is visited twice. NULL shard: not started.
  cursor_shard     integer,
  cursor_group     text        NOT NULL DEFAULT '',
  cursor_timer     text        NOT NULL DEFAULT '',
  -- The admin process working on it and until when; once the lease has expired any admin
  -- process takes the operation over.
  worker           text,
  lease_expires_at timestamptz NOT NULL DEFAULT '-infinity'
);

-- CancelOperation's requests; the worker stops after its batch in flight. A table of its own
-- so that asking does not wait for that batch: inserting here takes only a KEY SHARE lock on
-- the operation, which the batch's FOR NO KEY UPDATE lock lets through.
CREATE TABLE bulk_operation_cancels (
  operation_id text        PRIMARY KEY REFERENCES bulk_operations (id) ON DELETE CASCADE,
  requested_by text        NOT NULL,
  requested_at timestamptz NOT NULL DEFAULT now()
);

-- Workers look for running operations whose lease has expired.
CREATE INDEX bulk_operations_running_idx ON bulk_operations (lease_expires_at) WHERE state = 1;
-- ListOperations: newest first, overall or for one group.
CREATE INDEX bulk_operations_created_idx ON bulk_operations (create_time DESC, id DESC);
CREATE INDEX bulk_operations_group_idx ON bulk_operations (group_id, create_time DESC, id DESC);
