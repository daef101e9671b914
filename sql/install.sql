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
--   * a row trigger on each tracked table appends to relay.inbox (unsequenced); it rings
--     NOTIFY relay_inbox (an empty payload: a doorbell, never the data) only with notify on,
--     off by default: the relay's sequencer polls the inbox instead;
--   * one sequencer at a time (relay.sequence_log, serialised on relay.head's row lock;
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
--   4 with a whitelist, the table's other columns when the trigger was attached (text[] literal),
--   5 with a whitelist, the whitelisted columns' attribute numbers (int2[] literal).
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
-- Capture never fails a write that would succeed untracked: a row to_jsonb refuses (json
-- holding \u0000 or a lone surrogate, a value over jsonb's 256 MB limit, a cast that raises) is
-- captured all the same, flagged truncated: with a whitelist the whitelisted columns are tried
-- alone, else (or if they fail too) the event carries the key only, and if even the key cannot
-- be converted its values are null. Errors of the audience function, the application's own
-- code, fail the write as any trigger's would.
-- An UPDATE also carries what the relay needs to tell, per subscriber, a row that stays in view
-- from one that leaves it (a move-out) or enters it (an entry): the old values of the carried
-- columns it changed (old_values; NULL when the values are not carried: truncated) and the old
-- row's audience when it differs from the new one (old_audience; else NULL). An UPDATE that
-- changes no carried column is an event only when it changes the audience.
-- It runs inside every writing transaction, where each distinct expression below is prepared
-- anew and each query starts an executor: so the common paths run one query (the settings; the
-- INSERT is relay_capture_append's) and few expressions. An UPDATE that changes neither a carried
-- column nor the audience returns early. The exception block around to_jsonb costs no
-- transaction id.
CREATE OR REPLACE FUNCTION relay.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $capture$
DECLARE
    whitelist     text[]  := CASE WHEN TG_ARGV[2] = '' THEN NULL ELSE TG_ARGV[2]::text[] END;
    new_full      jsonb;  -- NULL for a DELETE
    old_full      jsonb;  -- NULL for an INSERT
    unconvertible boolean := false;  -- to_jsonb refused the row
    key_only      boolean := false;  -- and the event carries the key alone
    key_cols      text[];
    owner_cols    text[];
    left_out      text[];
    pk_columns    text[];
    new_row       jsonb;
    old_row       jsonb;
    old_values    jsonb;  -- an UPDATE's old values of the changed carried columns
    key_source    jsonb;
    row_key       jsonb;
    old_row_key   jsonb;
    changed_cols  text[];
    who           text[];
    old_who       text[];  -- an UPDATE's old audience, when it differs from the new one
    ring          boolean;
    max_row_bytes integer;
    cut           boolean;
    handed        text;
    c             text;
BEGIN
    BEGIN
        new_full := to_jsonb(NEW);
        old_full := to_jsonb(OLD);
    EXCEPTION WHEN OTHERS THEN
        IF SQLSTATE LIKE '40%' THEN
            RAISE;  -- serialization failure, deadlock: the transaction must see them
        END IF;
        unconvertible := true;
    END;
    IF unconvertible THEN
        -- Slow path (dynamic SQL, only for such rows): the whitelisted columns with the key and
        -- owner columns, or those alone.
        key_cols := TG_ARGV[3]::text[] || CASE WHEN TG_ARGV[0] <> '' THEN ARRAY[TG_ARGV[0]] END;
        IF whitelist IS NOT NULL THEN
            IF TG_NARGS > 5 THEN  -- the whitelisted columns as they are named now
                whitelist := ARRAY(SELECT a.attname::text FROM pg_attribute AS a
                                    WHERE a.attrelid = TG_RELID AND NOT a.attisdropped
                                      AND a.attnum = ANY (TG_ARGV[5]::int2[]));
            END IF;
            new_full := relay._pick(NEW, whitelist || key_cols);
            old_full := relay._pick(OLD, whitelist || key_cols);
        END IF;
        IF whitelist IS NULL OR (TG_OP <> 'DELETE' AND new_full IS NULL)
                             OR (TG_OP <> 'INSERT' AND old_full IS NULL) THEN
            key_only := true;
            -- A key that cannot be converted either: its values are null; the owner column
            -- is still tried alone, for the audience.
            owner_cols := CASE WHEN TG_ARGV[0] <> '' THEN ARRAY[TG_ARGV[0]] ELSE '{}' END;
            IF TG_OP <> 'DELETE' THEN
                new_full := coalesce(relay._pick(NEW, key_cols), relay._pick(NEW, owner_cols), '{}');
            END IF;
            IF TG_OP <> 'INSERT' THEN
                old_full := coalesce(relay._pick(OLD, key_cols), relay._pick(OLD, owner_cols), '{}');
            END IF;
        END IF;
    END IF;

    IF whitelist IS NULL THEN
        new_row := new_full;
        old_row := old_full;
    ELSE
        -- The whitelisted values: the row without the columns the whitelist left out when the
        -- trigger was attached, in one operation. Exact unless a column has appeared since
        -- (added, renamed), which the check sees; then the whitelist is applied by attribute
        -- number, under the columns' names of now (a renamed column stays carried).
        left_out := CASE WHEN TG_NARGS > 4 AND TG_ARGV[4] <> '' THEN TG_ARGV[4]::text[] END;
        new_row := new_full - left_out;
        old_row := old_full - left_out;
        IF left_out IS NULL OR coalesce(new_row, old_row) - whitelist <> '{}' THEN
            IF TG_NARGS > 5 THEN
                SELECT coalesce(array_agg(a.attname::text), '{}'),
                       coalesce(jsonb_object_agg(a.attname, new_full -> a.attname::text)
                                FILTER (WHERE new_full ? a.attname), '{}'),
                       coalesce(jsonb_object_agg(a.attname, old_full -> a.attname::text)
                                FILTER (WHERE old_full ? a.attname), '{}')
                  INTO whitelist, new_row, old_row
                  FROM pg_attribute AS a
                 WHERE a.attrelid = TG_RELID AND NOT a.attisdropped
                   AND a.attnum = ANY (TG_ARGV[5]::int2[]);
            ELSE  -- a trigger attached by version 1 or 2: by name
                SELECT coalesce(jsonb_object_agg(w.c, new_full -> w.c) FILTER (WHERE new_full ? w.c), '{}'),
                       coalesce(jsonb_object_agg(w.c, old_full -> w.c) FILTER (WHERE old_full ? w.c), '{}')
                  INTO new_row, old_row
                  FROM (SELECT DISTINCT unnest(whitelist) AS c) AS w;
            END IF;
        END IF;
    END IF;

    IF TG_OP = 'UPDATE' THEN
        -- An owner column's old value, when it changed: the old audience.
        IF TG_ARGV[0] <> '' AND new_full ->> TG_ARGV[0] IS DISTINCT FROM old_full ->> TG_ARGV[0] THEN
            old_who := CASE WHEN old_full ->> TG_ARGV[0] IS NULL THEN '{}'::text[]
                            ELSE ARRAY[old_full ->> TG_ARGV[0]] END;
        END IF;
        IF key_only THEN
            NULL;  -- which columns changed, and from what, is unknown
        ELSIF new_row = old_row THEN
            -- Nothing the events carry has changed: an event only if the audience has (an owner
            -- column the whitelist leaves out, or what the audience function reads).
            IF old_who IS NULL AND (TG_ARGV[0] <> '' OR NEW *= OLD) THEN
                handed := set_config('relay.captured', '', true);  -- no event: nothing to append
                RETURN NULL;
            END IF;
            changed_cols := '{}';
            old_values := '{}';
        ELSIF whitelist IS NULL THEN
            SELECT coalesce(array_agg(e.key ORDER BY e.key), '{}'),
                   coalesce(jsonb_object_agg(e.key, old_row -> e.key), '{}')
              INTO changed_cols, old_values
              FROM jsonb_each(new_row) AS e
             WHERE e.value IS DISTINCT FROM old_row -> e.key;
        ELSE
            changed_cols := '{}';
            old_values := '{}';
            FOREACH c IN ARRAY whitelist LOOP
                IF new_row -> c IS DISTINCT FROM old_row -> c THEN
                    changed_cols := changed_cols || c;
                    old_values := old_values || jsonb_build_object(c, old_row -> c);
                END IF;
            END LOOP;
            IF cardinality(changed_cols) > 1 THEN  -- in name order, each once
                changed_cols := ARRAY(SELECT DISTINCT u.c FROM unnest(changed_cols) AS u(c)
                                       ORDER BY u.c);
            END IF;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        new_row := old_row;  -- a DELETE carries the old whitelisted values
    END IF;

    -- Who may see it: the new row's audience, or the old row's for a DELETE; an UPDATE also
    -- keeps the old row's, when it differs.
    key_source := coalesce(new_full, old_full);
    IF TG_ARGV[0] <> '' THEN
        who := CASE WHEN key_source ->> TG_ARGV[0] IS NULL THEN '{}'::text[]
                    ELSE ARRAY[key_source ->> TG_ARGV[0]] END;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Both answers in one statement: each EXECUTE is parsed and planned anew.
        EXECUTE format('SELECT %1$s($1), %1$s($2)', TG_ARGV[1]::oid::regproc)
           INTO who, old_who USING NEW, OLD;
        IF coalesce(old_who, '{}') = coalesce(who, '{}') THEN
            old_who := NULL;
            IF old_values = '{}' THEN
                handed := set_config('relay.captured', '', true);
                RETURN NULL;  -- neither a carried column nor the audience has changed
            END IF;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT %s($1)', TG_ARGV[1]::oid::regproc) INTO who USING OLD;
    ELSE
        EXECUTE format('SELECT %s($1)', TG_ARGV[1]::oid::regproc) INTO who USING NEW;
    END IF;

    -- The row's key, and its key before an UPDATE or DELETE: plain expressions, no query.
    pk_columns := TG_ARGV[3]::text[];
    IF cardinality(pk_columns) = 1 THEN
        row_key := jsonb_build_object(pk_columns[1], key_source -> pk_columns[1]);
        IF TG_OP <> 'INSERT' THEN
            old_row_key := jsonb_build_object(pk_columns[1], old_full -> pk_columns[1]);
        END IF;
    ELSE
        row_key := '{}';
        FOREACH c IN ARRAY pk_columns LOOP
            row_key := row_key || jsonb_build_object(c, key_source -> c);
        END LOOP;
        IF TG_OP <> 'INSERT' THEN
            old_row_key := '{}';
            FOREACH c IN ARRAY pk_columns LOOP
                old_row_key := old_row_key || jsonb_build_object(c, old_full -> c);
            END LOOP;
        END IF;
    END IF;

    -- Only the two settings used. A row over max_row_bytes (its carried values, or an UPDATE's
    -- old values of the changed ones), or one to_jsonb refused, travels as its key only,
    -- flagged truncated; its audiences travel all the same.
    SELECT s.notify, s.max_row_bytes INTO ring, max_row_bytes FROM relay.settings AS s;
    cut := key_only OR coalesce(greatest(pg_column_size(new_row), pg_column_size(old_values))
                                > max_row_bytes, false);
    handed := set_config('relay.captured',
        ROW(row_key, old_row_key, CASE WHEN NOT cut THEN new_row END, changed_cols,
            coalesce(who, '{}'), cut, CASE WHEN NOT cut THEN old_values END, old_who
           )::relay.handover::text,
        true);

    IF ring THEN
        -- Constant payload: Postgres folds these into one per transaction, and no row can
        -- ever fail to commit because of NOTIFY's 8000-byte limit.
        PERFORM pg_notify('relay_inbox', '');
    END IF;
    RETURN NULL;
END
$capture$;

-- The privileged step of capture, the trigger relay_capture_append: appends the event
-- relay_capture handed over for this row (see relay.capture) to relay.inbox, as the schema
-- owner, and clears the hand-over (so with relay_capture disabled, nothing is appended). It
-- runs no code but its own; the table and op come from its own TG_*.
CREATE OR REPLACE FUNCTION relay.append_captured() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $append$
DECLARE
    handed text := current_setting('relay.captured', true);
    event  relay.handover;
BEGIN
    IF handed IS NULL OR handed = '' THEN
        RETURN NULL;  -- relay_capture found nothing to carry
    END IF;
    event := handed::relay.handover;
    handed := set_config('relay.captured', '', true);
    INSERT INTO relay.inbox (table_schema, table_name, op, pk, old_key, row_data, changed,
                             audience, truncated, old_values, old_audience)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, event.pk, event.old_key, event.row_data,
            event.changed, event.audience, event.truncated, event.old_values,
            event.old_audience);
    RETURN NULL;
END
$append$;

-- Moves committed inbox rows into the log and returns them, in position order, in the shape the
-- relay reads the log in (relay/pg/queries.py LOG_COLUMNS: the JSON columns as text): the
-- leader's relay delivers them without reading them back.
-- Positions are numbered from relay.head under its row lock, so two sequencers can never
-- interleave; what one batch cannot see yet (uncommitted) a later batch moves, higher up.
-- A batch that moved rows rings relay_log once, with the new head as the payload, so readers
-- learn it once per batch and skip a read for a head they have already read.
CREATE OR REPLACE FUNCTION relay.sequence_log(max_rows integer DEFAULT 1000)
RETURNS TABLE (pos bigint, table_schema name, table_name name, op text, pk text, row_data text,
               old_key text, changed text[], audience text[], committed_at timestamptz,
               truncated boolean, old_values text, old_audience text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $sequence$
DECLARE
    head_pos  bigint;
    moved     bigint;
    commit_ts boolean := current_setting('track_commit_timestamp') = 'on';
BEGIN
    -- The relay polls the inbox (every millisecond or two under load): a look at an empty inbox
    -- must stay cheap: no row lock, no transaction id.
    IF NOT EXISTS (SELECT FROM relay.inbox) THEN
        RETURN;
    END IF;
    SELECT h.pos INTO head_pos FROM relay.head AS h FOR UPDATE;

    RETURN QUERY
    WITH batch AS (
        SELECT i.id FROM relay.inbox AS i ORDER BY i.id LIMIT max_rows
    ), taken AS (
        DELETE FROM relay.inbox AS i USING batch WHERE i.id = batch.id
        RETURNING i.*, i.xmin AS writer_xid
    ), logged AS (
        INSERT INTO relay.log AS l (pos, table_schema, table_name, op, pk, old_key, row_data,
                                    changed, audience, truncated, old_values, old_audience,
                                    captured_at, committed_at)
        SELECT head_pos + row_number() OVER (ORDER BY t.id),
               t.table_schema, t.table_name, t.op, t.pk, t.old_key, t.row_data, t.changed,
               t.audience, t.truncated, t.old_values, t.old_audience, t.captured_at,
               -- Exact with track_commit_timestamp = on; else the capture time, a lower bound.
               coalesce(CASE WHEN commit_ts THEN pg_xact_commit_timestamp(t.writer_xid) END,
                        t.captured_at)
          FROM taken AS t
        RETURNING l.pos, l.table_schema, l.table_name, l.op, l.pk::text, l.row_data::text,
                  l.old_key::text, l.changed, l.audience, l.committed_at, l.truncated,
                  l.old_values::text, l.old_audience
    )
    SELECT * FROM logged ORDER BY 1;
    GET DIAGNOSTICS moved = ROW_COUNT;

    IF moved > 0 THEN
        UPDATE relay.head SET pos = head_pos + moved;
        PERFORM pg_notify('relay_log', (head_pos + moved)::text);
    END IF;
END
$sequence$;

-- relay.sequence_log counting the rows it moved: what relays before schema version 6 call (a
-- rolling upgrade runs both), and a DBA may call by hand.
CREATE OR REPLACE FUNCTION relay.sequence_batch(max_rows integer DEFAULT 1000) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $batch$
    SELECT count(*) FROM relay.sequence_log(max_rows);
$batch$;

-- Deletes log rows sequenced before now() - older_than, at most max_rows per call, oldest
-- first. Returns how many it deleted; call again while it returns max_rows.
CREATE OR REPLACE FUNCTION relay.prune(older_than interval, max_rows integer DEFAULT 100000)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $prune$
DECLARE
    cutoff  bigint;
    deleted bigint;
BEGIN
    SELECT max(pos) INTO cutoff FROM (
        SELECT pos FROM relay.log
         WHERE sequenced_at < now() - older_than
         ORDER BY pos LIMIT max_rows) AS oldest;
    IF cutoff IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM relay.log WHERE pos <= cutoff;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    UPDATE relay.head SET pruned_through = greatest(pruned_through, cutoff);
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

-- Changes settings in the one place triggers read them. NULL leaves a setting as it is.
CREATE OR REPLACE FUNCTION relay.configure(notify boolean DEFAULT NULL,
                                           max_row_bytes integer DEFAULT NULL)
RETURNS relay.settings
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $configure$
    UPDATE relay.settings AS s
       SET notify = coalesce(configure.notify, s.notify),
           max_row_bytes = coalesce(configure.max_row_bytes, s.max_row_bytes)
    RETURNING s.*;
$configure$;

-- (Re)creates the capture trigger of a tracked table from its row in relay.tracked.
CREATE OR REPLACE FUNCTION relay._attach(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $attach$
DECLARE
    t        relay.tracked;
    names    name[];
    left_out name[];
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
    -- With a whitelist, the columns it leaves out, as they are now: relay.capture drops them
    -- from the row in one operation (and notices a column that appears later).
    SELECT array_agg(a.attname ORDER BY a.attnum) INTO left_out
      FROM pg_attribute AS a
     WHERE a.attrelid = t.tbl AND a.attnum > 0 AND NOT a.attisdropped
       AND NOT a.attname = ANY (t.columns);
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture ON %s', t.tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture_append ON %s', t.tbl);
    EXECUTE format(
        'CREATE TRIGGER relay_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION relay.capture(%L, %L, %L, %L, %L, %L)',
        t.tbl,
        coalesce(t.owner_column::text, ''),
        coalesce(t.audience::oid::text, ''),
        coalesce(t.columns::text[]::text, ''),
        t.pk_columns::text[]::text,
        CASE WHEN t.columns IS NULL THEN '' ELSE coalesce(left_out, '{}')::text END,
        coalesce(t.column_nums::text, ''));
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
                   'relay.sequence_batch(integer), relay.prune(interval, integer), '
                   'relay.heartbeat(text) TO %s', role);
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

-- A role granted the relay's rights before version 6 may run relay.sequence_log too.
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

UPDATE relay.settings SET schema_version = 6, upgraded_at = now() WHERE schema_version < 6;

COMMIT;
