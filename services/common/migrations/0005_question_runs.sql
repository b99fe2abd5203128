-- 0005: a question is its text and its reference answer; each run of it has its own question id,
-- and each question id ends once.
--
-- question_key  services.common.schemas.question_key: the normalized question and its reference
--               answer, hashed. The first run of a question has the key as its question id; a run
--               started after the previous one ended low_quality or failed has '<key>-r<n>'. Both
--               columns are derived from question_id here, so every writer (the API, the persister,
--               the import) gets them right without knowing of them.
-- run           1 for the first run, n for '<key>-r<n>'.
--
-- The storage API serves only validated answers as hits (responses by question_key); asking again
-- a question whose last run ended low_quality or failed claims the next run. A question id is never
-- re-opened: once terminal_at is set, neither it nor the state changes (enforced below), so every
-- question id has exactly one terminal record across responses and failed_questions.

ALTER TABLE questions
    ADD COLUMN question_key text GENERATED ALWAYS AS (regexp_replace(question_id, '-r[0-9]+$', '')) STORED,
    ADD COLUMN run integer GENERATED ALWAYS AS (
        coalesce(substring(question_id FROM '-r([0-9]+)$')::integer, 1)) STORED;
-- The API's lookup of a question's latest run.
CREATE INDEX questions_key_run ON questions (question_key, run DESC);

-- An imported answer has a responses row and no questions row: its run counts too, so a new run
-- never takes its id.
ALTER TABLE responses
    ADD COLUMN question_key text GENERATED ALWAYS AS (regexp_replace(question_id, '-r[0-9]+$', '')) STORED,
    ADD COLUMN run integer GENERATED ALWAYS AS (
        coalesce(substring(question_id FROM '-r([0-9]+)$')::integer, 1)) STORED;
-- The API's lookup of a question's validated answer (the only kind served as a hit) and last run.
CREATE INDEX responses_question_key ON responses (question_key, completed_at DESC);

COMMENT ON TABLE failed_questions IS
    'A terminal failure with its reason: one per question id (a question asked again after a failure is a new run with its own id; rows from before migration 0005 may repeat an id).';

-- terminal_at is the write-once guard of the persister; this makes it a rule of the table.
CREATE FUNCTION questions_terminal_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.terminal_at IS NOT NULL
       AND (NEW.terminal_at IS DISTINCT FROM OLD.terminal_at OR NEW.state IS DISTINCT FROM OLD.state) THEN
        RAISE EXCEPTION 'question % ended % at %: a terminal state is written once', OLD.question_id, OLD.state, OLD.terminal_at
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER questions_terminal_once BEFORE UPDATE ON questions
    FOR EACH ROW EXECUTE FUNCTION questions_terminal_once();
