-- The inbox keeps DEDUPE_RETENTION (default 8 days, above the input topics'
-- 7-day retention): older rows are deleted in batches by the relay leader.
-- A BRIN index finds them: processed_at grows with insertion order, and a
-- BRIN index costs next to nothing to maintain on insert (a B-tree on a
-- write-hot table would cost every event an index write).
CREATE INDEX processed_events_processed_at_brin ON processed_events USING brin (processed_at);
