-- Memories' vectors stored in the row, not out of line: a 1536-dim vector (6 KB) is over
-- PostgreSQL's 2 KB out-of-line threshold, and fetching it through the TOAST table (an
-- index lookup and three chunks per vector) made up most of an exact search's cost.
-- The largest allowed vector (2000 dims, 8 KB) still fits in a page. Rows written
-- before this migration keep their storage until they are rewritten.
ALTER TABLE memories ALTER COLUMN embedding SET STORAGE PLAIN;
