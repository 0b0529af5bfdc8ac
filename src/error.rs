//! The one error type of the crate, and everything a client may learn from it.
//!
//! Each variant maps to a stable machine name (`error` in the envelope), a numeric `code` that is
//! never reused, an HTTP status, and a short Chinese `detail` for end users. `Display` is the log
//! text: it may say more than the client sees (a WeChat errcode, a database message) but never a
//! secret, a session_key, a token or a full `wx.login` code. Only the router turns an `Error` into
//! a response.
//!
//! `Fatal` is the other side: why wxauth cannot start, or an operator's command cannot finish.
//! Its `Display` is the one line main prints on stderr before exiting with status 1.

use std::fmt;

use crate::store;
use crate::wxcrypt::DecryptError;

#[derive(Debug)]
pub(crate) enum Error {
    /// A required field or query parameter is absent or empty; names the field.
    MissingParameter(&'static str),
    /// A field is malformed; the message names the field and is safe to show to the client.
    InvalidParameter(String),
    /// WeChat errcode 40029: the code is expired, reused, wrong, or another appid's.
    WechatCodeInvalid,
    /// WeChat errcode 40163: the code was already used.
    WechatCodeUsed,
    /// WeChat errcode 45011: WeChat's frequency limit for this user.
    WechatRateLimited,
    /// WeChat errcode 40226: the user is blocked by WeChat's risk control.
    WechatUserBlocked,
    /// Any other WeChat errcode; errcode and errmsg go to the log only.
    Wechat { api: &'static str, errcode: i64, errmsg: String },
    /// WeChat could not be reached, answered garbage, was busy, or too many calls are in flight
    /// while it is not answering.
    WechatUnavailable { api: &'static str, reason: String },
    /// Neither a valid token nor a usable openid.
    NotAuthenticated,
    /// The JWT failed a check other than expiry or revocation.
    TokenInvalid,
    /// The JWT's `exp` has passed (beyond the leeway).
    TokenExpired,
    /// The JWT was issued before its account logged out.
    TokenRevoked,
    /// Logging in with a bare openid is not allowed by the configured policy.
    OpenidLoginRefused,
    /// No usable server-side session_key for this openid.
    SessionExpired,
    /// Encrypted data did not decrypt with the session_key, or is this app's but not phone data.
    DecryptFailed(DecryptError),
    /// Decrypted data names another appid in its watermark.
    WatermarkMismatch,
    /// The account is disabled by the operator (`wxauth users disable`): it cannot log in,
    /// register or use its tokens.
    AccountDisabled,
    /// The request body is larger than the configured limit.
    BodyTooLarge { limit: usize },
    /// The request line (method, path and query) is longer than the server reads.
    UriTooLong,
    /// A header line, the number of headers, or the whole head is larger than the server reads.
    HeadersTooLarge,
    /// The request head or body did not arrive in time.
    RequestTimeout,
    /// The request named an HTTP version other than 1.0 and 1.1.
    HttpVersionNotSupported,
    /// `max_connections` client connections are open; a new one is refused until some close.
    TooManyConnections,
    /// Too many requests from this client; retry after this many seconds.
    RateLimited { retry_after: u64 },
    /// No such path.
    NotFound,
    /// The path exists but not with this method; the methods it takes.
    MethodNotAllowed(&'static str),
    /// A bug or an environment failure on our side; the text is for the log only.
    Internal(String),
    /// The database failed; the client sees it as `Internal`, and the error stays the source.
    Database(store::DatabaseError),
    /// The database server cannot be reached (MySQL down, restarting, or out of connections):
    /// the request may succeed once it is back. The error stays the source.
    DatabaseUnavailable(store::DatabaseError),
}

impl Error {
    /// The HTTP status of the response.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Error::BodyTooLarge { .. } => 413,
            Error::UriTooLong => 414,
            Error::HeadersTooLarge => 431,
            Error::RequestTimeout => 408,
            Error::HttpVersionNotSupported => 505,
            Error::TooManyConnections | Error::DatabaseUnavailable(_) => 503,
            Error::RateLimited { .. } => 429,
            Error::NotFound => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::WechatUnavailable { .. } => 502,
            Error::Internal(_) | Error::Database(_) => 500,
            _ => 403,
        }
    }

    /// No usable credentials: no token, or a token that failed a check. `verify` answers these
    /// with 401 instead of 403.
    pub(crate) fn is_authentication(&self) -> bool {
        matches!(
            self,
            Error::NotAuthenticated
                | Error::TokenInvalid
                | Error::TokenExpired
                | Error::TokenRevoked
        )
    }

    /// The numeric `code` of the envelope; listed in docs/api.md, never reused.
    pub(crate) fn code(&self) -> u32 {
        match self {
            Error::MissingParameter(_) => 1001,
            Error::InvalidParameter(_) => 1002,
            Error::WechatCodeInvalid => 2001,
            Error::WechatCodeUsed => 2002,
            Error::WechatRateLimited => 2003,
            Error::WechatUserBlocked => 2004,
            Error::Wechat { .. } => 2005,
            Error::WechatUnavailable { .. } => 2006,
            Error::NotAuthenticated => 3001,
            Error::TokenInvalid => 3002,
            Error::TokenExpired => 3003,
            Error::TokenRevoked => 3004,
            Error::OpenidLoginRefused => 3005,
            Error::SessionExpired => 3006,
            Error::DecryptFailed(_) => 3007,
            Error::WatermarkMismatch => 3008,
            Error::AccountDisabled => 3009,
            Error::BodyTooLarge { .. } => 4013,
            Error::UriTooLong => 4014,
            Error::HeadersTooLarge => 4031,
            Error::RequestTimeout => 4008,
            Error::HttpVersionNotSupported => 4505,
            Error::TooManyConnections => 5003,
            Error::DatabaseUnavailable(_) => 5004,
            Error::RateLimited { .. } => 4029,
            Error::NotFound => 4004,
            Error::MethodNotAllowed(_) => 4005,
            Error::Internal(_) | Error::Database(_) => 5000,
        }
    }

    /// The stable machine-readable name (`error` in the envelope).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Error::MissingParameter(_) => "missing_parameter",
            Error::InvalidParameter(_) => "invalid_parameter",
            Error::WechatCodeInvalid => "wechat_code_invalid",
            Error::WechatCodeUsed => "wechat_code_used",
            Error::WechatRateLimited => "wechat_rate_limited",
            Error::WechatUserBlocked => "wechat_user_blocked",
            Error::Wechat { .. } => "wechat_error",
            Error::WechatUnavailable { .. } => "wechat_unavailable",
            Error::NotAuthenticated => "not_authenticated",
            Error::TokenInvalid => "token_invalid",
            Error::TokenExpired => "token_expired",
            Error::TokenRevoked => "token_revoked",
            Error::OpenidLoginRefused => "openid_login_refused",
            Error::SessionExpired => "session_expired",
            Error::DecryptFailed(_) => "decrypt_failed",
            Error::WatermarkMismatch => "watermark_mismatch",
            Error::AccountDisabled => "account_disabled",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::UriTooLong => "uri_too_long",
            Error::HeadersTooLarge => "headers_too_large",
            Error::RequestTimeout => "request_timeout",
            Error::HttpVersionNotSupported => "http_version_not_supported",
            Error::TooManyConnections => "too_many_connections",
            Error::DatabaseUnavailable(_) => "database_unavailable",
            Error::RateLimited { .. } => "rate_limited",
            Error::NotFound => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::Internal(_) | Error::Database(_) => "internal",
        }
    }

