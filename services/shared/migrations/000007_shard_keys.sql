-- The shard leads every key of timers and timer_attempts, and the dispatchers' indexes:
-- - a dispatcher reads only its own shards' rows: the due index was ordered by time alone, so
--   finding one dispatcher's due timers walked past every other shard's (measured on a copy:
--   98,435 index rows read to return 5,000 due timers for a dispatcher owning 1/20 of the
--   shards, 7,539 with an index led by the shard);
-- - a shard range can later move to another Postgres cluster, keys and all.
-- The shard is a function of (group_id, timer_id) (services/shared/src/shard.ts), so keying on
-- (shard, group_id, timer_id) keeps one timer per (group_id, timer_id).
--
-- On a large table this rebuilds both tables' keys under an exclusive lock: services wait for
-- it at start (the migration lock), plan the upgrade as downtime.

ALTER TABLE timers DROP CONSTRAINT timers_pkey;
ALTER TABLE timers ADD CONSTRAINT timers_pkey PRIMARY KEY (shard, group_id, timer_id);

-- A dispatcher's lookahead and catch-up reads: one range scan per owned shard, in due order.
DROP INDEX timers_due_idx;
CREATE INDEX timers_due_idx ON timers (shard, next_attempt_at) WHERE state = 1;

-- Expired claims of the owned shards (few rows: only timers being delivered).
DROP INDEX timers_claimed_idx;
CREATE INDEX timers_claimed_idx ON timers (shard, claim_expires_at) WHERE state = 2;

-- Attempts carry their timer's shard. Their key is (shard, group_id, timer_id, id): it is also
-- the index a timer's history is read by, in the order it was written, so the former lookup
-- index and the key on id alone (nothing looks an attempt up by id) are one index now, one
-- less for every insert to maintain. The attempt number is not unique (an operator's retry
-- starts a timer's attempts again from 1).
ALTER TABLE timer_attempts ADD COLUMN shard integer;
UPDATE timer_attempts a SET shard = t.shard FROM timers t WHERE t.group_id = a.group_id AND t.timer_id = a.timer_id;

-- Attempts whose timer is gone (deleted by hand: a purge deletes both together) get the shard
-- their key hashes to, computed as shard.ts does: FNV-1a 32 over utf8(group) 0x00 utf8(timer).
CREATE FUNCTION pg_temp.timer_shard(g text, t text, shard_count integer) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  b bytea := convert_to(g, 'UTF8') || '\x00'::bytea || convert_to(t, 'UTF8');
  h bigint := 2166136261;
BEGIN
  FOR i IN 0 .. length(b) - 1 LOOP
    h := ((h # get_byte(b, i)) * 16777619) % 4294967296;
  END LOOP;
  RETURN h % shard_count;
END $$;

UPDATE timer_attempts
   SET shard = pg_temp.timer_shard(group_id, timer_id,
                 coalesce((SELECT value::integer FROM mesh_settings WHERE key = 'shard_count'), 1024))
 WHERE shard IS NULL;

ALTER TABLE timer_attempts ALTER COLUMN shard SET NOT NULL;
ALTER TABLE timer_attempts DROP CONSTRAINT timer_attempts_pkey;
ALTER TABLE timer_attempts ADD CONSTRAINT timer_attempts_pkey PRIMARY KEY (shard, group_id, timer_id, id);
DROP INDEX timer_attempts_timer_idx;
