-- Which process holds a dispatcher's lease: the claim owner of its claims (`<dispatcher id>#<random>`,
-- one per process start). A claim whose dispatcher lost its shards is taken back only once its
-- delivery deadline (claim_expires_at) has passed and the process that made it is gone; a
-- restart under the same dispatcher id is a different process, so its predecessor's claims are
-- not mistaken for live ones. NULL for a dispatcher of an earlier version (judged by id alone).
ALTER TABLE dispatcher_leases ADD COLUMN incarnation text;
