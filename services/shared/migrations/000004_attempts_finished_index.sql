-- GetStats counts the delivery attempts of the last minute and hour. timer_attempts is
-- append-only and written in time order, so a BRIN index on finished_at finds the recent rows
-- at almost no cost to the dispatchers' inserts (a B-tree would cost every insert).
CREATE INDEX timer_attempts_finished_brin ON timer_attempts USING brin (finished_at);
