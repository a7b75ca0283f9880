-- Timers that can change in place, lateness contracts, firings of schedules, and two states.

-- Every change of a timer (UpdateTimer, a bulk shift, pause, resume or retry) raises its
-- version by one; dispatchers claim a held timer only at the version they hold, so a timer
-- moved or rewritten after it was loaded never fires as it was. A constant default is a
-- catalog-only change: no rewrite of a large table.
ALTER TABLE timers ADD COLUMN version bigint NOT NULL DEFAULT 1;

-- Lateness contract (timer.v1.LatenessContract): beyond max_lateness_ms (NULL: no contract),
-- lateness_policy says what happens: 1 FIRE, 2 SKIP (the timer ends EXPIRED), 3 FIRE_MARKED.
ALTER TABLE timers ADD COLUMN max_lateness_ms bigint;
ALTER TABLE timers ADD COLUMN lateness_policy smallint NOT NULL DEFAULT 1;
ALTER TABLE timers ADD CONSTRAINT timers_lateness_policy_check CHECK (lateness_policy BETWEEN 1 AND 3) NOT VALID;
ALTER TABLE timers VALIDATE CONSTRAINT timers_lateness_policy_check;

-- The schedule (schedules.schedule_id, same group) whose firing this timer is; NULL for a
-- one-shot timer.
ALTER TABLE timers ADD COLUMN schedule_id text;

-- States 6 EXPIRED (skipped by its lateness contract) and 7 PAUSED (held by a bulk pause).
-- NOT VALID then VALIDATE: the scan runs without blocking writes.
ALTER TABLE timers DROP CONSTRAINT timers_state_check;
ALTER TABLE timers ADD CONSTRAINT timers_state_check CHECK (state BETWEEN 1 AND 7) NOT VALID;
ALTER TABLE timers VALIDATE CONSTRAINT timers_state_check;

-- A schedule's firings in time order: its next firings, and the overlap check (is the previous
-- firing still being delivered?). Partial: one-shot timers add nothing to it.
CREATE INDEX timers_schedule_idx ON timers (group_id, schedule_id, fire_at) WHERE schedule_id IS NOT NULL;
