-- pgrelay: change capture for the realtime relay.
--
-- Install or upgrade:   psql -v ON_ERROR_STOP=1 -f sql/install.sql "$DSN"
--                  or   relay sql install --dsn "$DSN"
--
-- Idempotent: running it again changes nothing; running a newer version over an older one
-- upgrades in place (data, tracked tables and the epoch are kept). Runs in one transaction.
-- Run it as the role that owns the tracked tables, or a superuser. The installing role owns the
-- schema; only the relay's own code runs with its rights (docs/operations.md, section 2).
--
-- Design, in short (docs/operations.md has the long form):
--   * a row trigger on each tracked table appends the row as it is (JSON text) to relay.inbox
--     (unsequenced), with only what needs the writer (the conversion with its rights, the
--     audience function); the sequencer shapes the events from it, a batch at a time; it rings
--     NOTIFY relay_inbox (an empty payload: a doorbell, never the data) only with notify on,
--     off by default: the relay's sequencer polls the inbox instead;
--   * one sequencer at a time (relay.sequence_batch, serialised on relay.head's row lock;
--     the relay elects it with an advisory lock) moves committed inbox rows into relay.log,
--     numbering them with strictly increasing, gap-free positions, then rings relay_log once
--     per batch with the new head as the payload;
--   * readers tail relay.log by position. A position is visible only once every smaller
--     position is, whatever order the writers committed in.

BEGIN;
SET LOCAL client_min_messages = warning;

-- Two concurrent installs (two replicas starting at once) queue up instead of colliding.
DO $lock$ BEGIN PERFORM pg_advisory_xact_lock(7236111260339318784); END $lock$;

CREATE SCHEMA IF NOT EXISTS relay;
COMMENT ON SCHEMA relay IS 'pgrelay change capture: inbox, sequenced log, tracked tables';
REVOKE ALL ON SCHEMA relay FROM PUBLIC;

-- One row of settings, changed in one place (relay.configure) and read by every trigger.
CREATE TABLE IF NOT EXISTS relay.settings (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch          uuid        NOT NULL DEFAULT gen_random_uuid(),
    schema_version integer     NOT NULL DEFAULT 0,
    notify         boolean     NOT NULL DEFAULT false,
    max_row_bytes  integer     NOT NULL DEFAULT 65536 CHECK (max_row_bytes > 0),
    installed_at   timestamptz NOT NULL DEFAULT now(),
    upgraded_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO relay.settings DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Migrations, each applied once, in order.
DO $migrate$
DECLARE
    current_version integer := (SELECT schema_version FROM relay.settings);
BEGIN
    IF current_version < 1 THEN
        -- Written by the capture triggers. Unsequenced: id order is write order, not commit order.
        CREATE TABLE relay.inbox (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            captured_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            table_schema name        NOT NULL,
            table_name   name        NOT NULL,
            op           text        NOT NULL,
            pk           jsonb       NOT NULL,
            old_key      jsonb,
            row_data     jsonb,
            changed      text[],
            audience     text[]      NOT NULL,
            truncated    boolean     NOT NULL DEFAULT false
        );

        -- Written only by relay.sequence_batch. pos is gap-free and strictly increasing.
        CREATE TABLE relay.log (
            pos          bigint PRIMARY KEY,
            table_schema name        NOT NULL,
            table_name   name        NOT NULL,
            op           text        NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
            pk           jsonb       NOT NULL,
            old_key      jsonb,
            row_data     jsonb,
            changed      text[],
            audience     text[]      NOT NULL,
            truncated    boolean     NOT NULL DEFAULT false,
            captured_at  timestamptz NOT NULL,
            committed_at timestamptz NOT NULL,
            sequenced_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX log_sequenced_at ON relay.log (sequenced_at);
        -- Replay of one user's missed events without scanning everyone's.
        CREATE INDEX log_audience ON relay.log USING gin (audience);

        -- The sequencer's state. Its row lock serialises sequencers, whatever the relay does.
        CREATE TABLE relay.head (
            singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            pos            bigint NOT NULL DEFAULT 0,
            pruned_through bigint NOT NULL DEFAULT 0
        );
        INSERT INTO relay.head DEFAULT VALUES;

        CREATE TABLE relay.tracked (
            tbl          regclass PRIMARY KEY,
            owner_column name,
            audience     regproc,
            columns      name[],
            pk_columns   name[]      NOT NULL,
            tracked_at   timestamptz NOT NULL DEFAULT now(),
            CHECK ((owner_column IS NULL) <> (audience IS NULL))
        );
    END IF;

    IF current_version < 2 THEN
        -- Heartbeats: internal events the relay writes through the same inbox -> sequencer ->
        -- log path, so "no events lately" can be told apart from "the pipeline is broken".
        ALTER TABLE relay.log DROP CONSTRAINT log_op_check;
        ALTER TABLE relay.log ADD CONSTRAINT log_op_check
            CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'HEARTBEAT'));
    END IF;

    IF current_version < 3 THEN
        -- relay.capture runs with the writer's rights and hands each event, in this shape, to a
        -- second trigger, relay_capture_append, which appends it to the inbox (the privilege
        -- boundary); a row to_jsonb refuses no longer fails the write. The functions are
        -- replaced and every tracked table re-attached below.
        CREATE TYPE relay.handover AS (
            pk        jsonb,
            old_key   jsonb,
            row_data  jsonb,
            changed   text[],
            audience  text[],
            truncated boolean
        );
    END IF;

    IF current_version < 4 THEN
        -- Move-outs and entries (docs/protocol.md, section 5.4): an UPDATE also carries the old
        -- values of the carried columns it changed (old_values: the old row is row_data with
        -- these laid over it) and, when it differs from the new one, the old row's audience
        -- (old_audience), so the relay can tell, per subscriber, a row that stayed in view
        -- from one that left it or entered it. NULL in rows written before this version.
        ALTER TYPE relay.handover ADD ATTRIBUTE old_values jsonb, ADD ATTRIBUTE old_audience text[];
        ALTER TABLE relay.inbox ADD COLUMN old_values jsonb, ADD COLUMN old_audience text[];
        ALTER TABLE relay.log ADD COLUMN old_values jsonb, ADD COLUMN old_audience text[];
        -- A replay also finds the events of users only in the old audience (their move-outs).
        -- Partial: only rows whose audience changed are indexed, so writes of the others cost
        -- nothing more, and the index starts empty on an upgrade.
        CREATE INDEX log_old_audience ON relay.log USING gin (old_audience)
            WHERE old_audience IS NOT NULL;
        -- The whitelist by attribute number, so it follows a column's rename.
        ALTER TABLE relay.tracked ADD COLUMN column_nums int2[];
        UPDATE relay.tracked AS t
           SET column_nums = coalesce(ARRAY(
                   SELECT a.attnum FROM pg_attribute AS a
                    WHERE a.attrelid = t.tbl AND a.attnum > 0 AND NOT a.attisdropped
                      AND a.attname = ANY (t.columns)
                    ORDER BY a.attnum), '{}')
         WHERE t.columns IS NOT NULL AND EXISTS (SELECT FROM pg_class WHERE oid = t.tbl);
    END IF;

    IF current_version < 5 THEN
        -- The writers' doorbell is off by default: a NOTIFY in a writer's transaction takes a
        -- database-wide lock at commit, serialising concurrent writers, and the relay's
        -- sequencer polls the inbox instead (docs/operations.md, "The doorbell"). Earlier
        -- versions had it on by default; an upgrade switches it off once.
        -- relay.configure(notify => true) turns it back on.
        ALTER TABLE relay.settings ALTER COLUMN notify SET DEFAULT false;
        UPDATE relay.settings SET notify = false;
    END IF;

    IF current_version < 6 THEN
        -- Lean capture: a writer's trigger hands the row as it is (row_to_json, the old row too
        -- for an UPDATE, and an audience function's answers) and the sequencer shapes the event
        -- set-based, a batch at a time: whitelist, key, old key, changed columns and their old
        -- values, an owner column's audiences, max_row_bytes (relay._shape). captured is that
        -- hand-over (a JSON array, as text: see relay.capture); tbl names the table for its
        -- tracking row (and its schema and name: a captured row carries neither, 128 bytes of
        -- the writer's WAL less). Rows written before this version carry the shaped event as
        -- before (captured NULL) and are moved as they are.
        ALTER TABLE relay.inbox ADD COLUMN tbl oid, ADD COLUMN captured text,
            ALTER COLUMN pk DROP NOT NULL, ALTER COLUMN audience DROP NOT NULL,
            ALTER COLUMN table_schema DROP NOT NULL, ALTER COLUMN table_name DROP NOT NULL;
    END IF;

    IF current_version < 7 THEN
        -- Replays find one user's events through the GIN on audience (a move-out through the
        -- partial one on old_audience), now updated in place: a row costs the sequencer as many
        -- instructions as through the pending list, every replay query no longer scans up to
        -- 4 MB of pending entries, and no batch pays for moving thousands of rows' entries in at
        -- once (BENCHMARKS.md, "Replays: finding one user's events"). What is pending moves in
        -- now. relay.prune bisects the primary key: the index on sequenced_at goes.
        ALTER INDEX relay.log_audience SET (fastupdate = off);
        ALTER INDEX relay.log_old_audience SET (fastupdate = off);
        PERFORM gin_clean_pending_list('relay.log_audience'),
                gin_clean_pending_list('relay.log_old_audience');
        DROP INDEX relay.log_sequenced_at;
    END IF;
