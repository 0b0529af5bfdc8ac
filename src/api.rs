//! The WX_AUTH endpoints, one function each: typed input in, typed output or `Error` out. No HTTP
//! here: the router parses requests and writes responses, and `Ctx` brings everything else, `now`
//! included, so a handler can be called from a test without a socket.
//!
//! Every handler validates its whole input before it calls WeChat or writes anything, so bad input
//! leaves nothing half-written. Reads use the worker's connection; writes go through the writer
//! (`Writer::run`), which the handler waits for, and are durable before the handler answers,
//! except login bookkeeping (`last_login`, `last_ip`), whose answer shows the new values while the
//! write completes in the background. An account a write changes is read back in that write.
//!
//! A request is served by one app (`App`, the mini-program whose prefix its path is under): its
//! WeChat client, its rate limits, its appid for identities and its audience for tokens. An
//! answer shows the account as that app sees it, with that app's openid in `wx_openid`; only
//! `verify` accepts the tokens of every app.

use std::net::IpAddr;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::codes::{self, CodeAnswer, RecentCodes};
use crate::config::{Config, OpenidLogin};
use crate::error::Error;
use crate::jwt;
use crate::ratelimit::RateLimiter;
use crate::store::{
    self, Account, AccountChange, Connection, IdentityWrite, Profile, Registration, WechatSession,
    Writer,
};
use crate::wechat::WeChat;
use crate::wxcrypt;

/// Longest openid or unionid accepted (WeChat's are 28 characters).
const MAX_OPENID: usize = 64;
/// Longest `wx.login` or phone code accepted (WeChat's are 32 characters).
const MAX_CODE: usize = 256;
/// Length limits that match the CHECK constraints in schema.sql.
pub(crate) const MAX_NICKNAME: usize = 64;
pub(crate) const MAX_AVATAR: usize = 512;
pub(crate) const MAX_REGION: usize = 64;
/// Longest base64 encrypted phone payload accepted (WeChat's are about 200 characters).
const MAX_ENCRYPTED: usize = 4096;
const MAX_SESSION_KEY: usize = 64;

/// The JWT secrets: the current one (first) signs; all of them verify the tokens that name them
/// by `kid` (jwt.rs), so a secret dropped from the list stops verifying at once.
pub(crate) struct Keys {
    keys: Vec<jwt::Key>,
}

impl Keys {
    /// The current secret and those it replaced (`jwt.previous_secrets`). A previous secret equal
    /// to the current one, or listed twice, is kept once.
    pub(crate) fn new(current: &str, previous: &[String]) -> Keys {
        let mut keys = vec![jwt::Key::new(current.as_bytes())];
        for secret in previous {
            let key = jwt::Key::new(secret.as_bytes());
            if !keys.iter().any(|known| known.kid() == key.kid()) {
                keys.push(key);
            }
        }
        Keys { keys }
    }

    /// The `kid` of every key, current first: public names, safe to log.
    pub(crate) fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(jwt::Key::kid).collect()
    }
}

/// One mini-program the server serves: the default (`[wechat]`, `prefix`, `jwt.audience`) or an
/// `[apps.NAME]`, with what is its own at run time.
pub(crate) struct App {
    /// `default` or NAME: the app's label in metrics and access lines, and in `verify`'s answer.
    pub(crate) name: String,
    /// Where its API is served, with leading and trailing slash.
    pub(crate) prefix: String,
    /// The `aud` of its tokens.
    pub(crate) audience: String,
    /// Its WeChat client (its appid and secret, access token and in-flight cap).
    pub(crate) wechat: WeChat,
    /// Its clients' rate-limit buckets.
    pub(crate) limiter: RateLimiter,
}

/// Everything a handler may use besides its input.
pub(crate) struct Ctx<'a> {
    pub(crate) config: &'a Config,
    /// The worker's read connection.
    pub(crate) db: &'a Connection,
    pub(crate) writer: &'a Writer,
    /// The app the request came through (`router::app`).
    pub(crate) app: &'a App,
    /// Every app, the default first: `verify` accepts the tokens of each.
    pub(crate) apps: &'a [App],
    pub(crate) codes: &'a RecentCodes,
    pub(crate) keys: &'a Keys,
    /// The client's address (the peer, or `X-Forwarded-For` from a trusted proxy).
    pub(crate) client: IpAddr,
    pub(crate) now: i64,
}

/// The answer of `login` and `register`.
#[derive(Debug, Serialize)]
pub(crate) struct SessionAnswer {
    pub(crate) account: Account,
    pub(crate) token: String,
}

/// The answer of `get_openid_by_code`.
#[derive(Debug, Serialize)]
pub(crate) struct OpenidAnswer {
    pub(crate) openid: String,
    pub(crate) is_registered: bool,
    pub(crate) account: Option<Account>,
    pub(crate) token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) unionid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) session_key: Option<String>,
}

/// The answer of `is_openid_registered`.
#[derive(Debug, Serialize)]
pub(crate) struct RegisteredAnswer {
    pub(crate) is_registered: bool,
}

