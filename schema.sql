-- wxauth's database schema, applied by version.
--
-- Each section below starts with a `-- version: N` line and upgrades a database from version N-1
-- to N. src/store/sqlite/migrate.rs applies every section above the database's
-- `PRAGMA user_version`, each followed by setting user_version to N, all in one transaction.
-- Released sections are never edited: a change is a new section at the end.

-- version: 1

-- Small facts about this database: the generated JWT secret, the schema's creation time.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

-- One row per person. Field names and meanings follow the original backend's user model, so the
-- account object keeps its shape; times are Unix seconds (UTC). A WeChat identity is (appid,
-- openid): one deployment could serve several mini-programs.
CREATE TABLE accounts (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    username               TEXT NOT NULL CHECK (length(username) BETWEEN 1 AND 150),
    phone                  TEXT CHECK (length(phone) <= 20),
    is_register            INTEGER NOT NULL DEFAULT 0 CHECK (is_register IN (0, 1)),
    is_staff               INTEGER NOT NULL DEFAULT 0 CHECK (is_staff IN (0, 1)),
    is_superuser           INTEGER NOT NULL DEFAULT 0 CHECK (is_superuser IN (0, 1)),
    flag                   INTEGER NOT NULL DEFAULT 1,
    avatar                 TEXT CHECK (length(avatar) <= 512),
    avatar_thumb           TEXT CHECK (length(avatar_thumb) <= 512),
    birthday               TEXT CHECK (birthday IS NULL OR birthday GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    address                TEXT CHECK (length(address) <= 256),
    member_score           INTEGER NOT NULL DEFAULT 0,
    credit_score           INTEGER NOT NULL DEFAULT 0,
    wx_appid               TEXT NOT NULL CHECK (length(wx_appid) BETWEEN 1 AND 64),
    wx_openid              TEXT NOT NULL CHECK (length(wx_openid) BETWEEN 1 AND 64),
    wx_unionid             TEXT CHECK (length(wx_unionid) <= 64),
    wx_nickname            TEXT CHECK (length(wx_nickname) <= 64),
    wx_gender              INTEGER NOT NULL DEFAULT 0 CHECK (wx_gender IN (0, 1, 2)),
    wx_avatar              TEXT CHECK (length(wx_avatar) <= 512),
    wx_country             TEXT CHECK (length(wx_country) <= 64),
    wx_province            TEXT CHECK (length(wx_province) <= 64),
    wx_city                TEXT CHECK (length(wx_city) <= 64),
    last_ip                TEXT CHECK (length(last_ip) <= 45),
    join_ip                TEXT CHECK (length(join_ip) <= 45),
    love_help_num          INTEGER NOT NULL DEFAULT 0,
    bring_love_concern_num INTEGER NOT NULL DEFAULT 0,
    last_login             INTEGER,
    date_joined            INTEGER NOT NULL
) STRICT;

-- One account per WeChat identity, enforced here rather than by check-then-insert.
CREATE UNIQUE INDEX accounts_wechat_identity ON accounts (wx_appid, wx_openid);

-- The latest jscode2session answer per WeChat identity. The session_key never leaves the server
-- (unless expose_session_key); `created_at` drives the `recent_code` openid login policy.
CREATE TABLE wechat_sessions (
    appid       TEXT NOT NULL,
    openid      TEXT NOT NULL,
    unionid     TEXT,
    session_key TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (appid, openid)
) STRICT, WITHOUT ROWID;

-- version: 2

-- Logout: a token is valid only while its `ver` claim equals its account's token_version, so
-- raising the version revokes every token issued to the account until then.
ALTER TABLE accounts ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;

-- version: 3

-- The accounts table again, with `wx_gender BETWEEN 0 AND 2` where version 1 said
-- `wx_gender IN (0, 1, 2)`: the same rule for a STRICT INTEGER column, but SQLite checks a list of
-- three or more values by building a temporary b-tree, in every statement that writes wx_gender
-- (every new account, every registration: about a tenth of a registration's CPU). SQLite cannot
-- change a CHECK constraint in place, so the table is rebuilt as
-- https://sqlite.org/lang_altertable.html describes: every row with its id, the index, and
-- AUTOINCREMENT's high-water mark (above the largest id once the newest accounts were deleted:
-- ids are never given out twice).
CREATE TABLE accounts_v3 (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    username               TEXT NOT NULL CHECK (length(username) BETWEEN 1 AND 150),
    phone                  TEXT CHECK (length(phone) <= 20),
    is_register            INTEGER NOT NULL DEFAULT 0 CHECK (is_register IN (0, 1)),
    is_staff               INTEGER NOT NULL DEFAULT 0 CHECK (is_staff IN (0, 1)),
    is_superuser           INTEGER NOT NULL DEFAULT 0 CHECK (is_superuser IN (0, 1)),
    flag                   INTEGER NOT NULL DEFAULT 1,
    avatar                 TEXT CHECK (length(avatar) <= 512),
    avatar_thumb           TEXT CHECK (length(avatar_thumb) <= 512),
    birthday               TEXT CHECK (birthday IS NULL OR birthday GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    address                TEXT CHECK (length(address) <= 256),
    member_score           INTEGER NOT NULL DEFAULT 0,
    credit_score           INTEGER NOT NULL DEFAULT 0,
    wx_appid               TEXT NOT NULL CHECK (length(wx_appid) BETWEEN 1 AND 64),
    wx_openid              TEXT NOT NULL CHECK (length(wx_openid) BETWEEN 1 AND 64),
    wx_unionid             TEXT CHECK (length(wx_unionid) <= 64),
    wx_nickname            TEXT CHECK (length(wx_nickname) <= 64),
    wx_gender              INTEGER NOT NULL DEFAULT 0 CHECK (wx_gender BETWEEN 0 AND 2),
    wx_avatar              TEXT CHECK (length(wx_avatar) <= 512),
    wx_country             TEXT CHECK (length(wx_country) <= 64),
    wx_province            TEXT CHECK (length(wx_province) <= 64),
    wx_city                TEXT CHECK (length(wx_city) <= 64),
    last_ip                TEXT CHECK (length(last_ip) <= 45),
    join_ip                TEXT CHECK (length(join_ip) <= 45),
    love_help_num          INTEGER NOT NULL DEFAULT 0,
    bring_love_concern_num INTEGER NOT NULL DEFAULT 0,
    last_login             INTEGER,
    date_joined            INTEGER NOT NULL,
    token_version          INTEGER NOT NULL DEFAULT 0
) STRICT;

INSERT INTO accounts_v3 (
    id, username, phone, is_register, is_staff, is_superuser, flag, avatar, avatar_thumb,
    birthday, address, member_score, credit_score, wx_appid, wx_openid, wx_unionid, wx_nickname,
    wx_gender, wx_avatar, wx_country, wx_province, wx_city, last_ip, join_ip, love_help_num,
    bring_love_concern_num, last_login, date_joined, token_version)
SELECT
    id, username, phone, is_register, is_staff, is_superuser, flag, avatar, avatar_thumb,
    birthday, address, member_score, credit_score, wx_appid, wx_openid, wx_unionid, wx_nickname,
    wx_gender, wx_avatar, wx_country, wx_province, wx_city, last_ip, join_ip, love_help_num,
    bring_love_concern_num, last_login, date_joined, token_version
FROM accounts ORDER BY id;

-- The copy set the new table's mark to its largest id; the old mark may be higher.
DELETE FROM sqlite_sequence WHERE name = 'accounts_v3';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'accounts_v3', seq FROM sqlite_sequence WHERE name = 'accounts';

DROP TABLE accounts;
ALTER TABLE accounts_v3 RENAME TO accounts;
CREATE UNIQUE INDEX accounts_wechat_identity ON accounts (wx_appid, wx_openid);

-- version: 4

-- Logout ends the sign-in that produced the revoked tokens: the `recent_code` window and the
-- `session_key` of a WeChat session recorded before the account's latest logout let no one log in
-- by openid. A session keeps the token version its account had when it was recorded (0 when there
-- was none); a different version on the account now means a logout since. Sessions recorded
-- before this version count as recorded at version 0, so those of an account that has ever logged
-- out end here: the user's next `wx.login` code records a current one.
ALTER TABLE wechat_sessions ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;

-- version: 5

-- `wxauth users disable`: the time (Unix seconds) an operator disabled the account, NULL while it
-- is enabled. A disabled account cannot log in, register or use its tokens (`account_disabled`).
ALTER TABLE accounts ADD COLUMN disabled_at INTEGER;

-- version: 6

-- Several mini-programs, one person: a WeChat identity is (appid, openid), and each belongs to
-- exactly one account; an account may have one identity per app. A first login or registration
-- through an app whose WeChat session gives a unionid an account already has joins that account
-- (a new identity) instead of making one. `accounts.wx_appid` and `wx_openid` stay the identity
-- that made the account (the original backend's fields); each account's becomes its first row
-- here, so a database from before keeps every account, id and token, as the default app's.
-- Deleting an account deletes its identities (`ON DELETE CASCADE`), so that the identities'
-- next logins make a new account.
CREATE TABLE identities (
    appid      TEXT NOT NULL CHECK (length(appid) BETWEEN 1 AND 64),
    openid     TEXT NOT NULL CHECK (length(openid) BETWEEN 1 AND 64),
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    PRIMARY KEY (appid, openid)
) STRICT, WITHOUT ROWID;

CREATE INDEX identities_account ON identities (account_id);

INSERT INTO identities (appid, openid, account_id)
    SELECT wx_appid, wx_openid, id FROM accounts ORDER BY id;

-- The account a unionid belongs to, for the join.
CREATE INDEX accounts_unionid ON accounts (wx_unionid);

-- version: 7

-- `identities` is the one record of which account a WeChat identity has, and its primary key the
-- one guarantee of one account per identity. An account's own identity (`wx_appid`, `wx_openid`,
-- the one that made it) gets its row from the trigger below, in the statement that inserts the
-- account, whoever inserts it: the server, `users import`, or an operator's SQL (a second account
-- with an identity that has one fails here, at its insert). A login that finds no identity row
-- therefore finds no account made with it either. The unique index on the accounts' `wx_appid`,
-- `wx_openid` guarded the same thing a second time, at the price of one more B-tree written by
-- every new account.
DROP INDEX accounts_wechat_identity;

-- An account put in at version 6 by other means than the server's (an operator's SQL) may lack
-- its identity row, which the server's lookup at a login then found through that index; it gets
-- the row here.
INSERT INTO identities (appid, openid, account_id)
    SELECT wx_appid, wx_openid, id FROM accounts
    WHERE NOT EXISTS (SELECT 1 FROM identities
                      WHERE appid = accounts.wx_appid AND openid = accounts.wx_openid)
    ORDER BY id;

CREATE TRIGGER accounts_identity AFTER INSERT ON accounts BEGIN
    INSERT INTO identities (appid, openid, account_id) VALUES (new.wx_appid, new.wx_openid, new.id);
END;