END
$migrate$;

-- Functions are replaced on every run, so an upgrade brings the new code.

-- The given columns of a row as a jsonb object, with the caller's rights; NULL when they cannot
-- be converted (relay.capture's slow path, for a row to_jsonb refused). Names that are not
-- columns of the row (any more) are skipped.
CREATE OR REPLACE FUNCTION relay._pick(r anyelement, cols text[]) RETURNS jsonb
LANGUAGE plpgsql STRICT SET search_path = pg_catalog, pg_temp AS $pick$
DECLARE
    query  text;
    picked jsonb;
BEGIN
    SELECT 'SELECT to_jsonb(p) FROM (SELECT '
           || coalesce(string_agg(format('($1).%I', a.attname), ', ' ORDER BY a.attnum), '')
           || ') AS p'
      INTO query
      FROM pg_type AS t
      JOIN pg_attribute AS a ON a.attrelid = t.typrelid
     WHERE t.oid = pg_typeof(r) AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname = ANY (cols);
    EXECUTE query INTO picked USING r;
    RETURN picked;
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE LIKE '40%' THEN
        RAISE;  -- serialization failure, deadlock: the transaction must see them
    END IF;
    RETURN NULL;
END
$pick$;

-- The capture trigger. Arguments, fixed by relay._attach:
--   0 owner column ('' when an audience function is used), 1 audience function oid ('' if none),
--   2 whitelisted columns as a text[] literal ('' for all), 3 primary key columns (text[] literal),
--   4 unused since version 6 (kept so the arguments of older triggers keep their places),
--   5 with a whitelist, the whitelisted columns' attribute numbers (int2[] literal),
--   6 the notify setting when the trigger was attached ('t' or 'f'; relay.configure re-attaches
--     every tracked table when it changes; a trigger without it reads relay.settings).
-- Capture is two row triggers on each tracked table, fired in name order for every row:
--   relay_capture (this function, SECURITY INVOKER) converts the row and runs the audience
--     function with the writer's rights, never the schema owner's (a column type's cast to json
--     and the audience function are code of other roles); it hands the event to the next
--     trigger in the transaction-local setting relay.captured, which it always overwrites
--     (with '' when there is no event) as its last step;
--   relay_capture_append (relay.append_captured, SECURITY DEFINER) is the only privileged
--     step: it runs no code but its own, and appends that event to relay.inbox.
-- A trigger function cannot be called directly, and EXECUTE on both is revoked from PUBLIC, so
-- no role but the schema owner can attach them to a table of its own: a writer's only way to an
-- event is a write to a tracked table. Whatever a writer puts into relay.captured before is
-- overwritten by relay_capture before relay_capture_append reads it.
-- Lean (version 6): the writer's transaction does only what needs the writer: the conversion of
-- the row (row_to_json: each value's text, no jsonb built), and of the old row for an UPDATE,
-- and the audience function's answers in the writer's snapshot. It hands them over as the text
-- of one JSON array, [new row, old row, audience, old audience] (JSON null where there is none;
-- the audiences as text[] literals, only with an audience function), and relay._shape builds the
-- event from it when the sequencer moves it, a batch at a time: whitelist, key, old key, the
-- changed columns and their old values, an owner column's audiences, max_row_bytes (see there).
-- An UPDATE that changes nothing (NEW *= OLD) is no event, and hands nothing over.
-- Capture never fails a write that would succeed untracked: a row row_to_json refuses (a cast
-- that raises, a value too large) is handed over all the same, from the slow path below: with a
-- whitelist the whitelisted columns are tried alone (with the key and owner columns), else (or
-- if they fail too) the key and owner columns alone, flagged key only (a fifth element, true);
-- a key that cannot be converted either travels with null values. So is a row whose JSON text
-- jsonb would refuse (a json column holding \u0000, say): the sequencer never meets one.
-- Errors of the audience function, the application's own code, fail the write as any
-- trigger's would. The exception block around the conversion costs no transaction id.
CREATE OR REPLACE FUNCTION relay.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $capture$
DECLARE
    handed     text;
    who        text[];
    old_who    text[];
    whitelist  text[];
    key_cols   text[];
    new_picked jsonb;
    old_picked jsonb;
    key_only   boolean := false;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW *= OLD THEN
        handed := set_config('relay.captured', '', true);  -- nothing changed: no event
        RETURN NULL;
    END IF;
    IF TG_ARGV[1] <> '' THEN
        -- Both answers of an UPDATE in one statement: each EXECUTE is parsed and planned anew.
        IF TG_OP = 'UPDATE' THEN
            EXECUTE format('SELECT %1$s($1), %1$s($2)', TG_ARGV[1]::oid::regproc)
               INTO who, old_who USING NEW, OLD;
        ELSIF TG_OP = 'DELETE' THEN
            EXECUTE format('SELECT %s($1)', TG_ARGV[1]::oid::regproc) INTO who USING OLD;
        ELSE
            EXECUTE format('SELECT %s($1)', TG_ARGV[1]::oid::regproc) INTO who USING NEW;
        END IF;
    END IF;
    BEGIN
        handed := json_build_array(row_to_json(NEW), row_to_json(OLD), who::text, old_who::text);
        -- What jsonb refuses in JSON text comes from a json column's text (an escaped \u0000
        -- or lone surrogate): only then is the cast tried here. (A row past jsonb's size limit,
        -- hundreds of MB, is cut to its key by the sequencer: relay._salvage.)
        IF strpos(handed, '\u') > 0 THEN
            PERFORM handed::jsonb;  -- raises for a row the sequencer could not take
        END IF;
    EXCEPTION WHEN OTHERS THEN
        IF SQLSTATE LIKE '40%' THEN
            RAISE;  -- serialization failure, deadlock: the transaction must see them
        END IF;
        -- Slow path (dynamic SQL, only for such rows): the whitelisted columns with the key and
        -- owner columns, or those alone.
        key_cols := TG_ARGV[3]::text[] || CASE WHEN TG_ARGV[0] <> '' THEN ARRAY[TG_ARGV[0]] END;
        IF TG_ARGV[2] <> '' THEN
            whitelist := TG_ARGV[2]::text[];
            IF TG_NARGS > 5 THEN  -- the whitelisted columns as they are named now
                whitelist := ARRAY(SELECT a.attname::text FROM pg_attribute AS a
                                    WHERE a.attrelid = TG_RELID AND NOT a.attisdropped
                                      AND a.attnum = ANY (TG_ARGV[5]::int2[]));
            END IF;
            new_picked := relay._pick(NEW, whitelist || key_cols);
            old_picked := relay._pick(OLD, whitelist || key_cols);
        END IF;
        IF whitelist IS NULL OR (TG_OP <> 'DELETE' AND new_picked IS NULL)
                             OR (TG_OP <> 'INSERT' AND old_picked IS NULL) THEN
            key_only := true;
            IF TG_OP <> 'DELETE' THEN
                new_picked := coalesce(relay._pick(NEW, key_cols),
                                       relay._pick(NEW, ARRAY[TG_ARGV[0]]), '{}');
            END IF;
            IF TG_OP <> 'INSERT' THEN
                old_picked := coalesce(relay._pick(OLD, key_cols),
                                       relay._pick(OLD, ARRAY[TG_ARGV[0]]), '{}');
            END IF;
        END IF;
        handed := json_build_array(new_picked, old_picked, who::text, old_who::text, key_only);
    END;
    handed := set_config('relay.captured', handed, true);

    -- Constant payload: Postgres folds these into one per transaction, and no row can ever fail
    -- to commit because of NOTIFY's 8000-byte limit. (Two plain tests: an expression holding a
    -- query costs a full executor run per row.)
    IF TG_NARGS > 6 THEN
        IF TG_ARGV[6] = 't' THEN
            PERFORM pg_notify('relay_inbox', '');
        END IF;
    ELSIF (SELECT s.notify FROM relay.settings AS s) THEN  -- a trigger attached before version 6
        PERFORM pg_notify('relay_inbox', '');
    END IF;
    RETURN NULL;
