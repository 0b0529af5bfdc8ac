//! Storage: the account and the records the API keeps, and SQLite behind them, in files of their
//! own: `open.rs` (opening connections), `tuning.rs` (SQLite's settings through its FFI),
//! `migrate.rs` (`schema.sql` by version), `sqlite.rs` (one function per query), `writer.rs` (the
//! single writer thread and its group commit) and `backup.rs`. Only this folder has SQL.
//!
//! Reads run on the calling worker's own connection (or, for a row a write changes, in that write).
//! Every write goes through the one `Writer` connection, which commits in groups: it takes every
//! job waiting, runs each in its own savepoint (a failing job rolls back alone), commits once, and
//! only then answers each job. A write made with `Writer::run` is answered on disk
//! (`synchronous = FULL`), many of them sharing one fsync; `run_visible` writes (a WeChat
//! session) are answered once committed, and login bookkeeping (`note_login`, written at the start
//! of the next group) is not waited for; both reach the disk with the next fsync or checkpoint.
//! One account per WeChat identity is a unique index, never a check-then-insert.
//!
//! A connection that writes opens only a file that is safely wxauth's (`open_read_write`): a
//! regular file of its user, writable by nobody else, reached through no link, with the same
//! true of SQLite's files beside it; wxauth creates a missing database itself, owner-only.

use rusqlite::Row;
use serde::Serialize;

use crate::time;

