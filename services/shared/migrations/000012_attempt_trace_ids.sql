-- Each delivery attempt keeps the trace id of the traceparent the dispatcher sent the receiver
-- with it, so ExplainTimer (and the console) can link an attempt to its trace and to the
-- receiver's logs. NULL for attempts that sent nothing (expired, abandoned) and for those
-- recorded before this column. Adding a nullable column without a default rewrites nothing:
-- it takes only a brief lock, whatever the size of the table.
ALTER TABLE timer_attempts ADD COLUMN trace_id text;
