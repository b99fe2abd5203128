-- 0003: responses.normalized_question is indexed by hash, not by btree. A btree entry must fit in
-- 8191 bytes; a question the storage API accepts (2,000 characters) can take more once NFKC
-- has expanded it, and its answer could then never be stored ("index row requires 16440 bytes").
-- The column is only ever compared for equality, which is what a hash index serves.

DROP INDEX responses_normalized_question;
CREATE INDEX responses_normalized_question ON responses USING hash (normalized_question);