impl Ctx<'_> {
    fn appid(&self) -> &str {
        self.app.wechat.appid()
    }

    fn client_ip(&self) -> String {
        self.client.to_string()
    }

    /// Spends one of this client's rate-limited requests.
    fn rate_limit(&self) -> Result<(), Error> {
        self.app
            .limiter
            .check(&self.config.rate_limit, self.client, Instant::now())
            .map_err(|retry_after| Error::RateLimited { retry_after })
    }

    fn issue_token(&self, account: &Account) -> String {
        let claims = jwt::Claims {
            iss: self.config.jwt.issuer.clone(),
            aud: self.app.audience.clone(),
            sub: account.id.to_string(),
            iat: self.now,
            exp: self.now + self.config.jwt.lifetime as i64,
            nbf: None,
            nickname: account.wx_nickname.clone(),
            scopes: vec!["open".into()],
            ver: account.token_version,
        };
        jwt::sign_with(&claims, &self.keys.keys[0])
    }

    /// The account a token of this app in an `Authorization` header names, as this app shows it
    /// (`seen_in`).
    fn account_from_token(&self, header: &str) -> Result<Account, Error> {
        let (account, _, _) = self.verified_token(header, std::slice::from_ref(self.app))?;
        seen_in(self.db, account, self.app.wechat.appid())
    }

    /// The account a token in an `Authorization` header names, the token's claims and the app of
    /// `apps` whose audience it carries: the token's signature and claims are checked, and its
    /// account must exist, be no younger than the token, be enabled, and not have revoked it.
    /// Reads only: the account as stored (`wx_openid` its first identity's), for what needs only
    /// its id; `account_from_token` shows it as the app sees it.
    fn verified_token<'b>(
        &self,
        header: &str,
        apps: &'b [App],
    ) -> Result<(Account, jwt::Claims, &'b App), Error> {
        let token = bearer_token(header).ok_or(Error::TokenInvalid)?;
        let leeway = self.config.jwt.leeway as i64;
        let audiences: Vec<&str> = apps.iter().map(|app| app.audience.as_str()).collect();
        let expect = jwt::Expect {
            issuer: &self.config.jwt.issuer,
            audiences: &audiences,
            leeway,
            now: self.now,
        };
        let claims =
            jwt::verify_with(token, &self.keys.keys, &expect).map_err(|error| match error {
                jwt::JwtError::Expired => Error::TokenExpired,
                jwt::JwtError::Invalid => Error::TokenInvalid,
            })?;
        let app = apps.iter().find(|app| app.audience == claims.aud).ok_or(Error::TokenInvalid)?;
        let id = account_id(&claims.sub).ok_or(Error::TokenInvalid)?;
        let account = store::account_by_id(self.db, id)?.ok_or(Error::TokenInvalid)?;
        // A token older than its account was issued to an earlier account with the same id: one
        // a restored backup no longer holds, whose id has since been given out again.
        if claims.iat + leeway < account.date_joined {
            return Err(Error::TokenInvalid);
        }
        // Before the version: disabling revokes the tokens too, and the client should learn why.
        enabled(&account)?;
        if claims.ver != account.token_version {
            return Err(Error::TokenRevoked);
        }
        Ok((account, claims, app))
    }

    /// The account of a valid token, if one is given. A bad token is an error only when there is
    /// no openid to fall back on.
    fn token_account(
        &self,
        authorization: Option<&str>,
        has_openid: bool,
    ) -> Result<Option<Account>, Error> {
        match authorization.map(|header| self.account_from_token(header)) {
            None => Ok(None),
            Some(Ok(account)) => Ok(Some(account)),
            Some(Err(error)) if !has_openid => Err(error),
            Some(Err(_)) => Ok(None),
        }
    }

    /// Applies the openid login policy to a request that names an account by openid alone. A
    /// WeChat session recorded before the account's latest logout ended with it and lets no one
    /// in. When a session lets the request in, returns the token version it was recorded at, for
    /// `admitted` to check again in the write that issues the token: a logout committed
    /// between this check and that write ends the session too.
    fn check_openid_login(
        &self,
        openid: &str,
        session_key: Option<&str>,
    ) -> Result<Option<i64>, Error> {
        let policy = self.config.openid_login;
        if policy == OpenidLogin::Open {
            return Ok(None);
        }
        if policy == OpenidLogin::Off {
            return Err(Error::OpenidLoginRefused);
        }
        let recorded = store::wechat_session(self.db, self.appid(), openid)?
            .filter(|recorded| !recorded.ended());
        let allowed = match (policy, &recorded) {
            (OpenidLogin::RecentCode, Some(recorded)) => {
                self.now <= recorded.session.created_at + self.config.openid_login_window as i64
            }
            (OpenidLogin::SessionKey, Some(recorded)) => {
                session_key.is_some_and(|given| same_secret(given, &recorded.session.session_key))
            }
            _ => false,
        };
        match recorded {
            Some(recorded) if allowed => Ok(Some(recorded.token_version)),
            _ => Err(Error::OpenidLoginRefused),
        }
    }

    /// Exchanges a `wx.login` code with WeChat and records the session server-side, both once: a
    /// repeat of the code gets the first answer, unless the account has logged out since the
    /// exchange, which ended the sign-in the code began: the code is then answered as WeChat
    /// answers a spent one (`WechatCodeUsed`). A code whose session could not be recorded is not
    /// remembered, so a retry does both again. The write that records the session also reads the
    /// openid's account, from pages the writer holds: read on the worker after that commit, it
    /// would cost a new read transaction with an emptied page cache.
    fn exchange_code(&self, code: &str) -> Result<Exchanged, Error> {
        let mut exchanged = None;
        let keep_session_key = self.config.expose_session_key;
        let key = codes::key(self.appid(), code);
        let answer = self.codes.exchange(key, self.now, keep_session_key, || {
            let session = self.app.wechat.code_to_session(code)?;
            let (appid, openid) = (self.appid().to_string(), session.openid.clone());
            let record = WechatSession {
                unionid: session.unionid.clone(),
                session_key: session.session_key.clone(),
                created_at: self.now,
            };
            // Visible to every worker before the answer; not worth an fsync of its own, as the
            // next wx.login code records it again (see Writer::run_visible). The session and the
            // answer remembered for the code get the token version the account has in this write,
            // so a logout is either before both or after both.
            let found = self.writer.run_visible(move |connection| {
                store::save_wechat_session(connection, &appid, &openid, &record)?;
                store::account_by_openid(connection, &appid, &openid)
            })?;
            let version = token_version(found.as_ref());
            exchanged = Some(found);
            Ok((session, version))
        })?;
        let account = match exchanged {
            Some(account) => account,
            None => {
                // Answered from memory: a logout since the exchange ended what the code began.
                let account = store::account_by_openid(self.db, self.appid(), &answer.openid)?;
                if token_version(account.as_ref()) != answer.token_version {
                    return Err(Error::WechatCodeUsed);
                }
                account
            }
        };
        Ok(Exchanged { answer, account })
    }

    /// In one durable write: the account `known_id`, or the one for `openid` (created if absent),
    /// gets `change` (a registration, or a login's profile fields) and this login's bookkeeping;
    /// the answer is the account as committed, with a token (`Writer::write_account`). The
    /// account is read back in the write, from pages the writer has just changed and still holds:
    /// read on the worker's connection after the commit it would cost a new read transaction,
    /// which empties that connection's page cache after every commit and reads the pages again
    /// from the file.
    ///
    /// `sign_in` is what let the request in: the write refuses the login if the account has
    /// logged out since (`admitted`).
    fn write_account(
        &self,
        known_id: Option<i64>,
        openid: String,
        sign_in: SignIn,
        change: AccountChange,
    ) -> Result<SessionAnswer, Error> {
        let write = IdentityWrite {
            appid: self.appid().to_string(),
            openid: openid.clone(),
            ip: self.client_ip(),
            now: self.now,
            change,
        };
        let account = self.writer.write_account(known_id, write, move |account| {
            admitted(account, openid.clone(), sign_in)
        })?;
        let token = self.issue_token(&account);
        Ok(SessionAnswer { account, token })
    }

    /// Sets the login bookkeeping on `account` as the answer shows it, and queues its write.
    fn note_login(&self, mut account: Account) -> Account {
        let (id, ip, now) = (account.id, self.client_ip(), self.now);
        account.last_login = Some(now);
        account.last_ip = Some(ip.clone());
        self.writer.note_login(id, ip, now);
        account
    }
}

