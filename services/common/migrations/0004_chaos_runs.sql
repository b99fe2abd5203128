-- 0004: `qactl chaos` experiments, for `qactl metrics` and the dashboard.
--
-- chaos_runs  one row per experiment run: the fault, when it was applied and restored, how many
--             questions were in flight at the fault (accepted, not yet terminal), and what the
--             exactly-once-terminal check found for every question the API accepted. The row
--             is written when the experiment starts (state 'running', its phase updated as it
--             goes: the dashboard shows it) and completed when it ends ('passed', 'violated',
--             or 'error' when the experiment itself could not be carried out).

CREATE TABLE chaos_runs (
    id                  bigserial PRIMARY KEY,
    experiment          text NOT NULL,
    description         text NOT NULL DEFAULT '',
    state               text NOT NULL DEFAULT 'running'
                        CHECK (state IN ('running', 'passed', 'violated', 'error')),
    -- What the experiment is doing now: traffic, fault, restore, recover, settle, check, done.
    phase               text NOT NULL DEFAULT 'traffic',
    started_at          timestamptz NOT NULL DEFAULT now(),
    fault_at            timestamptz,
    restored_at         timestamptz,
    finished_at         timestamptz,
    questions           integer NOT NULL DEFAULT 0,
    rate                double precision,
    -- Accepted by the API (202) but not terminal in PostgreSQL when the fault was applied.
    in_flight_at_fault  integer,
    accepted            integer,
    terminal_once       integer,
    stuck               integer,
    duplicated          integer,
    -- Accepted, yet neither in `questions` nor with any terminal record.
    lost                integer,
    -- Refused by the API (not 202) between the fault and its restoration.
    refused_during_fault integer,
    refused_total       integer,
    -- From the fault to every component healthy again, and who brought it back.
    recover_seconds     double precision,
    recovered_by        text,
    unhealthy           text[] NOT NULL DEFAULT '{}',
    lagging_groups      text[] NOT NULL DEFAULT '{}',
    leftover_processes  text[] NOT NULL DEFAULT '{}',
    violations          text[] NOT NULL DEFAULT '{}',
    detail              jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX chaos_runs_started ON chaos_runs (started_at DESC);
CREATE INDEX chaos_runs_running ON chaos_runs (state) WHERE state = 'running';
