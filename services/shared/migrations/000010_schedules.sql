-- Recurring schedules (timer.v1.ScheduleService). Each firing is an ordinary row of timers with
-- timer_id "<schedule_id>@<instant>" and schedule_id set; this table holds what makes the next
-- ones: the spec, the template, and how far firings have been created.

-- state: 1 active, 2 paused, 3 completed (timer.v1.ScheduleState).
CREATE TABLE schedules (
  group_id        text        NOT NULL,
  schedule_id     text        NOT NULL,
  state           smallint    NOT NULL CHECK (state BETWEEN 1 AND 3),
  -- Grows by one at every change (UpdateSchedule's expected_version).
  version         bigint      NOT NULL DEFAULT 1,
  -- timer.v1.ScheduleSpec and timer.v1.FiringTemplate as proto JSON, as the caller sent them
  -- (start_time filled in with the creation time when unset).
  spec            jsonb       NOT NULL,
  template        jsonb       NOT NULL,
  -- What every firing's timer row gets, resolved with the timer service's defaults at create
  -- or update time, so a dispatcher creates firings without the timer service's configuration.
  firing          jsonb       NOT NULL,
  -- SHA-256 of the create request as sent: a replay with the same hash is idempotent.
  request_hash    bytea       NOT NULL,
  -- The nominal instant of the latest firing created; NULL before the first.
  last_instant    timestamptz,
  -- When the advancer next has to look at this schedule: the fire_at of the latest firing
  -- created (it creates the following one once that is within its lead). NULL when not active.
  advance_at      timestamptz,
  -- OVERLAP_POLICY_SKIP, copied out of spec so the dispatchers' claim can test it cheaply.
  overlap_skip    boolean     NOT NULL DEFAULT false,
  -- Instants not created because of a policy, counted since creation.
  skipped_firings bigint      NOT NULL DEFAULT 0,
  create_time     timestamptz NOT NULL DEFAULT now(),
  update_time     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (group_id, schedule_id)
);

-- The advancer's work: active schedules by when they need their next firing.
CREATE INDEX schedules_advance_idx ON schedules (advance_at) WHERE state = 1;

-- The overlap check of a claim (schedule-rows.ts overlapClearSql): is an earlier firing of the
-- schedule still being delivered? Only unfinished firings are in this index, so the check does
-- not read the schedule's history (a per-second schedule keeps 600,000 finished firings over a
-- week of retention).
CREATE INDEX timers_schedule_active_idx ON timers (group_id, schedule_id, fire_at)
  WHERE schedule_id IS NOT NULL AND state IN (1, 2);