/// `account` as the app of `appid` shows it: with the openid of its identity there in
/// `wx_openid` (an account joined through another app keeps its first identity's there).
fn seen_in(db: &Connection, mut account: Account, appid: &str) -> Result<Account, Error> {
    if account.wx_appid != appid
        && let Some(openid) = store::openid_in_app(db, account.id, appid)?
    {
        account.wx_openid = openid;
    }
    Ok(account)
}

/// What `Ctx::exchange_code` learnt.
struct Exchanged {
    answer: CodeAnswer,
    /// The openid's account, or `None` when it has none: as of the write that recorded the
    /// session, or as the worker reads it now for a code answered from memory.
    account: Option<Account>,
}

/// The token version of `account`, 0 when there is none, as a recorded session or a remembered
/// code answer holds it.
fn token_version(account: Option<&Account>) -> i64 {
    account.map_or(0, |account| account.token_version)
}

/// What let a request in that a write then answers with a new token: checked again in that write
/// (`admitted`), since a logout committed between the check on the worker and the write
/// ends that sign-in too.
#[derive(Debug, Clone, Copy)]
enum SignIn {
    /// A token, issued at this token version of its account.
    Token(i64),
    /// A WeChat session recorded at this token version (`Ctx::check_openid_login`).
    Session(i64),
    /// The `open` policy: a bare openid, which no logout ends.
    Open,
}

impl SignIn {
    /// What `Ctx::check_openid_login` returned.
    fn by_openid(session_version: Option<i64>) -> SignIn {
        session_version.map_or(SignIn::Open, SignIn::Session)
    }
}

