-- wxauth's schema for MySQL >= 8.0 and MariaDB >= 10.6, applied by version, in SQL both accept.
--
-- Each section starts with a `-- version: N` line; store/mysql/open.rs applies every section
-- above the version in `meta` (key `schema_version`), under `GET_LOCK('wxauth_schema')` so that
-- instances starting together apply each once. MySQL commits DDL statement by statement, so a
-- section is written to be applied again if it was interrupted (`IF NOT EXISTS`). Versions follow
-- schema.sql's numbers: a MySQL database starts at the version whose tables it first creates, and
-- a new SQLite version gets its MySQL section here in the same change. Released sections are
-- never edited. Text compares byte for byte (`utf8mb4_bin`), as SQLite's does.

-- version: 5

-- Small facts: the generated JWT secret (the first instance to start writes it, the others read
-- it) and the schema version.
CREATE TABLE IF NOT EXISTS meta (
    `key`  VARCHAR(64) NOT NULL PRIMARY KEY,
    value  TEXT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per person, as schema.sql's accounts at version 5: the same columns, limits and rules.
CREATE TABLE IF NOT EXISTS accounts (
    id                     BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username               VARCHAR(150) NOT NULL CHECK (char_length(username) >= 1),
    phone                  VARCHAR(20),
    is_register            TINYINT NOT NULL DEFAULT 0 CHECK (is_register IN (0, 1)),
    is_staff               TINYINT NOT NULL DEFAULT 0 CHECK (is_staff IN (0, 1)),
    is_superuser           TINYINT NOT NULL DEFAULT 0 CHECK (is_superuser IN (0, 1)),
    flag                   BIGINT NOT NULL DEFAULT 1,
    avatar                 VARCHAR(512),
    avatar_thumb           VARCHAR(512),
    birthday               VARCHAR(10) CHECK (birthday IS NULL OR birthday REGEXP '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'),
    address                VARCHAR(256),
    member_score           BIGINT NOT NULL DEFAULT 0,
    credit_score           BIGINT NOT NULL DEFAULT 0,
    wx_appid               VARCHAR(64) NOT NULL CHECK (char_length(wx_appid) >= 1),
    wx_openid              VARCHAR(64) NOT NULL CHECK (char_length(wx_openid) >= 1),
    wx_unionid             VARCHAR(64),
    wx_nickname            VARCHAR(64),
    wx_gender              TINYINT NOT NULL DEFAULT 0 CHECK (wx_gender BETWEEN 0 AND 2),
    wx_avatar              VARCHAR(512),
    wx_country             VARCHAR(64),
    wx_province            VARCHAR(64),
    wx_city                VARCHAR(64),
    last_ip                VARCHAR(45),
    join_ip                VARCHAR(45),
    love_help_num          BIGINT NOT NULL DEFAULT 0,
    bring_love_concern_num BIGINT NOT NULL DEFAULT 0,
    last_login             BIGINT,
    date_joined            BIGINT NOT NULL,
    token_version          BIGINT NOT NULL DEFAULT 0,
    disabled_at            BIGINT,
    -- One account per WeChat identity, across every instance.
    UNIQUE KEY accounts_wechat_identity (wx_appid, wx_openid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The latest jscode2session answer per WeChat identity, as schema.sql's at version 5.
CREATE TABLE IF NOT EXISTS wechat_sessions (
    appid         VARCHAR(64) NOT NULL,
    openid        VARCHAR(128) NOT NULL,
    unionid       VARCHAR(128),
    session_key   VARCHAR(255) NOT NULL,
    created_at    BIGINT NOT NULL,
    token_version BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (appid, openid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The answers of recently exchanged `wx.login` codes, so that a code retried on another instance
-- gets the first answer (src/codes.rs keeps them in memory when there is one instance). A row is
-- claimed (`openid` NULL) before WeChat is asked, so a concurrent duplicate waits for the first
-- exchange; `code_key` is a hash of the appid and the code, never the code. `session_key` is kept
-- only when the server gives it to clients (`expose_session_key`).
CREATE TABLE IF NOT EXISTS code_answers (
    code_key      BINARY(16) NOT NULL PRIMARY KEY,
    expires_at    BIGINT NOT NULL,
    claimed_at    BIGINT NOT NULL,
    openid        VARCHAR(128),
    unionid       VARCHAR(128),
    session_key   VARCHAR(255),
    token_version BIGINT NOT NULL DEFAULT 0,
    KEY code_answers_expiry (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- version: 6

-- Several mini-programs, one person, as schema.sql's version 6: a WeChat identity is (appid,
-- openid), and each belongs to exactly one account; an account may have one identity per app.
-- Every account's own identity becomes its first row, so a database from before keeps every
-- account, id and token, as the default app's. Deleting an account deletes its identities.
CREATE TABLE IF NOT EXISTS identities (
    appid      VARCHAR(64) NOT NULL CHECK (char_length(appid) >= 1),
    openid     VARCHAR(64) NOT NULL CHECK (char_length(openid) >= 1),
    account_id BIGINT NOT NULL,
    PRIMARY KEY (appid, openid),
    KEY identities_account (account_id),
    CONSTRAINT identities_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id)
        ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT IGNORE INTO identities (appid, openid, account_id)
    SELECT wx_appid, wx_openid, id FROM accounts ORDER BY id;

-- One row per unionid a new identity joined or made an account for: the row a new identity with a
-- unionid locks (`INSERT … ON DUPLICATE KEY UPDATE`) for the rest of its transaction, so that two
-- instances' first logins of one person through two apps take turns and make one account.
CREATE TABLE IF NOT EXISTS unionid_joins (
    unionid VARCHAR(128) NOT NULL PRIMARY KEY
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The account a unionid belongs to, for the join. (MySQL has no `CREATE INDEX IF NOT EXISTS`:
-- open.rs takes "duplicate key name" from a section applied again as done.)
CREATE INDEX accounts_unionid ON accounts (wx_unionid);

-- version: 7

-- Nothing changes here. SQLite's version 7 gives each account its identity's row by a trigger and
-- drops its unique index on the accounts' `wx_appid`, `wx_openid`. MySQL keeps the index:
-- instances creating one identity's account at once meet on it (`login_account`'s
-- `ON DUPLICATE KEY UPDATE`). And the engine writes the identity itself: with binary logging on,
-- as on managed databases, creating a trigger needs SUPER or `log_bin_trust_function_creators`,
-- which wxauth's database user is not expected to have.