END
$capture$;

-- The privileged step of capture, the trigger relay_capture_append: appends what relay_capture
-- handed over for this row (see relay.capture) to relay.inbox, as the schema owner, as it is
-- (relay._shape reads it when the sequencer moves it), and clears the hand-over (so with
-- relay_capture disabled, nothing is appended). It runs no code but its own; the table and op
-- come from its own TG_*.
CREATE OR REPLACE FUNCTION relay.append_captured() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $append$
DECLARE
    handed text := current_setting('relay.captured', true);
    cleared text;
BEGIN
    IF handed IS NULL OR handed = '' THEN
        RETURN NULL;  -- relay_capture found nothing to carry
    END IF;
    cleared := set_config('relay.captured', '', true);
    INSERT INTO relay.inbox (tbl, op, captured) VALUES (TG_RELID, TG_OP, handed);
    RETURN NULL;
END
$append$;

-- A captured hand-over (relay.capture) as jsonb: the slow path of the sequencer's cast, taken
-- row by row only for a batch the plain cast failed. relay.capture hands over only JSON text
-- jsonb accepts, apart from a row past jsonb's size limit (hundreds of MB): that one keeps its
-- key and owner columns (key_cols) alone, flagged key only. NULL, no event, for text that is no
-- hand-over at all: only text put into relay.captured while relay_capture was disabled (by the
-- table's owner) can be.
CREATE OR REPLACE FUNCTION relay._salvage(captured text, key_cols text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $salvage$
DECLARE
    handed json;
    event  jsonb;
BEGIN
    BEGIN
        event := captured::jsonb;
    EXCEPTION WHEN OTHERS THEN
        handed := captured::json;  -- valid JSON jsonb refused: the key alone
        event := jsonb_build_array(
            CASE WHEN json_typeof(handed -> 0) = 'object' THEN
                (SELECT jsonb_object_agg(e.key, e.value::jsonb) FROM json_each(handed -> 0) AS e
                  WHERE e.key = ANY (key_cols)) END,
            CASE WHEN json_typeof(handed -> 1) = 'object' THEN
                (SELECT jsonb_object_agg(e.key, e.value::jsonb) FROM json_each(handed -> 1) AS e
                  WHERE e.key = ANY (key_cols)) END,
            handed ->> 2, handed ->> 3, true);
    END;
    -- Only the shape relay.capture hands over goes on: the sequencer's statement reads it so.
    IF jsonb_typeof(event) <> 'array'
       OR coalesce(jsonb_typeof(event -> 0), 'null') NOT IN ('object', 'null')
       OR coalesce(jsonb_typeof(event -> 1), 'null') NOT IN ('object', 'null') THEN
        RETURN NULL;
    END IF;
    PERFORM (event ->> 2)::text[], (event ->> 3)::text[], (event ->> 4)::boolean;
    RETURN event;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;  -- no hand-over at all
END
$salvage$;

-- Moves committed inbox rows into the log. Returns how many inbox rows it took (at most
-- max_rows: as many means more may wait), each now an event or, when it changed nothing an
-- event carries, nothing.
-- Positions are numbered from relay.head under its row lock, so two sequencers can never
-- interleave; what one batch cannot see yet (uncommitted) a later batch moves, higher up.
-- A batch that moved rows rings relay_log once, with the new head as the payload, so readers
-- learn it once per batch and skip a read for a head they have already read.
-- Each captured row becomes its event here, set-based, one statement for the batch (the writer
-- handed the row as it is: relay.capture):
--   * the table's tracking now (relay.tracked; an event of a table untracked since it was
--     written is dropped): the whitelist by attribute number under the columns' names of now,
--     the key columns, the owner column;
--   * the carried values: the row without the columns the whitelist leaves out, in one
--     operation (exact unless the row holds a name the catalog does not know now: a column
--     renamed since the write; then the whitelisted names are picked one by one);
--   * an UPDATE's changed carried columns, in name order, and their old values; an UPDATE that
--     changes no carried column and not the audience is no event;
--   * the audience: the owner column's value (the old row's for a DELETE), or the audience
--     function's answer the writer handed over; an UPDATE's old audience when it differs;
--   * a row over max_row_bytes (its carried values, or an UPDATE's old values of the changed
--     ones), or one handed over key only, travels as its key only, flagged truncated.
-- Rows written before version 6 carry their event already shaped, and are moved as they are.
-- A batch holding a row whose text the plain cast to jsonb refuses is taken again, each row
-- through relay._salvage (one subtransaction per batch in the common case, none per row). Its
-- plan is prepared once (plan_cache_mode): a batch is one statement, never planned anew.
-- enable_seqscan is off in it (and in relay.sequence_log): the inbox and the log are read by
-- their primary keys, whatever their statistics say. Left to the planner, a plan made while the
-- inbox looks empty (it always does) or the log is small (a new install) scans them whole; the
-- inbox's heap, rows deleted as fast as they are written, holds every dead row since the last
-- vacuum, and the plan stays until an analyze replaces it: at 10,000 events/s that cost the
-- sequencer's backend 4 to 5 times its work (BENCHMARKS.md, "The planner and the hot inbox").
CREATE OR REPLACE FUNCTION relay.sequence_batch(max_rows integer DEFAULT 1000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $sequence$
DECLARE
    head_pos  bigint;
    took      bigint;  -- inbox rows taken
    moved     bigint;  -- events logged: fewer when an UPDATE changed nothing carried
    commit_ts boolean := current_setting('track_commit_timestamp') = 'on';
    max_bytes integer;
    salvage   boolean := false;
BEGIN
    -- The relay polls the inbox (every millisecond or two under load): a look at an empty inbox
    -- must stay cheap: no row lock, no transaction id.
    IF NOT EXISTS (SELECT FROM relay.inbox) THEN
        RETURN 0;
    END IF;
    SELECT pos INTO head_pos FROM relay.head FOR UPDATE;
    SELECT s.max_row_bytes INTO max_bytes FROM relay.settings AS s;

    LOOP
        BEGIN
            -- Each stage is MATERIALIZED: computed once per row, not once per use.
            WITH taken AS (
                DELETE FROM relay.inbox AS i
                 WHERE i.id = ANY (ARRAY(SELECT b.id FROM relay.inbox AS b
                                          ORDER BY b.id LIMIT max_rows))
                RETURNING i.*, i.xmin AS writer_xid
            ), tables AS MATERIALIZED (  -- each table of the batch once, tracked as it is now
                SELECT tr.tbl, n.nspname AS table_schema, c.relname AS table_name,
                       tr.pk_columns::text[] AS key_cols,
                       tr.owner_column::text AS owner, tr.audience IS NOT NULL AS by_function,
                       CASE WHEN tr.columns IS NOT NULL THEN coalesce(cur.whitelist, '{}') END
                           AS whitelist,
                       coalesce(cur.left_out, '{}') AS left_out
                  FROM relay.tracked AS tr
                  JOIN pg_class AS c ON c.oid = tr.tbl
                  JOIN pg_namespace AS n ON n.oid = c.relnamespace
                 CROSS JOIN LATERAL (
                       SELECT array_agg(a.attname::text) FILTER (WHERE w.carried) AS whitelist,
                              array_agg(a.attname::text) FILTER (WHERE NOT w.carried) AS left_out
                         FROM pg_attribute AS a
                        CROSS JOIN LATERAL (SELECT CASE
                                WHEN tr.columns IS NULL THEN true
                                WHEN tr.column_nums IS NOT NULL THEN a.attnum = ANY (tr.column_nums)
                                ELSE a.attname = ANY (tr.columns) END AS carried) AS w
                        WHERE a.attrelid = tr.tbl AND a.attnum > 0 AND NOT a.attisdropped
                       ) AS cur
                 WHERE tr.tbl IN (SELECT t.tbl FROM taken AS t)
            ), handed AS MATERIALIZED (  -- the hand-over parsed once
                SELECT t.id, tb.table_schema, tb.table_name, t.op, t.captured_at, t.writer_xid,
                       tb.key_cols, tb.owner, tb.by_function, tb.whitelist, tb.left_out,
                       nullif(p.j -> 0, 'null') AS new_full, nullif(p.j -> 1, 'null') AS old_full,
                       coalesce((p.j ->> 2)::text[], '{}') AS given_who,
                       coalesce((p.j ->> 3)::text[], '{}') AS given_old_who,
                       coalesce((p.j ->> 4)::boolean, false) AS key_only
                  FROM taken AS t
                  JOIN tables AS tb ON tb.tbl = t.tbl
                 CROSS JOIN LATERAL (
                       SELECT CASE WHEN salvage
                                   THEN relay._salvage(t.captured, tb.key_cols || tb.owner)
                                   ELSE t.captured::jsonb END AS j
                       OFFSET 0) AS p
                 WHERE t.captured IS NOT NULL AND p.j IS NOT NULL
            ), carried AS MATERIALIZED (  -- the whitelisted values, new and old
                SELECT h.*,
                       CASE WHEN h.whitelist IS NULL OR h.new_full IS NULL THEN h.new_full
                            WHEN h.new_full - h.left_out - h.whitelist = '{}'
                            THEN h.new_full - h.left_out
                            ELSE (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}')
                                    FROM jsonb_each(h.new_full) AS e
                                   WHERE e.key = ANY (h.whitelist)) END AS new_row,
                       CASE WHEN h.whitelist IS NULL OR h.old_full IS NULL THEN h.old_full
                            WHEN h.old_full - h.left_out - h.whitelist = '{}'
                            THEN h.old_full - h.left_out
                            ELSE (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}')
                                    FROM jsonb_each(h.old_full) AS e
                                   WHERE e.key = ANY (h.whitelist)) END AS old_row
                  FROM handed AS h
            ), described AS MATERIALIZED (  -- what changed, who may see it, the keys
                SELECT c.id, c.table_schema, c.table_name, c.op, c.captured_at, c.writer_xid,
                       c.key_only, CASE WHEN c.op = 'DELETE' THEN c.old_row ELSE c.new_row END
                           AS row_data,
                       CASE WHEN c.op = 'UPDATE' AND NOT c.key_only THEN d.changed END AS changed,
                       CASE WHEN c.op = 'UPDATE' AND NOT c.key_only THEN d.old_values END
                           AS old_values,
                       CASE WHEN c.by_function THEN c.given_who
                            WHEN coalesce(c.new_full, c.old_full) ->> c.owner IS NULL
                            THEN '{}'::text[]
                            ELSE ARRAY[coalesce(c.new_full, c.old_full) ->> c.owner] END AS audience,
                       CASE WHEN c.op <> 'UPDATE' THEN NULL
                            WHEN c.by_function THEN nullif(c.given_old_who, c.given_who)
                            WHEN c.new_full ->> c.owner IS NOT DISTINCT FROM c.old_full ->> c.owner
                            THEN NULL
                            WHEN c.old_full ->> c.owner IS NULL THEN '{}'::text[]
                            ELSE ARRAY[c.old_full ->> c.owner] END AS old_audience,
                       CASE WHEN cardinality(c.key_cols) = 1
                            THEN jsonb_build_object(c.key_cols[1],
                                                    coalesce(c.new_full, c.old_full) -> c.key_cols[1])
                            ELSE (SELECT jsonb_object_agg(k.name,
                                             coalesce(c.new_full, c.old_full) -> k.name)
                                    FROM unnest(c.key_cols) AS k(name)) END AS pk,
                       CASE WHEN c.op = 'INSERT' THEN NULL
                            WHEN cardinality(c.key_cols) = 1
                            THEN jsonb_build_object(c.key_cols[1], c.old_full -> c.key_cols[1])
                            ELSE (SELECT jsonb_object_agg(k.name, c.old_full -> k.name)
                                    FROM unnest(c.key_cols) AS k(name)) END AS old_key
                  FROM carried AS c
                  LEFT JOIN LATERAL (
                       SELECT coalesce(array_agg(e.key ORDER BY e.key), '{}') AS changed,
                              coalesce(jsonb_object_agg(e.key, c.old_row -> e.key), '{}')
                                  AS old_values
                         FROM jsonb_each(c.new_row) AS e
                        WHERE e.value IS DISTINCT FROM c.old_row -> e.key) AS d
                    ON c.op = 'UPDATE' AND NOT c.key_only
            ), events AS (
                SELECT s.id, s.table_schema, s.table_name, s.op, s.pk, s.old_key,
                       CASE WHEN NOT s.cut THEN s.row_data END AS row_data, s.changed,
                       s.audience, s.cut AS truncated,
                       CASE WHEN NOT s.cut THEN s.old_values END AS old_values, s.old_audience,
                       s.captured_at, s.writer_xid
                  FROM (SELECT x.*, x.key_only OR coalesce(greatest(pg_column_size(x.row_data),
                                       pg_column_size(x.old_values)) > max_bytes, false) AS cut
                          FROM described AS x
                         WHERE NOT (x.op = 'UPDATE' AND NOT x.key_only AND x.changed = '{}'
                                    AND x.old_audience IS NULL)) AS s
                 UNION ALL  -- written before version 6, or a heartbeat: shaped already
                SELECT t.id, t.table_schema, t.table_name, t.op, t.pk, t.old_key, t.row_data,
                       t.changed, t.audience, t.truncated, t.old_values, t.old_audience,
                       t.captured_at, t.writer_xid
                  FROM taken AS t
                 WHERE t.captured IS NULL
            ), logged AS (
                INSERT INTO relay.log (pos, table_schema, table_name, op, pk, old_key, row_data,
                                       changed, audience, truncated, old_values, old_audience,
                                       captured_at, committed_at)
                SELECT head_pos + row_number() OVER (ORDER BY e.id),
                       e.table_schema, e.table_name, e.op, e.pk, e.old_key, e.row_data,
                       e.changed, e.audience, e.truncated, e.old_values, e.old_audience,
                       e.captured_at,
                       -- Exact with track_commit_timestamp = on; else the capture time, a lower
                       -- bound.
                       coalesce(CASE WHEN commit_ts THEN pg_xact_commit_timestamp(e.writer_xid)
                                END, e.captured_at)
                  FROM events AS e
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM taken), (SELECT count(*) FROM logged)
              INTO took, moved;
            EXIT;
        EXCEPTION WHEN OTHERS THEN
            IF salvage OR SQLSTATE LIKE '40%' OR SQLSTATE = '57014' THEN
                RAISE;  -- not a value the cast refused: the caller must see it
            END IF;
            salvage := true;  -- once more, each row through relay._salvage
        END;
    END LOOP;

    IF moved > 0 THEN
        UPDATE relay.head SET pos = head_pos + moved;
        PERFORM pg_notify('relay_log', (head_pos + moved)::text);
    END IF;
    RETURN took;