/// Refuses an account the operator has disabled (`wxauth users disable`). Checked wherever a token
/// is verified, and in the write that would issue a token, so that a disable committed between a
/// request's checks and that write still refuses it: the write then rolls back.
fn enabled(account: &Account) -> Result<(), Error> {
    match account.disabled_at {
        Some(_) => Err(Error::AccountDisabled),
        None => Ok(()),
    }
}

/// The account as written, in the write that issues its token (`login`, `register`), checked
/// once more there and shown with this app's openid (the one logged in by, or the token's
/// account's as this app shows it). It is refused if the operator disabled it, or if its logout
/// ended the request's sign-in since that was checked: a token then gets `TokenRevoked`, as it
/// would on its next use, and a WeChat session `OpenidLoginRefused`.
fn admitted(mut account: Account, openid: String, sign_in: SignIn) -> Result<Account, Error> {
    enabled(&account)?;
    match sign_in {
        SignIn::Token(version) if version != account.token_version => Err(Error::TokenRevoked),
        SignIn::Session(version) if version != account.token_version => {
            Err(Error::OpenidLoginRefused)
        }
        _ => {
            account.wx_openid = openid;
            Ok(account)
        }
    }
}

/// `GET get_openid_by_code?code=…`. The code of a disabled account's user is refused
/// (`account_disabled`) rather than answered without a token, so that the client can say why;
/// the WeChat session it began is recorded all the same.
pub(crate) fn get_openid_by_code(ctx: &Ctx, code: Option<&str>) -> Result<OpenidAnswer, Error> {
    let code = required(code, "code")?;
    check_code(code, "code")?;
    ctx.rate_limit()?;
    let Exchanged { answer: session, mut account } = ctx.exchange_code(code)?;
    if let Some(account) = &mut account {
        enabled(account)?;
        account.wx_openid = session.openid.clone();
    }
    Ok(OpenidAnswer {
        is_registered: account.as_ref().is_some_and(|account| account.is_register),
        token: account.as_ref().map(|account| ctx.issue_token(account)),
        account,
        openid: session.openid,
        unionid: session.unionid,
        // Kept only when exposed (RecentCodes::exchange); checked here too, as this is the door:
        // a code remembered before a reload turned exposing off still holds its key.
        session_key: session.session_key.filter(|_| ctx.config.expose_session_key),
    })
}

/// `GET is_openid_registered?openid=…`
pub(crate) fn is_openid_registered(
    ctx: &Ctx,
    openid: Option<&str>,
) -> Result<RegisteredAnswer, Error> {
    let openid = required(openid, "openid")?;
    check_openid(openid)?;
    let is_registered = store::is_registered(ctx.db, ctx.appid(), openid)?.unwrap_or(false);
    Ok(RegisteredAnswer { is_registered })
}

/// The body of `POST login`, every field checked (`TryFrom` the parsed JSON object or form).
#[derive(Debug)]
pub(crate) struct LoginBody {
    /// A well-formed openid, to log in by under the openid login policy.
    pub(crate) openid: Option<String>,
    /// The session_key the client got, for the `session_key` policy.
    pub(crate) session_key: Option<String>,
    /// The profile fields sent, to write onto the account.
    pub(crate) profile: Profile,
}

impl TryFrom<Map<String, Value>> for LoginBody {
    type Error = Error;

    /// Checks the fields in a fixed order, so a body with several bad fields is always refused
    /// naming the same one.
    fn try_from(body: Map<String, Value>) -> Result<LoginBody, Error> {
        Ok(LoginBody {
            openid: optional_openid(&body)?,
            session_key: text(&body, "session_key", MAX_SESSION_KEY)?,
            profile: Profile {
                wx_nickname: text(&body, "wx_nickname", MAX_NICKNAME)?,
                wx_avatar: web_url(&body, "wx_avatar", MAX_AVATAR)?,
                wx_gender: gender(&body, "wx_gender")?,
                wx_country: text(&body, "wx_country", MAX_REGION)?,
                wx_province: text(&body, "wx_province", MAX_REGION)?,
                wx_city: text(&body, "wx_city", MAX_REGION)?,
                phone: phone(&body, "phone")?,
            },
        })
    }
}

/// `POST login`: by token, else by openid under the openid login policy. A bare token login is
/// answered without waiting for a write (its bookkeeping need not be on disk first); a login that
/// writes the account (creating it, or with profile fields) waits for its durable write, like
/// `register`.
pub(crate) fn login(
    ctx: &Ctx,
    authorization: Option<&str>,
    body: LoginBody,
) -> Result<SessionAnswer, Error> {
    let LoginBody { openid, session_key, profile } = body;
    if let Some(account) = ctx.token_account(authorization, openid.is_some())? {
        // Profile fields sent with a token update the token's account, durably; a bare token
        // login only needs its bookkeeping, which may complete after the answer.
        if profile.is_empty() {
            let account = ctx.note_login(account);
            let token = ctx.issue_token(&account);
            return Ok(SessionAnswer { account, token });
        }
        let openid = account.wx_openid.clone();
        return ctx.write_account(
            Some(account.id),
            openid,
            SignIn::Token(account.token_version),
            AccountChange::Login(profile),
        );
    }
    let openid = openid.ok_or(Error::NotAuthenticated)?;
    let sign_in = SignIn::by_openid(ctx.check_openid_login(&openid, session_key.as_deref())?);
    ctx.rate_limit()?;
    ctx.write_account(None, openid, sign_in, AccountChange::Login(profile))
}

