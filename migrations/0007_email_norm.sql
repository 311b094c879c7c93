-- One normalised form of an email for every lookup and for login throttling: trimmed,
-- ASCII letters lower-cased, anything else kept as is (the gateway computes the same in
-- Rust). PostgreSQL's lower() follows the locale and matched other spellings (`admİn@`
-- found `admin@`), which let a locked email be tried again under another name.
ALTER TABLE auth.login ADD COLUMN email_norm text NOT NULL
    GENERATED ALWAYS AS (translate(btrim(email), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                                                 'abcdefghijklmnopqrstuvwxyz')) STORED;
CREATE UNIQUE INDEX login_email_norm_unique ON auth.login (email_norm);
