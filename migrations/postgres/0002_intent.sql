-- PostgreSQL twin of migrations/sqlite/0002_intent.sql (see there).
ALTER TABLE jobs ADD COLUMN intent TEXT;
