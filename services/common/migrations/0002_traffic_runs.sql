-- 0002: load-generator runs, for the synchronous vs asynchronous comparison of `qactl metrics`.
--
-- traffic_runs     one row per `qactl traffic` run: mode 'async' (POST /query then poll
--                  /status, the pipeline) or 'sync' (--sync-baseline: the LLM called directly,
--                  one question after another, as the original synchronous design did); the
--                  question set (digest, so runs on the same questions can be paired), the
--                  offered rate and the LLM backend used; wall time once finished.
-- traffic_samples  one row per question asked in a run: perceived latency (until the HTTP
--                  answer: the 202 for the pipeline, the whole call for the sync design) and
--                  real latency (until the answer is there: the terminal state), the outcome.

CREATE TABLE traffic_runs (
    id                bigserial PRIMARY KEY,
    mode              text NOT NULL CHECK (mode IN ('async', 'sync')),
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    -- Seconds from the first request to the last outcome; throughput = outcomes / wall_seconds.
    wall_seconds      double precision CHECK (wall_seconds >= 0),
    questions_source  text,
    questions_digest  text NOT NULL,
    requested_count   integer NOT NULL CHECK (requested_count >= 0),
    -- Offered load in requests per second (NULL: as fast as possible, or one after another).
    rate              double precision,
    poll_interval_ms  double precision,
    backend           text,
    model             text,
    -- What else shaped the run: consumer replicas and concurrency, delay scale, injected faults.
    settings          jsonb NOT NULL DEFAULT '{}'::jsonb,
    note              text
);
CREATE INDEX traffic_runs_mode ON traffic_runs (mode, started_at DESC);
CREATE INDEX traffic_runs_digest ON traffic_runs (questions_digest, mode, started_at DESC);

CREATE TABLE traffic_samples (
    run_id        bigint NOT NULL REFERENCES traffic_runs (id) ON DELETE CASCADE,
    seq           integer NOT NULL,
    question_id   text,
    question      text NOT NULL,
    sent_at       timestamptz NOT NULL,
    -- 202 / 200 from the storage API; 200 or the LLM's error status for the sync design;
    -- NULL when no HTTP answer came back (connection refused, timeout).
    http_status   integer,
    perceived_ms  double precision CHECK (perceived_ms >= 0),
    -- NULL when the question did not reach a terminal state within the run's timeout.
    real_ms       double precision CHECK (real_ms >= 0),
    -- validated, low_quality, failed (pipeline terminal states), answered (sync design: the LLM
    -- answered), error (sync: the call failed), rejected (4xx/503 at submission), timeout.
    outcome       text NOT NULL CHECK (outcome IN
                      ('validated', 'low_quality', 'failed', 'answered', 'error', 'rejected', 'timeout')),
    -- An answer reached the asker: validated / low_quality, or answered for the sync design.
    success       boolean NOT NULL,
    -- Served at once from the store (200 to POST /query) rather than through the pipeline.
    from_store    boolean NOT NULL DEFAULT false,
    score         double precision,
    detail        text,
    PRIMARY KEY (run_id, seq)
);

-- One line per run: what `qactl metrics` compares.
CREATE VIEW traffic_summary AS
SELECT r.id                                                                  AS run_id,
       r.mode,
       r.started_at,
       r.questions_digest,
       r.questions_source,
       r.backend,
       r.rate,
       count(s.seq)                                                          AS samples,
       count(*) FILTER (WHERE s.success)                                     AS succeeded,
       round(100.0 * count(*) FILTER (WHERE s.success) / nullif(count(s.seq), 0), 2) AS success_percent,
       count(*) FILTER (WHERE s.from_store)                                  AS from_store,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY s.perceived_ms)          AS perceived_p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY s.perceived_ms)          AS perceived_p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY s.perceived_ms)          AS perceived_p99_ms,
       percentile_cont(0.50) WITHIN GROUP (ORDER BY s.real_ms)               AS real_p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY s.real_ms)               AS real_p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY s.real_ms)               AS real_p99_ms,
       r.wall_seconds,
       count(*) FILTER (WHERE s.real_ms IS NOT NULL) / nullif(r.wall_seconds, 0) AS throughput_per_s
FROM traffic_runs r
LEFT JOIN traffic_samples s ON s.run_id = r.id
WHERE r.finished_at IS NOT NULL
GROUP BY r.id;
