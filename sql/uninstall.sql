-- pgrelay: removes the relay schema and every capture trigger it attached.
-- Application tables and their data are left as they are.
--
--   psql -v ON_ERROR_STOP=1 -f sql/uninstall.sql "$DSN"     or     relay sql uninstall --dsn "$DSN"
--
-- Idempotent: running it on a database without pgrelay does nothing.

BEGIN;
SET LOCAL client_min_messages = warning;

DO $lock$ BEGIN PERFORM pg_advisory_xact_lock(7236111260339318784); END $lock$;

DO $uninstall$
DECLARE
    t record;
BEGIN
    IF to_regnamespace('relay') IS NULL THEN
        RETURN;
    END IF;
    -- Every trigger that calls a function of the relay schema, tracked or not.
    FOR t IN
        SELECT tg.tgname, tg.tgrelid::regclass AS tbl
          FROM pg_trigger AS tg
          JOIN pg_proc AS p ON p.oid = tg.tgfoid
         WHERE p.pronamespace = 'relay'::regnamespace AND NOT tg.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.tbl);
    END LOOP;
END
$uninstall$;

DROP SCHEMA IF EXISTS relay CASCADE;

COMMIT;