/// The answer of `logout`.
#[derive(Debug, Serialize)]
pub(crate) struct LogoutAnswer {
    pub(crate) logged_out: bool,
}

/// `POST logout`: revokes every token issued to the token's account until now, this one included,
/// and so ends the sign-in that produced them: the account's recorded WeChat session and the
/// codes answered before now carry an older token version, and give no token any more
/// (`Ctx::check_openid_login`, `Ctx::exchange_code`). A new `wx.login` code signs in again.
pub(crate) fn logout(ctx: &Ctx, authorization: Option<&str>) -> Result<LogoutAnswer, Error> {
    let header = authorization.ok_or(Error::NotAuthenticated)?;
    let (account, _, _) = ctx.verified_token(header, std::slice::from_ref(ctx.app))?;
    let id = account.id;
    let revoked = ctx.writer.run(move |connection| store::revoke_tokens(connection, id))?;
    if !revoked {
        return Err(Error::TokenInvalid);
    }
    Ok(LogoutAnswer { logged_out: true })
}

/// The answer of `verify`.
#[derive(Debug, Serialize)]
pub(crate) struct VerifyAnswer {
    /// The account the token names (its `sub`).
    pub(crate) user_id: i64,
    /// The token's `exp`, as account times are written (`yyyy-mm-dd HH:MM:SS`, UTC).
    pub(crate) expires_at: String,
    /// The token's `exp`, Unix seconds.
    pub(crate) exp: i64,
    /// The app whose token it is (`default` or NAME): its audience is the token's `aud`.
    pub(crate) app: String,
}

/// `GET verify`: is this token good right now, and whose is it. For other services and for
/// nginx's `auth_request`, so it must stay cheap and silent: no rate limit (a subrequest comes
/// from the proxy's address for every client), no body, and no write, not even login
/// bookkeeping. Missing `Authorization` is `not_authenticated`; any other failure is the token
/// error the other endpoints give (the router answers all of them with 401 here).
///
/// It accepts the token of any app, whichever app's prefix it is asked under, and names the app:
/// a service behind several mini-programs checks any of their tokens in one call.
pub(crate) fn verify(ctx: &Ctx, authorization: Option<&str>) -> Result<VerifyAnswer, Error> {
    let header = authorization.ok_or(Error::NotAuthenticated)?;
    let (account, claims, app) = ctx.verified_token(header, ctx.apps)?;
    Ok(VerifyAnswer {
        user_id: account.id,
        expires_at: crate::time::format_datetime(claims.exp),
        exp: claims.exp,
        app: app.name.clone(),
    })
}

/// `GET me`: the token's account, as login shows it, without login's bookkeeping.
pub(crate) fn me(ctx: &Ctx, authorization: Option<&str>) -> Result<Account, Error> {
    ctx.account_from_token(authorization.ok_or(Error::NotAuthenticated)?)
}

/// Where a registration's phone number comes from.
#[derive(Debug)]
pub(crate) enum PhoneSource {
    /// A number the user typed, normalised.
    Typed(String),
    /// WeChat's legacy encrypted phone data and its iv, decrypted with the recorded session_key.
    Encrypted { data: String, iv: String },
    /// A one-tap phone code, for WeChat to answer with the number.
    Code(String),
}

/// The body of `POST register`, every field checked (`TryFrom` the parsed JSON object or form).
#[derive(Debug)]
pub(crate) struct RegisterBody {
    /// A well-formed openid, to name the account by under the openid login policy.
    pub(crate) openid: Option<String>,
    /// The session_key the client got, for the `session_key` policy and encrypted data.
    pub(crate) session_key: Option<String>,
    /// A fresh `wx.login` code, to refresh the session_key encrypted data needs.
    pub(crate) code: Option<String>,
    /// The first of `phone`, `encrypted_phone` (with `iv`) and `phone_code` sent.
    pub(crate) phone: PhoneSource,
    pub(crate) nickname: Option<String>,
    /// A date that exists, `yyyy-mm-dd`.
    pub(crate) birthday: Option<String>,
    pub(crate) gender: Option<i64>,
}

impl TryFrom<Map<String, Value>> for RegisterBody {
    type Error = Error;