END
$sequence$;

-- relay.sequence_batch, returning the events it logged, in position order, in the shape the relay
-- reads the log in (relay/pg/queries.py LOG_COLUMNS: the JSON columns as text): the leader's
-- relay routes them without reading them back (docs/operations.md, "The leader's path"). The
-- rows are those past the head it found under relay.head's row lock: this transaction's own.
CREATE OR REPLACE FUNCTION relay.sequence_log(max_rows integer DEFAULT 1000)
RETURNS TABLE (pos bigint, table_schema name, table_name name, op text, pk text, row_data text,
               old_key text, changed text[], audience text[], committed_at timestamptz,
               truncated boolean, old_values text, old_audience text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $sequence_log$
DECLARE
    head_pos bigint;
    logged   bigint := 0;
    want     integer;
    took     bigint;
BEGIN
    IF max_rows < 1 OR NOT EXISTS (SELECT FROM relay.inbox) THEN
        RETURN;  -- as cheap as sequence_batch's empty look: no row lock, no transaction id
    END IF;
    SELECT h.pos INTO head_pos FROM relay.head AS h FOR UPDATE;
    -- Batches until max_rows events are logged or every visible inbox row is taken: an UPDATE
    -- that changed nothing carried is taken and logs nothing, so fewer than max_rows rows back
    -- means nothing more waits (the relay's pacing reads it so), never a batch of such UPDATEs.
    LOOP
        want := max_rows - logged;
        took := relay.sequence_batch(want);
        SELECT h.pos - head_pos INTO logged FROM relay.head AS h;
        EXIT WHEN took < want OR logged >= max_rows;
    END LOOP;
    RETURN QUERY
    SELECT l.pos, l.table_schema, l.table_name, l.op, l.pk::text, l.row_data::text,
           l.old_key::text, l.changed, l.audience, l.committed_at, l.truncated,
           l.old_values::text, l.old_audience
      FROM relay.log AS l WHERE l.pos > head_pos ORDER BY l.pos;
END
$sequence_log$;

-- Deletes log rows sequenced before now() - older_than, at most max_rows per call, oldest
-- first. Returns how many it deleted; call again while it returns max_rows.
-- Positions are gap-free and sequenced_at grows with them (one sequencer at a time stamps its
-- rows), so the rows old enough are a prefix of the log: bisection over the primary key finds
-- its end in about 17 probes for 100,000 rows, with no index on sequenced_at for the sequencer to
-- maintain (should the clock step back, rows near the horizon go a little early or late).
CREATE OR REPLACE FUNCTION relay.prune(older_than interval, max_rows integer DEFAULT 100000)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $prune$
DECLARE
    horizon timestamptz := now() - older_than;
    pruned  bigint;
    low     bigint;  -- the highest position known old enough (or already pruned)
    high    bigint;  -- the lowest position known too young (or past the bound)
    mid     bigint;
    stamped timestamptz;
    deleted bigint;
BEGIN
    SELECT h.pruned_through, least(h.pos, h.pruned_through + greatest(max_rows, 0)) + 1
      INTO pruned, high FROM relay.head AS h;
    low := pruned;
    WHILE high - low > 1 LOOP
        mid := low + (high - low) / 2;
        SELECT l.sequenced_at INTO stamped FROM relay.log AS l
         WHERE l.pos >= mid ORDER BY l.pos LIMIT 1;
        IF stamped < horizon THEN
            low := mid;
        ELSE
            high := mid;  -- too young, or no row from here on
        END IF;
    END LOOP;
    IF low = pruned THEN
        RETURN 0;
    END IF;
    DELETE FROM relay.log WHERE pos > pruned AND pos <= low;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    UPDATE relay.head SET pruned_through = greatest(pruned_through, low);
    RETURN deleted;
END
$prune$;

-- Writes a heartbeat into the inbox, with no audience: it travels the same path as row events
-- (inbox, sequencer, log, readers) and is delivered to nobody; it rings the inbox doorbell
-- when writers do (notify on). Returns its inbox id.
CREATE OR REPLACE FUNCTION relay.heartbeat(source text DEFAULT '') RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $heartbeat$
DECLARE
    inbox_id bigint;
BEGIN
    INSERT INTO relay.inbox (table_schema, table_name, op, pk, audience)
    VALUES ('relay', 'heartbeat', 'HEARTBEAT', jsonb_build_object('source', source), '{}')
    RETURNING id INTO inbox_id;
    IF (SELECT s.notify FROM relay.settings AS s) THEN
        PERFORM pg_notify('relay_inbox', '');
    END IF;
    RETURN inbox_id;
END
$heartbeat$;

-- Changes settings in the one place they are kept. NULL leaves a setting as it is. The capture
-- triggers carry the notify setting as an argument (no query per written row): a change of it
-- re-attaches every tracked table's triggers, in this transaction.
CREATE OR REPLACE FUNCTION relay.configure(notify boolean DEFAULT NULL,
                                           max_row_bytes integer DEFAULT NULL)
RETURNS relay.settings
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $configure$
DECLARE
    before relay.settings;
    after  relay.settings;
BEGIN
    SELECT * INTO STRICT before FROM relay.settings;
    UPDATE relay.settings AS s
       SET notify = coalesce(configure.notify, s.notify),
           max_row_bytes = coalesce(configure.max_row_bytes, s.max_row_bytes)
    RETURNING s.* INTO STRICT after;
    IF after.notify IS DISTINCT FROM before.notify THEN
        PERFORM relay._attach(t.tbl) FROM relay.tracked AS t
          WHERE EXISTS (SELECT FROM pg_class AS c WHERE c.oid = t.tbl);
    END IF;
    RETURN after;
END
$configure$;

-- (Re)creates the capture trigger of a tracked table from its row in relay.tracked.
CREATE OR REPLACE FUNCTION relay._attach(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $attach$
DECLARE
    t        relay.tracked;
    names    name[];
BEGIN
    SELECT * INTO STRICT t FROM relay.tracked WHERE relay.tracked.tbl = _attach.tbl;
    IF t.column_nums IS NOT NULL THEN
        -- The whitelist is kept by attribute number: its columns under their names of now (a
        -- rename since relay.track is followed), written back where the relays read them.
        names := ARRAY(SELECT a.attname FROM pg_attribute AS a
                        WHERE a.attrelid = t.tbl AND a.attnum = ANY (t.column_nums)
                          AND NOT a.attisdropped
                        ORDER BY a.attnum);
        IF t.columns IS DISTINCT FROM names THEN
            UPDATE relay.tracked AS r SET columns = names WHERE r.tbl = t.tbl;
            t.columns := names;
        END IF;
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture ON %s', t.tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture_append ON %s', t.tbl);
    EXECUTE format(
        'CREATE TRIGGER relay_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION relay.capture(%L, %L, %L, %L, %L, %L, %L)',
        t.tbl,
        coalesce(t.owner_column::text, ''),
        coalesce(t.audience::oid::text, ''),
        coalesce(t.columns::text[]::text, ''),
        t.pk_columns::text[]::text,
        '',  -- unused since version 6
        coalesce(t.column_nums::text, ''),
        (SELECT CASE WHEN s.notify THEN 't' ELSE 'f' END FROM relay.settings AS s));
    -- Fires right after relay_capture for each row (triggers fire in name order).
    EXECUTE format(
        'CREATE TRIGGER relay_capture_append AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION relay.append_captured()', t.tbl);
END
$attach$;

-- Attaches change capture to a table. Give exactly one of owner_column (the column holding
-- the owning user's id) or audience (a function of the row returning the text[] of user ids
-- allowed to see it). columns is the whitelist of columns events carry (default: all).
CREATE OR REPLACE FUNCTION relay.track(tbl regclass,
                                       owner_column text DEFAULT NULL,
                                       columns text[] DEFAULT NULL,
                                       audience regproc DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $track$
DECLARE
    kind       "char";
    row_type   oid;
    pk_cols    name[];
    all_cols   name[];
    unknown    text;
    nums       int2[];
    fn         pg_proc;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'relay.track: tbl must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (owner_column IS NULL) = (audience IS NULL) THEN
        RAISE EXCEPTION 'relay.track(%): give exactly one of owner_column or audience', tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'owner_column names the column holding the owning user id; audience is a '
                         'function taking the row and returning text[] of user ids.';
    END IF;

    SELECT c.relkind, c.reltype INTO kind, row_type FROM pg_class AS c WHERE c.oid = tbl;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'relay.track(%): only tables can be tracked', tbl
            USING ERRCODE = 'wrong_object_type';
    END IF;

    SELECT array_agg(a.attname ORDER BY k.ord) INTO pk_cols
      FROM pg_index AS i
      CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = tbl AND i.indisprimary;
    IF pk_cols IS NULL THEN
        RAISE EXCEPTION 'relay.track(%): the table has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = format('Events name rows by their key: ALTER TABLE %s ADD PRIMARY KEY (...);', tbl);
    END IF;

    SELECT array_agg(a.attname ORDER BY a.attnum) INTO all_cols
      FROM pg_attribute AS a
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped;

    SELECT string_agg(quote_ident(c), ', ') INTO unknown
      FROM unnest(columns || owner_column) AS c
     WHERE c IS NOT NULL AND NOT c = ANY (all_cols);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'relay.track(%): unknown column(s) %', tbl, unknown
            USING ERRCODE = 'undefined_column',
                  HINT = format('The columns of %s are: %s.', tbl, array_to_string(all_cols, ', '));
    END IF;
    IF columns IS NOT NULL AND cardinality(columns) = 0 THEN
        RAISE EXCEPTION 'relay.track(%): columns is empty', tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass NULL to carry every column, or name at least one.';
    END IF;

    IF audience IS NOT NULL THEN
        SELECT * INTO fn FROM pg_proc WHERE oid = audience;
        IF fn.pronargs <> 1 OR fn.proargtypes[0] <> row_type OR fn.prorettype <> 'text[]'::regtype THEN
            RAISE EXCEPTION 'relay.track(%): audience function % must take a % row and return text[]',
                  tbl, audience, tbl
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('CREATE FUNCTION ... (r %s) RETURNS text[] ...', tbl);
        END IF;
    END IF;

    IF columns IS NOT NULL THEN  -- the whitelist by attribute number: it follows renames
        nums := ARRAY(SELECT a.attnum FROM pg_attribute AS a
                       WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attname = ANY (columns)
                       ORDER BY a.attnum);
    END IF;

    INSERT INTO relay.tracked AS t (tbl, owner_column, audience, columns, column_nums, pk_columns)
    VALUES (tbl, owner_column, audience, columns, nums, pk_cols)
    ON CONFLICT ON CONSTRAINT tracked_pkey DO UPDATE
       SET owner_column = excluded.owner_column, audience = excluded.audience,
           columns = excluded.columns, column_nums = excluded.column_nums,
           pk_columns = excluded.pk_columns, tracked_at = now();
    PERFORM relay._attach(tbl);
END
$track$;

-- Detaches change capture. Returns false (with a notice) when the table was not tracked.
CREATE OR REPLACE FUNCTION relay.untrack(tbl regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $untrack$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture_append ON %s', tbl);
    DELETE FROM relay.tracked AS t WHERE t.tbl = untrack.tbl;
    IF NOT FOUND THEN
        RAISE NOTICE 'relay.untrack(%): the table was not tracked', tbl;
        RETURN false;
    END IF;
    RETURN true;
END
$untrack$;

-- Grants a relay process's login role what it needs, and nothing more.
CREATE OR REPLACE FUNCTION relay.grant_relay(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $grant$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA relay TO %s', role);
    EXECUTE format('GRANT SELECT ON relay.log, relay.head, relay.settings, relay.tracked TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION relay.sequence_log(integer), '
                   'relay.sequence_batch(integer), '
                   'relay.prune(interval, integer), relay.heartbeat(text) TO %s', role);
END
$grant$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA relay FROM PUBLIC;
-- relay.capture runs with the writer's rights: every role may read the two settings it uses and
-- convert its own row with relay._pick, and nothing else of the schema.
GRANT USAGE ON SCHEMA relay TO PUBLIC;
GRANT SELECT (notify, max_row_bytes) ON relay.settings TO PUBLIC;
GRANT EXECUTE ON FUNCTION relay._pick(anyelement, text[]) TO PUBLIC;

-- Forget tables that were dropped since they were tracked, then re-attach the rest so an
-- upgrade's trigger code and argument layout apply to every tracked table.
DELETE FROM relay.tracked WHERE NOT EXISTS (SELECT FROM pg_class WHERE oid = tbl);
DO $reattach$ BEGIN PERFORM relay._attach(tbl) FROM relay.tracked; END $reattach$;

-- A role granted the relay's rights before version 8 may run relay.sequence_log too.
DO $regrant$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN
        SELECT a.grantee::regrole FROM pg_proc AS p, aclexplode(p.proacl) AS a
         WHERE p.oid = 'relay.sequence_batch(integer)'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee NOT IN (0, p.proowner)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION relay.sequence_log(integer) TO %s', grantee);
    END LOOP;
END
$regrant$;

UPDATE relay.settings SET schema_version = 9, upgraded_at = now() WHERE schema_version < 9;

COMMIT;