    /// The human message for the client, in Chinese as the original backend's. It says nothing
    /// internal: no database text, no WeChat errmsg.
    pub(crate) fn detail(&self) -> String {
        match self {
            Error::MissingParameter(field) => format!("缺少参数: {field}"),
            Error::InvalidParameter(message) => format!("参数错误: {message}"),
            Error::WechatCodeInvalid => "code 无效或已过期, 请重新调用 wx.login".into(),
            Error::WechatCodeUsed => "code 已被使用, 请重新调用 wx.login".into(),
            Error::WechatRateLimited => "微信接口调用过于频繁, 请稍后再试".into(),
            Error::WechatUserBlocked => "该用户已被微信限制登录".into(),
            Error::Wechat { .. } => "微信接口返回错误".into(),
            Error::WechatUnavailable { .. } => "微信服务暂不可用, 请稍后再试".into(),
            Error::NotAuthenticated => "未登录: 需要有效的 token 或 openid".into(),
            Error::TokenInvalid => "token 无效".into(),
            Error::TokenExpired => "token 已过期, 请重新登录".into(),
            Error::TokenRevoked => "token 已注销, 请重新登录".into(),
            Error::OpenidLoginRefused => "不允许仅凭 openid 登录, 请重新调用 wx.login".into(),
            Error::SessionExpired => "会话已过期, 请重新调用 wx.login".into(),
            Error::DecryptFailed(DecryptError::NotPhoneData) => "加密数据不是手机号数据".into(),
            Error::DecryptFailed(_) => "加密数据解密失败".into(),
            Error::WatermarkMismatch => "加密数据不属于本小程序".into(),
            Error::AccountDisabled => "账号已被停用".into(),
            Error::BodyTooLarge { limit } => format!("请求体过大 (上限 {limit} 字节)"),
            Error::UriTooLong => "请求地址过长".into(),
            Error::HeadersTooLarge => "请求头过大".into(),
            Error::RequestTimeout => "请求超时".into(),
            Error::HttpVersionNotSupported => "不支持的 HTTP 版本, 请使用 HTTP/1.1".into(),
            Error::TooManyConnections => "服务器繁忙, 请稍后重试".into(),
            Error::DatabaseUnavailable(_) => "数据库暂不可用, 请稍后重试".into(),
            Error::RateLimited { retry_after } => {
                format!("请求过于频繁, 请 {retry_after} 秒后再试")
            }
            Error::NotFound => "接口不存在".into(),
            Error::MethodNotAllowed(allow) => format!("请求方法不允许 (允许: {allow})"),
            Error::Internal(_) | Error::Database(_) => "服务器内部错误".into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingParameter(field) => write!(f, "missing parameter {field}"),
            Error::InvalidParameter(message) => write!(f, "invalid parameter: {message}"),
            Error::WechatCodeInvalid => f.write_str("wechat: code invalid (40029)"),
            Error::WechatCodeUsed => f.write_str("wechat: code already used (40163)"),
            Error::WechatRateLimited => f.write_str("wechat: rate limited (45011)"),
            Error::WechatUserBlocked => f.write_str("wechat: user blocked (40226)"),
            Error::Wechat { api, errcode, errmsg } => {
                write!(f, "wechat {api}: errcode {errcode}: {errmsg}")
            }
            Error::WechatUnavailable { api, reason } => {
                write!(f, "wechat {api} unavailable: {reason}")
            }
            Error::NotAuthenticated => f.write_str("neither a valid token nor an openid"),
            Error::TokenInvalid => f.write_str("token invalid"),
            Error::TokenExpired => f.write_str("token expired"),
            Error::TokenRevoked => f.write_str("token revoked by logout"),
            Error::OpenidLoginRefused => f.write_str("openid login refused by policy"),
            Error::SessionExpired => f.write_str("no usable session_key for this openid"),
            Error::DecryptFailed(reason) => write!(f, "decrypt failed: {reason}"),
            Error::WatermarkMismatch => f.write_str("watermark appid mismatch"),
            Error::AccountDisabled => f.write_str("account disabled by the operator"),
            Error::BodyTooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            Error::UriTooLong => f.write_str("request line too long"),
            Error::HeadersTooLarge => f.write_str("request headers too large"),
            Error::RequestTimeout => f.write_str("request did not arrive in time"),
            Error::HttpVersionNotSupported => f.write_str("HTTP version not supported"),
            Error::TooManyConnections => f.write_str("too many connections open"),
            Error::RateLimited { retry_after } => {
                write!(f, "rate limited, retry after {retry_after}s")
            }
            Error::NotFound => f.write_str("not found"),
            Error::MethodNotAllowed(allow) => write!(f, "method not allowed (allow {allow})"),
            Error::Internal(message) => write!(f, "internal: {message}"),
            // SQLite's messages name tables, columns and constraints, never a value we bound, so
            // they are safe for the log.
            Error::Database(error) => write!(f, "internal: database: {error}"),
            Error::DatabaseUnavailable(error) => write!(f, "database unavailable: {error}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database(error) | Error::DatabaseUnavailable(error) => Some(error),
            Error::DecryptFailed(error) => Some(error),
            _ => None,
        }
    }
}

/// What ends the process with status 1: the server cannot start (or stop cleanly), or an
/// operator's command cannot finish. `Display` is one line for the operator, without the
/// "internal:" a client's log line gets.
#[derive(Debug)]
pub(crate) enum Fatal {
    /// The configuration cannot be read or is invalid; the text names the file, key or variable.
    Config(String),
    /// The database cannot be opened, read or written, as `store` reports it.
    Store(Error),
    /// The operating system refused something: what wxauth was doing, and why.
    Io { doing: String, source: std::io::Error },
    /// Anything else the operator has to act on.
    Other(String),
}

impl Fatal {
    /// An I/O failure while `doing` something.
    pub(crate) fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> Fatal {
        move |source| Fatal::Io { doing: doing.into(), source }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Config(message) | Fatal::Other(message) => f.write_str(message),
            Fatal::Store(Error::Internal(message)) => f.write_str(message),
            Fatal::Store(Error::Database(error)) => write!(f, "database: {error}"),
            Fatal::Store(other) => write!(f, "{other}"),
            Fatal::Io { doing, source } => write!(f, "{doing}: {source}"),
        }
    }
}

