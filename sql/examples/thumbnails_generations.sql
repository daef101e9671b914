-- The product scenario: a gallery of thumbnails whose share links count clicks, and AI
-- generations that finish in the background. Install sql/install.sql first.
--
--   psql -v ON_ERROR_STOP=1 -f sql/examples/thumbnails_generations.sql "$DSN"
--
-- Idempotent, like the install script.

BEGIN;
SET LOCAL client_min_messages = warning;

CREATE TABLE IF NOT EXISTS public.thumbnails (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id           text        NOT NULL,
    project_id        text        NOT NULL,
    title             text        NOT NULL DEFAULT '',
    share_click_count bigint      NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS thumbnails_user_id ON public.thumbnails (user_id);

-- What a share-link click endpoint calls: one atomic increment, no read-modify-write race.
-- Returns the new count, or NULL when no such thumbnail exists.
CREATE OR REPLACE FUNCTION public.increment_thumbnail_share_click_count(thumbnail_id bigint)
RETURNS bigint
LANGUAGE sql AS $$
    UPDATE public.thumbnails
       SET share_click_count = share_click_count + 1
     WHERE id = thumbnail_id
    RETURNING share_click_count;
$$;

CREATE TABLE IF NOT EXISTS public.generations (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text        NOT NULL,
    project_id text        NOT NULL,
    shot_id    text,
    status     text        NOT NULL DEFAULT 'queued'
               CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    url        text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS generations_user_id ON public.generations (user_id);

-- Owners see their own rows. Thumbnails events carry only what a dashboard shows.
DO $track$
BEGIN
    PERFORM relay.track('public.thumbnails', owner_column => 'user_id',
                        columns => ARRAY['id', 'user_id', 'project_id', 'title', 'share_click_count']);
    PERFORM relay.track('public.generations', owner_column => 'user_id');
END
$track$;

COMMIT;