    /// Checks the fields in a fixed order, as `LoginBody` does; of the phone's sources only the
    /// one used is checked.
    fn try_from(body: Map<String, Value>) -> Result<RegisterBody, Error> {
        let openid = optional_openid(&body)?;
        let session_key = text(&body, "session_key", MAX_SESSION_KEY)?;
        let code = text(&body, "code", MAX_CODE)?;
        if let Some(code) = &code {
            check_code(code, "code")?;
        }
        let phone = if let Some(phone) = phone(&body, "phone")? {
            PhoneSource::Typed(phone)
        } else if let Some(data) = text(&body, "encrypted_phone", MAX_ENCRYPTED)? {
            let iv = text(&body, "iv", MAX_SESSION_KEY)?.ok_or(Error::MissingParameter("iv"))?;
            PhoneSource::Encrypted { data, iv }
        } else if let Some(phone_code) = text(&body, "phone_code", MAX_CODE)? {
            check_code(&phone_code, "phone_code")?;
            PhoneSource::Code(phone_code)
        } else {
            return Err(Error::MissingParameter("phone"));
        };
        let nickname = text(&body, "nickname", MAX_NICKNAME)?;
        let birthday = text(&body, "birthday", 10)?;
        if birthday.as_deref().is_some_and(|birthday| !crate::time::is_valid_date(birthday)) {
            return Err(Error::InvalidParameter("birthday 须为存在的日期 yyyy-mm-dd".into()));
        }
        let gender = gender(&body, "gender")?;
        Ok(RegisterBody { openid, session_key, code, phone, nickname, birthday, gender })
    }
}

/// `POST register`: a phone (typed, legacy encrypted, or phone code) onto the account named by a
/// token or, under the openid login policy, by openid. Everything else (WeChat included) happens
/// before the write; the answer waits for the write to be durable.
pub(crate) fn register(
    ctx: &Ctx,
    authorization: Option<&str>,
    body: RegisterBody,
) -> Result<SessionAnswer, Error> {
    let RegisterBody {
        openid,
        session_key: client_session_key,
        code,
        phone: source,
        nickname: wx_nickname,
        birthday,
        gender: wx_gender,
    } = body;
    let token_account = ctx.token_account(authorization, openid.is_some())?;
    let openid = match (&token_account, openid) {
        (Some(account), Some(openid)) if account.wx_openid != openid => {
            return Err(Error::InvalidParameter("openid 与 token 的账号不符".into()));
        }
        (Some(account), _) => account.wx_openid.clone(),
        (None, Some(openid)) => openid,
        (None, None) => return Err(Error::NotAuthenticated),
    };
    ctx.rate_limit()?;
    if let (PhoneSource::Encrypted { .. }, Some(code)) = (&source, &code) {
        // A fresh wx.login code refreshes the session_key the data was encrypted with.
        let session = ctx.exchange_code(code)?.answer;
        if session.openid != openid {
            return Err(Error::InvalidParameter("code 不属于该 openid 的用户".into()));
        }
    }
    let sign_in = match &token_account {
        None => SignIn::by_openid(ctx.check_openid_login(&openid, client_session_key.as_deref())?),
        Some(account) => SignIn::Token(account.token_version),
    };
    let phone = match source {
        PhoneSource::Typed(phone) => phone,
        PhoneSource::Encrypted { data, iv } => {
            let session = store::wechat_session(ctx.db, ctx.appid(), &openid)?
                .ok_or(Error::SessionExpired)?
                .session;
            if client_session_key.is_some_and(|given| !same_secret(&given, &session.session_key)) {
                return Err(Error::SessionExpired);
            }
            let info = wxcrypt::decrypt_phone(&session.session_key, &iv, &data, ctx.appid())?;
            normalize_phone(&info.phone_number)
                .ok_or_else(|| Error::InvalidParameter("解密得到的手机号格式不正确".into()))?
        }
        PhoneSource::Code(phone_code) => {
            let number = ctx.app.wechat.phone_number(&phone_code)?;
            if number.watermark_appid != ctx.appid() {
                return Err(Error::WatermarkMismatch);
            }
            normalize_phone(&number.phone_number)
                .ok_or_else(|| Error::InvalidParameter("微信返回的手机号格式不正确".into()))?
        }
    };
    let registration =
        Registration { phone, username: openid.clone(), wx_nickname, birthday, wx_gender };
    let known_id = token_account.map(|account| account.id);
    ctx.write_account(known_id, openid, sign_in, AccountChange::Register(registration))
}

/// The token of `Authorization: jwt|JWT|Bearer <token>` (scheme case-insensitive, one space).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let known = scheme.eq_ignore_ascii_case("jwt") || scheme.eq_ignore_ascii_case("bearer");
    (known && !token.is_empty() && !token.contains(' ')).then_some(token)
}