/// Makes the account from one list of its fields: the struct, its columns (`account_columns!`,
/// each column named as its field), its row mapping (`account_from_row`) and the names the API
/// shows (`Account::FIELDS`), so that none can fall out of step with another. The `shown` fields
/// are the account object, in the API's order; the `hidden` ones are kept from the API.
macro_rules! account {
    (
        $(#[$meta:meta])*
        pub(crate) struct Account {
            shown {
                $(#[$first_meta:meta])* $first:ident: $first_type:ty,
                $( $(#[$shown_meta:meta])* $shown:ident: $shown_type:ty, )*
            }
            hidden {
                $( $(#[$hidden_meta:meta])* $hidden:ident: $hidden_type:ty, )+
            }
        }
    ) => {
        $(#[$meta])*
        pub(crate) struct Account {
            $(#[$first_meta])* pub(crate) $first: $first_type,
            $( $(#[$shown_meta])* pub(crate) $shown: $shown_type, )*
            $( $(#[$hidden_meta])* #[serde(skip)] pub(crate) $hidden: $hidden_type, )+
        }

        impl Account {
            /// The account object's fields in the API's order (the CSV header of `users export`).
            pub(crate) const FIELDS: &[&str] =
                &[stringify!($first) $(, stringify!($shown))*];
        }

        /// The account's columns in `account_from_row`'s order, as a macro so that each query is
        /// one `&'static str` (`concat!`) rather than a string formatted again at every call.
        macro_rules! account_columns {
            () => {
                concat!(
                    stringify!($first)
                    $(, ", ", stringify!($shown))*
                    $(, ", ", stringify!($hidden))+
                )
            };
        }

        fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
            // Columns in the fields' order: the index counts up, folded to constants.
            let mut column = 0;
            let mut next = || {
                column += 1;
                column - 1
            };
            Ok(Account {
                $first: row.get(next())?,
                $( $shown: row.get(next())?, )*
                $( $hidden: row.get(next())?, )+
            })
        }
    };
}

account! {
    /// An account, as the API shows it. Field names and formats are the original backend's.
    #[derive(Debug, Clone, Serialize)]
    pub(crate) struct Account {
        shown {
            id: i64,
            username: String,
            phone: Option<String>,
            is_register: bool,
            is_staff: bool,
            is_superuser: bool,
            flag: i64,
            avatar: Option<String>,
            avatar_thumb: Option<String>,
            birthday: Option<String>,
            address: Option<String>,
            member_score: i64,
            credit_score: i64,
            wx_openid: String,
            wx_unionid: Option<String>,
            wx_nickname: Option<String>,
            wx_gender: i64,
            wx_avatar: Option<String>,
            wx_country: Option<String>,
            wx_province: Option<String>,
            wx_city: Option<String>,
            last_ip: Option<String>,
            join_ip: Option<String>,
            love_help_num: i64,
            bring_love_concern_num: i64,
            #[serde(serialize_with = "optional_datetime")]
            last_login: Option<i64>,
            #[serde(serialize_with = "datetime")]
            date_joined: i64,
        }
        hidden {
            /// Tokens whose `ver` claim differs are revoked (logout). Not part of the account
            /// object.
            token_version: i64,
        }
    }
}

fn datetime<S: serde::Serializer>(seconds: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time::format_datetime(*seconds))
}

fn optional_datetime<S: serde::Serializer>(
    seconds: &Option<i64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match seconds {
        Some(seconds) => datetime(seconds, serializer),
        None => serializer.serialize_none(),
    }
}

// The engine's files come after `account!`, whose `account_columns!` they use.
mod backup;
mod migrate;
mod open;
mod sqlite;
mod tuning;
mod writer;

pub(crate) use backup::*;
pub(crate) use migrate::*;
pub(crate) use open::*;
pub(crate) use sqlite::*;
use tuning::*;
pub(crate) use writer::*;

/// The server-side record of a user's latest `jscode2session`.
#[derive(Clone)]
pub(crate) struct WechatSession {
    pub(crate) unionid: Option<String>,
    pub(crate) session_key: String,
    pub(crate) created_at: i64,
}

/// A recorded session as `wechat_session` reads it back: with the token version its account had
/// when it was recorded and has now (each 0 when there is no account), which differ once the
/// account has logged out since.
pub(crate) struct RecordedSession {
    pub(crate) session: WechatSession,
    pub(crate) token_version: i64,
    pub(crate) account_token_version: i64,
}

impl RecordedSession {
    /// The account logged out after the session was recorded, which ended the sign-in it began.
    pub(crate) fn ended(&self) -> bool {
        self.token_version != self.account_token_version
    }
}

/// Fields a login by openid may update; `None` leaves a column as it is.
#[derive(Debug, Default, Clone)]
pub(crate) struct Profile {
    pub(crate) wx_nickname: Option<String>,
    pub(crate) wx_avatar: Option<String>,
    pub(crate) wx_gender: Option<i64>,
    pub(crate) wx_country: Option<String>,
    pub(crate) wx_province: Option<String>,
    pub(crate) wx_city: Option<String>,
    pub(crate) phone: Option<String>,
}

impl Profile {
    /// Nothing to update.
    pub(crate) fn is_empty(&self) -> bool {
        let Profile { wx_nickname, wx_avatar, wx_gender, wx_country, wx_province, wx_city, phone } =
            self;
        [wx_nickname, wx_avatar, wx_country, wx_province, wx_city, phone]
            .iter()
            .all(|field| field.is_none())
            && wx_gender.is_none()
    }
}

/// What a successful registration writes.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub(crate) phone: String,
    pub(crate) username: String,
    pub(crate) wx_nickname: Option<String>,
    pub(crate) birthday: Option<String>,
    pub(crate) wx_gender: Option<i64>,
}

/// How many accounts exist, and how many of them completed registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountCounts {
    pub(crate) accounts: i64,
    pub(crate) registered: i64,
}

/// What `backup` wrote, read back from the copy.
pub(crate) struct BackupReport {
    /// Size of the copy, in bytes.
    pub(crate) bytes: u64,
    pub(crate) schema_version: u32,
    /// Every table of the copy and its row count, by name.
    pub(crate) tables: Vec<(String, i64)>,
}

#[cfg(test)]
fn temp_database(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("wxauth-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("test.db").to_string_lossy().into_owned()
}
