-- 0001: the pipeline's store.
--
-- questions          the ledger of accepted questions: the storage API claims a row per
--                    question id (identical questions in flight coalesce on it); the persister
--                    sets the terminal state once (terminal_at is the write-once guard).
-- responses          one answer per question: validated or low_quality, from the pipeline or
--                    imported from an earlier run (source = 'import').
-- failed_questions   every terminal failure with its reason; a question re-submitted after a
--                    failure may fail again, hence a row per failure, not per question.
-- score_history      the BERTScore F1 of every attempt (0 = first answer, n = n-th regeneration).
-- processing_metrics time spent per stage and attempt; a stage can repeat within one attempt
--                    (generating again after an overload retry), hence no uniqueness.
-- Views answer `qactl metrics`: regeneration_analysis, error_distribution, latency_by_stage.

CREATE TABLE questions (
    question_id      text PRIMARY KEY,
    question         text NOT NULL,
    reference_answer text,
    -- A value of services.common.schemas.Stage.
    state            text NOT NULL DEFAULT 'queued' CHECK (state IN (
                         'queued', 'generating', 'retrying-overload', 'retrying-quota', 'scoring',
                         'regenerating', 'validated', 'low_quality', 'failed')),
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Set when Kafka acknowledged the question; NULL for long means the produce was lost.
    produced_at      timestamptz,
    terminal_at      timestamptz,
    CONSTRAINT terminal_state_has_time CHECK (
        (state IN ('validated', 'low_quality', 'failed')) = (terminal_at IS NOT NULL))
);
-- The API's sweep of claims never confirmed by Kafka.
CREATE INDEX questions_unconfirmed ON questions (updated_at) WHERE produced_at IS NULL AND terminal_at IS NULL;
CREATE INDEX questions_open_state ON questions (state) WHERE terminal_at IS NULL;

CREATE TABLE responses (
    question_id         text PRIMARY KEY,
    question            text NOT NULL,
    -- Close to services.common.schemas.normalize_question (NFKC, lower case, single spaces),
    -- computed here so that every writer, the import included, gets it for free.
    normalized_question text GENERATED ALWAYS AS (
                            btrim(regexp_replace(lower(normalize(question, NFKC)), '\s+', ' ', 'g'))) STORED,
    reference_answer    text,
    answer              text NOT NULL,
    score               double precision,
    status              text NOT NULL CHECK (status IN ('validated', 'low_quality')),
    threshold           double precision,
    -- Regenerations used (0 = the first answer was kept).
    attempt             integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    retries_overload    integer NOT NULL DEFAULT 0,
    retries_quota       integer NOT NULL DEFAULT 0,
    model               text,
    backend             text,
    llm_latency_ms      double precision,
    submitted_at        timestamptz,
    completed_at        timestamptz NOT NULL DEFAULT now(),
    hops                jsonb NOT NULL DEFAULT '[]'::jsonb,
    source              text NOT NULL DEFAULT 'pipeline' CHECK (source IN ('pipeline', 'import'))
);
CREATE INDEX responses_completed_at ON responses (completed_at);
CREATE INDEX responses_status ON responses (status, attempt);
CREATE INDEX responses_normalized_question ON responses (normalized_question);

CREATE TABLE failed_questions (
    id               bigserial PRIMARY KEY,
    question_id      text NOT NULL,
    question         text NOT NULL DEFAULT '',
    reason           text NOT NULL,
    -- A value of services.common.schemas.ErrorKind.
    error_kind       text NOT NULL,
    status_code      integer,
    error_message    text,
    source_topic     text,
    attempt          integer NOT NULL DEFAULT 0,
    retries_overload integer NOT NULL DEFAULT 0,
    retries_quota    integer NOT NULL DEFAULT 0,
    -- A poison message's bytes (base64), for inspection.
    raw              text,
    -- The last message the question travelled in, when there was a decodable one.
    last_message     jsonb,
    hops             jsonb NOT NULL DEFAULT '[]'::jsonb,
    submitted_at     timestamptz,
    failed_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX failed_questions_question ON failed_questions (question_id, failed_at DESC);
CREATE INDEX failed_questions_kind ON failed_questions (error_kind, status_code);

CREATE TABLE score_history (
    question_id text NOT NULL,
    attempt     integer NOT NULL CHECK (attempt >= 0),
    score       double precision NOT NULL,
    answer      text,
    scored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (question_id, attempt)
);

CREATE TABLE processing_metrics (
    id          bigserial PRIMARY KEY,
    question_id text NOT NULL,
    -- A Stage value, or 'total' for submission to terminal state.
    stage       text NOT NULL,
    attempt     integer NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    duration_ms double precision NOT NULL CHECK (duration_ms >= 0)
);
CREATE INDEX processing_metrics_stage ON processing_metrics (stage, started_at);
CREATE INDEX processing_metrics_question ON processing_metrics (question_id);

-- How answers fared per number of regenerations: does regenerating raise the score?
CREATE VIEW regeneration_analysis AS
SELECT r.source,
       r.attempt                                                  AS regenerations,
       count(*)                                                   AS questions,
       count(*) FILTER (WHERE r.status = 'validated')             AS validated,
       count(*) FILTER (WHERE r.status = 'low_quality')           AS low_quality,
       round(100.0 * count(*) FILTER (WHERE r.status = 'validated') / count(*), 2) AS validated_percent,
       avg(first.score)                                           AS avg_first_score,
       avg(r.score)                                               AS avg_final_score,
       avg(r.score - first.score)                                 AS avg_score_gain
FROM responses r
LEFT JOIN score_history first ON first.question_id = r.question_id AND first.attempt = 0
GROUP BY r.source, r.attempt;

-- Errors by kind and status code: those the retries recovered from (found in the hops of
-- answered questions) and those that ended the question (failed_questions).
CREATE VIEW error_distribution AS
WITH occurrences AS (
    SELECT 'recovered'::text                      AS outcome,
           hop -> 'error' ->> 'kind'              AS error_kind,
           (hop -> 'error' ->> 'status_code')::int AS status_code,
           r.question_id
    FROM responses r
    CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(r.hops) WHEN 'array' THEN r.hops ELSE '[]'::jsonb END) AS hop
    WHERE jsonb_typeof(hop -> 'error') = 'object'
    UNION ALL
    SELECT 'failed', f.error_kind, f.status_code, f.question_id
    FROM failed_questions f
)
SELECT outcome,
       error_kind,
       status_code,
       count(*)                                                  AS occurrences,
       count(DISTINCT question_id)                               AS questions,
       round(100.0 * count(*) / sum(count(*)) OVER (), 2)        AS percent_of_errors
FROM occurrences
GROUP BY outcome, error_kind, status_code;

-- Time per stage: p50 / p95 / p99 in milliseconds.
CREATE VIEW latency_by_stage AS
SELECT stage,
       count(*)                                                         AS samples,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_ms)        AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)        AS p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)        AS p99_ms,
       avg(duration_ms)                                                 AS avg_ms,
       max(duration_ms)                                                 AS max_ms
FROM processing_metrics
GROUP BY stage;
