//! The demo page: a page that plays a mini-program against this server and its fake WeChat
//! (`GET /`, `/demo/`, with `/demo/app.js` and `/demo/style.css`), and the few helpers it calls
//! under `/demo/api/` to have the fake play the WeChat client (`wx.login`, one-tap phone data) and
//! to show what the fake was asked.
//!
//! Served only when `Config::demo_page` holds (demo mode, or `demo.page` against a fake on
//! loopback); otherwise `handle` declines every path and the router answers 404, so nothing here
//! is reachable in production. The page, its script and its style are embedded in the binary and
//! load nothing from anywhere else: the Content-Security-Policy allows this server only, and no
//! inline script or style. The page renders every value the server returns as text. The helpers
//! reach the fake through `wechat::WeChat::fake_helper` only, with fixed paths and the parameters
//! named here.

use std::net::SocketAddr;

use serde_json::json;

use crate::api::Ctx;
use crate::error::Error;
use crate::router::{self, Reply};

const PAGE: &str = include_str!("demo/index.html");
const SCRIPT: &str = include_str!("demo/app.js");
const STYLE: &str = include_str!("demo/style.css");

/// Only this server, and no inline script or style: the page's data is never markup.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The demo users the page offers (any name is one: docs/fake-wechat.md).
const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// The page's URL for a server listening on `address`: an unspecified address (all interfaces)
/// is reached on loopback.
pub(crate) fn page_url(address: SocketAddr) -> String {
    let mut address = address;
    if address.ip().is_unspecified() {
        let loopback = match address {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        address.set_ip(loopback);
    }
    format!("http://{address}/")
}

/// The page, its files and its helpers; `None` for any other path, and for every path when the
/// page is not served.
pub(crate) fn handle(ctx: &Ctx, method: &str, path: &str, query: &str) -> Option<Reply> {
    if !ctx.config.demo_page() {
        return None;
    }
    let file = match path {
        "/" | "/demo" | "/demo/" => Some((PAGE, "text/html; charset=utf-8")),
        "/demo/app.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "/demo/style.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    };
    let helper = path.strip_prefix("/demo/api/");
    if file.is_none() && helper.is_none() {
        return None;
    }
    let mut reply = if method != "GET" && method != "HEAD" {
        router::failure(&Error::MethodNotAllowed("GET"))
    } else if let Some((body, content_type)) = file {
        let headers = vec![("Content-Type", content_type.to_string())];
        Reply { status: 200, body: body.to_string(), headers, error: None, log: None }
    } else {
        helper
            .and_then(|name| helper_reply(ctx, name, query))
            .unwrap_or_else(|| router::failure(&Error::NotFound))
    };
    reply.headers.extend([
        ("Content-Security-Policy", CSP.to_string()),
        ("X-Content-Type-Options", "nosniff".to_string()),
        ("Referrer-Policy", "no-referrer".to_string()),
    ]);
    Some(reply)
}

/// A helper's answer: the fake's own JSON and status, or the failure envelope. `None` for an
/// unknown helper.
fn helper_reply(ctx: &Ctx, name: &str, query: &str) -> Option<Reply> {
    let result = match name {
        "info" => router::success(&json!({
            "prefix": ctx.app.prefix,
            "appid": ctx.app.wechat.appid(),
            "users": USERS,
            // Every app, the default first, for the page to play any of them.
            "apps": ctx.apps.iter().map(|app| json!({
                "name": app.name,
                "prefix": app.prefix,
                "appid": app.wechat.appid(),
            })).collect::<Vec<_>>(),
        })),
        "wx_login" => fake(ctx, "/fake/wx_login", query, &["user"]),
        "encrypt_phone" => fake(ctx, "/fake/encrypted_phone", query, &["openid", "phone"]),
        "phone_code" => fake(ctx, "/fake/phone_code", query, &["phone"]),
        "wechat_log" => fake(ctx, "/fake/log", query, &["after"]),
        _ => return None,
    };
    Some(result.unwrap_or_else(|error| router::failure(&error)))
}

/// Asks the fake's helper at `path` with the parameters `names` taken from `query` (any other is
/// dropped: the page cannot reach the fake's switches through here).
fn fake(ctx: &Ctx, path: &'static str, query: &str, names: &[&str]) -> Result<Reply, Error> {
    let mut pairs = Vec::new();
    for name in names {
        if let Some(value) = router::query_value(query, name)? {
            pairs.push((*name, value));
        }
    }
    let pairs: Vec<(&str, &str)> =
        pairs.iter().map(|(name, value)| (*name, value.as_str())).collect();
    // The fake is one for every app: the helpers need no app of their own.
    let (status, answer) = ctx.app.wechat.fake_helper(path, &pairs)?;
    Ok(Reply { status, body: answer.to_string(), headers: Vec::new(), error: None, log: None })
}