impl std::error::Error for Fatal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Fatal::Store(error) => Some(error),
            Fatal::Io { source, .. } => Some(source),
            Fatal::Config(_) | Fatal::Other(_) => None,
        }
    }
}

impl From<Error> for Fatal {
    fn from(error: Error) -> Self {
        Fatal::Store(error)
    }
}

impl From<DecryptError> for Error {
    fn from(error: DecryptError) -> Self {
        match error {
            DecryptError::WatermarkMismatch => Error::WatermarkMismatch,
            other => Error::DecryptFailed(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// A database error: a query on an empty database, which has none of wxauth's tables.
    fn database_error() -> Error {
        let empty = store::open_reader(":memory:").unwrap();
        store::account_counts(&empty).unwrap_err()
    }

    #[test]
    fn a_database_error_is_kept_as_the_source_and_shown_as_internal() {
        let error = database_error();
        let source = error.source().expect("the database error is kept");
        assert!(source.downcast_ref::<store::DatabaseError>().is_some(), "{source:?}");
        assert!(source.source().is_some(), "the engine's own error is kept: {source:?}");
        // What the client and the log see.
        assert_eq!((error.status(), error.code(), error.name()), (500, 5000, "internal"));
        assert_eq!(error.detail(), "服务器内部错误");
        assert_eq!(error.to_string(), "internal: database: no such table: accounts");
    }

    #[test]
    fn a_fatal_error_is_the_operators_line_and_keeps_its_source() {
        let fatal = Fatal::from(database_error());
        // Without the "internal:" of a client's log line.
        assert_eq!(fatal.to_string(), "database: no such table: accounts");
        let source = fatal.source().and_then(|error| error.source()).expect("the database error");
        assert!(source.downcast_ref::<store::DatabaseError>().is_some(), "{source:?}");
        let fatal = Fatal::from(Error::Internal("database x.db is a link".into()));
        assert_eq!(fatal.to_string(), "database x.db is a link");
        let refused = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let fatal = Fatal::io("cannot listen on 127.0.0.1:1")(refused);
        assert_eq!(fatal.to_string(), "cannot listen on 127.0.0.1:1: address in use");
        assert!(fatal.source().unwrap().downcast_ref::<std::io::Error>().is_some());
        assert_eq!(
            Fatal::Config("workers: must be between 2 and 256".into()).to_string(),
            "workers: must be between 2 and 256"
        );
    }
}