/// The account id a token's `sub` names: only the decimal wxauth writes for an id (digits, no
/// sign, no leading zero, greater than 0, within i64). `str::parse` would take "01" and "+1" too,
/// giving one account several subjects, which a service comparing `sub` as text tells apart.
fn account_id(sub: &str) -> Option<i64> {
    if sub.starts_with('0') || !sub.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    // Refuses "" and what is beyond i64.
    sub.parse().ok()
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    given.len() == expected.len()
        && given.iter().zip(expected).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

fn required<'a>(value: Option<&'a str>, name: &'static str) -> Result<&'a str, Error> {
    value.filter(|value| !value.is_empty()).ok_or(Error::MissingParameter(name))
}

/// A code from the WeChat client: printable ASCII without spaces, of sane length.
fn check_code(code: &str, name: &str) -> Result<(), Error> {
    let plain = code.len() <= MAX_CODE && code.bytes().all(|byte| byte.is_ascii_graphic());
    if plain { Ok(()) } else { Err(Error::InvalidParameter(format!("{name} 格式不正确"))) }
}

/// An openid: letters, digits, `-` and `_`, at most 64.
fn check_openid(openid: &str) -> Result<(), Error> {
    if is_openid(openid) {
        Ok(())
    } else {
        Err(Error::InvalidParameter("openid 格式不正确".into()))
    }
}

/// Letters, digits, `-` and `_`, at most 64: an openid (or unionid) as WeChat gives them.
pub(crate) fn is_openid(openid: &str) -> bool {
    openid.len() <= MAX_OPENID
        && openid.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

fn optional_openid(body: &Map<String, Value>) -> Result<Option<String>, Error> {
    let openid = text(body, "openid", MAX_OPENID)?;
    if let Some(openid) = &openid {
        check_openid(openid)?;
    }
    Ok(openid)
}

/// A string field: absent, null and "" are `None`; anything but a string is refused, as is text
/// longer than `max` characters or with control characters.
fn text(body: &Map<String, Value>, key: &'static str, max: usize) -> Result<Option<String>, Error> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => {
            if text.chars().count() > max {
                Err(Error::InvalidParameter(format!("{key} 过长 (最多 {max} 个字符)")))
            } else if text.chars().any(char::is_control) {
                Err(Error::InvalidParameter(format!("{key} 含有控制字符")))
            } else {
                Ok(Some(text.clone()))
            }
        }
        Some(_) => Err(Error::InvalidParameter(format!("{key} 须为字符串"))),
    }
}

/// A URL field, such as an avatar, that pages show as a link or an image: absent, null and "" are
/// `None` as in `text`; anything else must be an `http://` or `https://` URL (the scheme in any
/// case) with a host after the `//` and no whitespace or control character. `javascript:` or
/// `data:` would run in the page, and a scheme-relative `//host` would take the page's scheme.
fn web_url(
    body: &Map<String, Value>,
    key: &'static str,
    max: usize,
) -> Result<Option<String>, Error> {
    let url = text(body, key, max)?;
    match &url {
        Some(url) if !is_web_url(url) => {
            Err(Error::InvalidParameter(format!("{key} 须为 http:// 或 https:// 网址")))
        }
        _ => Ok(url),
    }
}

pub(crate) fn is_web_url(url: &str) -> bool {
    let after_scheme = ["http://", "https://"].into_iter().find_map(|scheme| {
        let head = url.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then(|| &url[scheme.len()..])
    });
    let plain = !url.chars().any(|character| character.is_whitespace() || character.is_control());
    // A host right after the `//`: browsers read "https:///x" and "https://\\x" as "https://x/",
    // other parsers differently.
    after_scheme.is_some_and(|rest| !rest.is_empty() && !rest.starts_with(['/', '\\', '?', '#']))
        && plain
}

/// A gender: 0 unknown, 1 male, 2 female; as a number or a numeric string (form bodies).
fn gender(body: &Map<String, Value>, key: &'static str) -> Result<Option<i64>, Error> {
    let value = match body.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) if text.is_empty() => return Ok(None),
        Some(Value::Number(number)) => number.as_i64(),
        Some(Value::String(text)) => text.parse().ok(),
        Some(_) => None,
    };
    match value {
        Some(gender @ 0..=2) => Ok(Some(gender)),
        _ => Err(Error::InvalidParameter(format!("{key} 须为 0, 1 或 2"))),
    }
}

/// A typed phone number, normalised; numbers are accepted as JSON numbers too.
fn phone(body: &Map<String, Value>, key: &'static str) -> Result<Option<String>, Error> {
    let raw = match body.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) if text.is_empty() => return Ok(None),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) if number.is_u64() => number.to_string(),
        Some(_) => return Err(Error::InvalidParameter(format!("{key} 须为字符串"))),
    };
    normalize_phone(&raw)
        .map(Some)
        .ok_or_else(|| Error::InvalidParameter(format!("{key} 不是有效的手机号")))
}

