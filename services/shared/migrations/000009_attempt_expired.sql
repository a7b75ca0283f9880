-- A timer skipped by its lateness contract (LATENESS_POLICY_SKIP) records its judged first
-- attempt with outcome 'expired': the receiver was not called, and ExplainTimer shows why.
-- NOT VALID then VALIDATE: the check of existing rows runs without blocking the dispatchers'
-- inserts.
ALTER TABLE timer_attempts DROP CONSTRAINT timer_attempts_outcome_check;
ALTER TABLE timer_attempts ADD CONSTRAINT timer_attempts_outcome_check
  CHECK (outcome IN ('succeeded', 'retry', 'failed', 'abandoned', 'expired')) NOT VALID;
ALTER TABLE timer_attempts VALIDATE CONSTRAINT timer_attempts_outcome_check;
