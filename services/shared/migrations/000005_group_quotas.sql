-- Per-group overrides of GROUP_MAX_ACTIVE_TIMERS, set by operators (AdminService/SetGroupQuota,
-- audited). Timer services read the whole table at every ACTIVE_TIMERS_REFRESH; a group
-- without a row gets the service's GROUP_MAX_ACTIVE_TIMERS.
CREATE TABLE group_quotas (
  group_id          text        PRIMARY KEY,
  max_active_timers bigint      NOT NULL CHECK (max_active_timers > 0),
  -- Who set it: the token's name (never the token).
  set_by            text        NOT NULL,
  set_at            timestamptz NOT NULL DEFAULT now()
);