/// Removes spaces and dashes; the rest must be digits with an optional leading `+`, 5 to 20
/// characters in all.
pub(crate) fn normalize_phone(raw: &str) -> Option<String> {
    if raw.len() > 64 {
        return None;
    }
    let phone: String =
        raw.chars().filter(|character| *character != ' ' && *character != '-').collect();
    let digits = phone.strip_prefix('+').unwrap_or(&phone);
    let valid = (5..=20).contains(&phone.len())
        && !digits.is_empty()
        && digits.bytes().all(|byte| byte.is_ascii_digit());
    valid.then_some(phone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_normalised_or_refused() {
        assert_eq!(normalize_phone("138 0013-8000").as_deref(), Some("13800138000"));
        assert_eq!(normalize_phone("+86 138 0013 8000").as_deref(), Some("+8613800138000"));
        assert_eq!(normalize_phone("12345").as_deref(), Some("12345"));
        for bad in [
            "1234",
            "+123",
            "abc12345",
            "1380013800O",
            "++8613800138000",
            "123456789012345678901",
            "1+3800138000",
            "",
        ] {
            assert_eq!(normalize_phone(bad), None, "{bad}");
        }
    }

    #[test]
    fn authorization_schemes() {
        assert_eq!(bearer_token("jwt abc"), Some("abc"));
        assert_eq!(bearer_token("JWT abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bEaReR abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("jwt  abc"), None);
        assert_eq!(bearer_token("jwt"), None);
        assert_eq!(bearer_token("jwtabc"), None);
    }

    #[test]
    fn field_types_are_checked() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"a": "x", "b": 3, "g1": 1, "g2": "2", "g3": 3, "g4": "male", "p": 13800138000, "e": ""}"#,
        )
        .unwrap();
        assert_eq!(text(&body, "a", 5).unwrap().as_deref(), Some("x"));
        assert!(text(&body, "b", 5).is_err());
        assert_eq!(text(&body, "e", 5).unwrap(), None);
        assert_eq!(text(&body, "missing", 5).unwrap(), None);
        assert!(text(&body, "a", 0).is_err());
        assert_eq!(gender(&body, "g1").unwrap(), Some(1));
        assert_eq!(gender(&body, "g2").unwrap(), Some(2));
        assert!(gender(&body, "g3").is_err());
        assert!(gender(&body, "g4").is_err());
        assert_eq!(phone(&body, "p").unwrap().as_deref(), Some("13800138000"));
    }

    #[test]
    fn bodies_are_parsed_whole_in_a_fixed_order() {
        let object = |text: &str| -> Map<String, Value> { serde_json::from_str(text).unwrap() };
        let login = LoginBody::try_from(object(
            r#"{"openid": "o-1", "wx_gender": "2", "phone": 13800138000, "wx_city": "", "x": [1]}"#,
        ))
        .unwrap();
        assert_eq!(login.openid.as_deref(), Some("o-1"));
        assert_eq!(login.profile.wx_gender, Some(2));
        assert_eq!(login.profile.phone.as_deref(), Some("13800138000"));
        assert_eq!(login.profile.wx_city, None);
        // Of two bad fields the first in the fixed order is named, whatever the body's order.
        let error =
            LoginBody::try_from(object(r#"{"wx_city": 1, "openid": "an openid"}"#)).unwrap_err();
        assert_eq!(error.detail(), "参数错误: openid 格式不正确");

        // Of the phone's sources only the one used is checked.
        let register = RegisterBody::try_from(object(
            r#"{"phone": "138 0013-8000", "encrypted_phone": 5, "birthday": "2000-02-29"}"#,
        ))
        .unwrap();
        assert!(matches!(register.phone, PhoneSource::Typed(ref phone) if phone == "13800138000"));
        assert_eq!(register.birthday.as_deref(), Some("2000-02-29"));
        let register =
            RegisterBody::try_from(object(r#"{"phone_code": "abc", "gender": 1}"#)).unwrap();
        assert!(matches!(register.phone, PhoneSource::Code(ref code) if code == "abc"));
        let missing = |text| RegisterBody::try_from(object(text)).unwrap_err().detail();
        assert_eq!(missing(r#"{"encrypted_phone": "abc"}"#), "缺少参数: iv");
        assert_eq!(missing(r#"{"nickname": "x", "phone": ""}"#), "缺少参数: phone");
        assert_eq!(
            missing(r#"{"phone": "13800138000", "birthday": "2001-02-29"}"#),
            "参数错误: birthday 须为存在的日期 yyyy-mm-dd"
        );
    }

    #[test]
    fn only_the_canonical_decimal_of_an_id_is_an_account_id() {
        assert_eq!(account_id("1"), Some(1));
        assert_eq!(account_id("42"), Some(42));
        assert_eq!(account_id("9223372036854775807"), Some(i64::MAX));
        for sub in [
            "",
            "0",
            "01",
            "00",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "1e0",
            "0x1",
            "１",
            "9223372036854775808",
        ] {
            assert_eq!(account_id(sub), None, "{sub:?}");
        }
    }

    #[test]
    fn web_urls_are_http_or_https_with_a_host() {
        for good in [
            "https://thirdwx.qlogo.cn/mmopen/x/132",
            "http://a",
            "HTTPS://example.com",
            "hTtP://example.com:8080/a?b=c#d",
            "https://例子.测试/头像.png",
        ] {
            assert!(is_web_url(good), "{good:?}");
        }
        for bad in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "//evil.example/x",
            "https:",
            "https:/x",
            "https://",
            "https:///x",
            "https://\\x",
            "https://?x",
            "ftp://example.com",
            "httpx://example.com",
            " https://example.com",
            "https://example.com/a b",
            "https://example.com/\u{3000}",
            "https://example.com/\n",
            "",
            "h",
            "登录://x",
        ] {
            assert!(!is_web_url(bad), "{bad:?}");
        }
        let body: Map<String, Value> =
            serde_json::from_str(r#"{"empty": "", "null": null, "bad": "javascript:x"}"#).unwrap();
        assert_eq!(web_url(&body, "empty", 10).unwrap(), None);
        assert_eq!(web_url(&body, "null", 10).unwrap(), None);
        assert_eq!(web_url(&body, "missing", 10).unwrap(), None);
        assert!(matches!(web_url(&body, "bad", 100), Err(Error::InvalidParameter(_))));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }
}
