-- One liveness lease per dispatcher. A shard lease (shard, owner, epoch) is valid while its
-- owner's dispatcher lease has not expired, so renewing costs one row per dispatcher instead of
-- one row per shard (1,024 rows every renewal before, a lot of dead tuples).
CREATE TABLE dispatcher_leases (
  owner      text        PRIMARY KEY,
  expires_at timestamptz NOT NULL
);

ALTER TABLE shard_leases DROP COLUMN expires_at;

-- Who owns each shard right now: owner is NULL when the shard is free or its owner's lease
-- expired (the owner died, hung, or lost Postgres). For operators, dashboards and tests.
CREATE VIEW shard_owners AS
  SELECT l.shard,
         CASE WHEN d.expires_at > now() THEN l.owner END AS owner,
         l.owner AS last_owner,
         l.epoch,
         d.expires_at AS lease_expires_at
    FROM shard_leases l
    LEFT JOIN dispatcher_leases d ON d.owner = l.owner;
