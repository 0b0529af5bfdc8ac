//! The numbers behind `GET /metrics`: counters and latency histograms kept in std atomics, and
//! their Prometheus text exposition (format 0.0.4).
//!
//! Recording is a few relaxed atomic additions into fixed arrays, never a lock or an allocation,
//! so it costs the hot path nothing worth measuring. Every label value comes from a fixed list:
//! the routes from the router's own (`router::Route::ALL` and `router::Operation::ALL`), the
//! statuses, WeChat APIs and outcomes from here, the apps (`app`, `default` or an `[apps.NAME]`'s
//! NAME) from the configuration, each in a slot of its own (its place in the server's list, at
//! most `APP_SLOTS`). A path nobody routes is `other`, a status not listed is `other`, so no
//! client can grow the label set. The two account gauges are not
//! kept here: a scrape counts them in SQLite (`store::account_counts`, a scan of the accounts
//! table), at most once every `ACCOUNTS_COUNTED_EVERY`; scrapes in between reuse the last count.
//!
//! A scrape also reports, read when it is made, the sizes of the database file and its WAL and
//! the standard `process_…` metrics from /proc/self (Linux only).
//!
//! There is one `Metrics`, the static `METRICS`, because calls to WeChat and rate-limit refusals
//! are recorded deep inside `wechat` and `ratelimit`, where passing a handle would widen every
//! constructor for a counter. Unit tests make their own `Metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::MOST_APPS;
use crate::router::{Operation, Route};
use crate::store::{AccountCounts, Connection};
use crate::wechat::ERRCODES;

/// The process's metrics.
pub(crate) static METRICS: Metrics = Metrics::new();

/// How long one count of the accounts serves scrapes. Counting scans the accounts table, and
/// nothing limits how often `/metrics` is asked (several Prometheus servers, a dashboard, a loop),
/// so the count is reused rather than made again at every scrape.
const ACCOUNTS_COUNTED_EVERY: Duration = Duration::from_secs(15);

/// The last count of the accounts, shared by every worker's scrapes.
static ACCOUNT_COUNT: Mutex<Option<Counted>> = Mutex::new(None);

/// Route labels: the API's endpoints (`router::Route::ALL`, without the prefix), the operator's
/// (`router::Operation::ALL`, without the `/`), and `other` for everything else (any 404,
/// whatever its path).
const ROUTES: [&str; PROBES.end + 1] = route_labels();

/// How many of `ROUTES`, from the first, are the API's endpoints (under the prefix).
const API_ROUTES: usize = Route::ALL.len();

/// Where the operator's endpoints are in `ROUTES`.
const PROBES: std::ops::Range<usize> = API_ROUTES..API_ROUTES + Operation::ALL.len();

/// `ROUTES`, from the router's lists, made once at compile time.
const fn route_labels() -> [&'static str; PROBES.end + 1] {
    let mut labels = ["other"; PROBES.end + 1];
    let mut index = 0;
    while index < API_ROUTES {
        labels[index] = Route::ALL[index].name();
        index += 1;
    }
    while index < PROBES.end {
        labels[index] = Operation::ALL[index - API_ROUTES].name();
        index += 1;
    }
    labels
}

/// Status labels: every status wxauth answers (`Error::status`, 401 from `verify`, 503 from an
/// unready `/readyz`, and tiny_http's refusals); any other status is counted as `other`.
const STATUSES: [u16; 16] =
    [200, 400, 401, 403, 404, 405, 408, 413, 414, 417, 429, 431, 500, 502, 503, 505];

/// Upper bounds of the latency buckets, in microseconds, and as the `le` label shows them.
const BUCKETS: [(u64, &str); 14] = [
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
];

/// The WeChat APIs wxauth calls.
const WECHAT_APIS: [&str; 3] = ["jscode2session", "stable_token", "getuserphonenumber"];

/// What one call to WeChat came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WechatOutcome {
    /// errcode 0 or absent.
    Ok,
    /// The errcodes wxauth tells apart, each the outcome of one of `wechat::ERRCODES`.
    InvalidCode,
    CodeUsed,
    RateLimited,
    UserBlocked,
    Busy,
    /// Any other errcode.
    OtherErrcode,
    /// No answer within the timeouts.
    Timeout,
    /// No connection: refused, or the host not found.
    Refused,
    /// The connection broke, or TLS or HTTP failed on it.
    ConnectionError,
    /// An answer that is not HTTP 200 with a JSON object, or is too large.
    BadAnswer,
    /// Not sent: `wechat.max_in_flight` calls were in flight and WeChat was not answering.
    InFlightCap,
}

const WECHAT_OUTCOMES: [WechatOutcome; 12] = [
    WechatOutcome::Ok,
    WechatOutcome::InvalidCode,
    WechatOutcome::CodeUsed,
    WechatOutcome::RateLimited,
    WechatOutcome::UserBlocked,
    WechatOutcome::Busy,
    WechatOutcome::OtherErrcode,
    WechatOutcome::Timeout,
    WechatOutcome::Refused,
    WechatOutcome::ConnectionError,
    WechatOutcome::BadAnswer,
    WechatOutcome::InFlightCap,
];

impl WechatOutcome {
    /// The `outcome` label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            WechatOutcome::Ok => "ok",
            WechatOutcome::InvalidCode => "invalid_code",
            WechatOutcome::CodeUsed => "code_used",
            WechatOutcome::RateLimited => "rate_limited",
            WechatOutcome::UserBlocked => "user_blocked",
            WechatOutcome::Busy => "busy",
            WechatOutcome::OtherErrcode => "other_errcode",
            WechatOutcome::Timeout => "timeout",
            WechatOutcome::Refused => "refused",
            WechatOutcome::ConnectionError => "connection_error",
            WechatOutcome::BadAnswer => "bad_answer",
            WechatOutcome::InFlightCap => "in_flight_cap",
        }
    }

    /// WeChat answered (with an errcode or without): it is reachable, whatever it said.
    pub(crate) fn answered(self) -> bool {
        matches!(self, WechatOutcome::Ok | WechatOutcome::OtherErrcode)
            || ERRCODES.iter().any(|known| known.outcome == self)
    }
}

/// A route label (an index into `ROUTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteLabel(usize);

impl RouteLabel {
    /// The label for a request's path (without its query) and the status it got. A 404 is
    /// `other` whatever the path, so unknown paths never become labels.
    pub(crate) fn of(prefix: &str, path: &str, status: u16) -> RouteLabel {
        let other = RouteLabel(ROUTES.len() - 1);
        if status == 404 {
            return other;
        }
        // The operator's endpoints first, so that they keep their labels with the API at `/`.
        let probe = path.strip_prefix('/');
        if let Some(index) = PROBES.into_iter().find(|index| Some(ROUTES[*index]) == probe) {
            return RouteLabel(index);
        }
        let Some(rest) = path.strip_prefix(prefix) else {
            return other;
        };
        let name = rest.strip_suffix('/').unwrap_or(rest);
        (0..API_ROUTES).find(|index| ROUTES[*index] == name).map_or(other, RouteLabel)
    }

    #[cfg(test)]
    fn name(self) -> &'static str {
        ROUTES[self.0]
    }

    /// `/healthz`, `/readyz` or `/metrics`: asked every few seconds by machines.
    pub(crate) fn is_probe(self) -> bool {
        PROBES.contains(&self.0)
    }
}

type Counters<const N: usize> = [AtomicU64; N];

const fn counters<const N: usize>() -> Counters<N> {
    [const { AtomicU64::new(0) }; N]
}

/// App slots: the default app and each `[apps.NAME]`.
const APP_SLOTS: usize = MOST_APPS + 1;

/// Status slots: one per listed status, and `other`.
const STATUS_SLOTS: usize = STATUSES.len() + 1;
/// Bucket slots: one per bound, and one for slower requests (`+Inf` only).
const BUCKET_SLOTS: usize = BUCKETS.len() + 1;

pub(crate) struct Metrics {
    /// Requests answered by a worker, by app, route and status.
    requests: [[Counters<STATUS_SLOTS>; ROUTES.len()]; APP_SLOTS],
    /// Requests by app, route and the first bucket their duration fits in (not cumulative).
    latency: [[Counters<BUCKET_SLOTS>; ROUTES.len()]; APP_SLOTS],
    /// Sum of request durations by app and route, in microseconds.
    latency_sum: [Counters<{ ROUTES.len() }>; APP_SLOTS],
    /// Requests tiny_http refused before a worker saw them, by status.
    refused: Counters<STATUS_SLOTS>,
    /// Calls to WeChat by app, API and outcome.
    wechat_calls: [[Counters<{ WECHAT_OUTCOMES.len() }>; WECHAT_APIS.len()]; APP_SLOTS],
    /// The last call to WeChat that was sent: Unix seconds << 16 | API << 8 | outcome; 0 before
    /// the first. One word, so a reader never sees the time of one call with another's outcome.
    last_wechat_call: AtomicU64,
    access_token_refreshes: AtomicU64,
    rate_limit_refusals: AtomicU64,
    /// Unix seconds when the server started.
    started: AtomicU64,
}

/// The last call to WeChat, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastWechatCall {
    pub(crate) api: &'static str,
    pub(crate) outcome: WechatOutcome,
    /// Unix seconds.
    pub(crate) at: i64,
}

/// One count of the accounts and when it was made; `None` when the database could not be read.
struct Counted {
    at: Instant,
    counts: Option<AccountCounts>,
}

/// The account counts as of at most `ACCOUNTS_COUNTED_EVERY` before `now`: the last count when
/// it is that recent, else a new one from `count`. The lock is held while counting, so scrapes
/// arriving together wait for one count instead of each scanning the table. A failed count is
/// remembered like any other (the gauges are left out until the next count).
fn recent_counts(
    last: &Mutex<Option<Counted>>,
    now: Instant,
    count: impl FnOnce() -> Option<AccountCounts>,
) -> Option<AccountCounts> {
    let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
    match &*last {
        Some(counted) if now.saturating_duration_since(counted.at) < ACCOUNTS_COUNTED_EVERY => {
            counted.counts
        }
        _ => {
            let counts = count();
            *last = Some(Counted { at: now, counts });
            counts
        }
    }
}

fn add(counter: &AtomicU64, amount: u64) {
    // Relaxed: each counter is independent, and a scrape may see any recent value.
    counter.fetch_add(amount, Ordering::Relaxed);
}

/// The HELP and TYPE lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn status_slot(status: u16) -> usize {
    STATUSES.iter().position(|known| *known == status).unwrap_or(STATUSES.len())
}

fn status_label(slot: usize) -> String {
    STATUSES.get(slot).map_or_else(|| "other".to_string(), u16::to_string)
}

impl Metrics {
    pub(crate) const fn new() -> Metrics {
        Metrics {
            requests: [const { [const { counters() }; ROUTES.len()] }; APP_SLOTS],
            latency: [const { [const { counters() }; ROUTES.len()] }; APP_SLOTS],
            latency_sum: [const { counters() }; APP_SLOTS],
            refused: counters(),
            wechat_calls: [const { [const { counters() }; WECHAT_APIS.len()] }; APP_SLOTS],
            last_wechat_call: AtomicU64::new(0),
            access_token_refreshes: AtomicU64::new(0),
            rate_limit_refusals: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    /// Notes the server's start time.
    pub(crate) fn started(&self, now: i64) {
        self.started.store(now.max(0) as u64, Ordering::Relaxed);
    }

    /// One request answered by a worker, through the app in slot `app`.
    pub(crate) fn request(&self, app: usize, route: RouteLabel, status: u16, duration: Duration) {
        let app = app.min(APP_SLOTS - 1);
        add(&self.requests[app][route.0][status_slot(status)], 1);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let bucket =
            BUCKETS.iter().position(|(bound, _)| micros <= *bound).unwrap_or(BUCKETS.len());
        add(&self.latency[app][route.0][bucket], 1);
        add(&self.latency_sum[app][route.0], micros);
    }

    /// One request head refused by tiny_http (too long, too slow, malformed).
    pub(crate) fn refused(&self, status: u16) {
        add(&self.refused[status_slot(status)], 1);
    }

    /// One call to WeChat (each attempt, so a retried errcode -1 counts twice), or one refused by
    /// the in-flight cap, by the app in slot `app`. `api` is one of `WECHAT_APIS`.
    pub(crate) fn wechat_call(&self, app: usize, api: &str, outcome: WechatOutcome, now: i64) {
        let Some(api_index) = WECHAT_APIS.iter().position(|known| *known == api) else {
            debug_assert!(false, "unknown WeChat API {api}");
            return;
        };
        let outcome_index = WECHAT_OUTCOMES.iter().position(|known| *known == outcome).unwrap_or(0);
        add(&self.wechat_calls[app.min(APP_SLOTS - 1)][api_index][outcome_index], 1);
        if outcome != WechatOutcome::InFlightCap {
            let packed = (now.max(1) as u64) << 16 | (api_index as u64) << 8 | outcome_index as u64;
            self.last_wechat_call.store(packed, Ordering::Relaxed);
        }
    }

    /// The last call sent to WeChat, if any.
    pub(crate) fn last_wechat_call(&self) -> Option<LastWechatCall> {
        let packed = self.last_wechat_call.load(Ordering::Relaxed);
        if packed == 0 {
            return None;
        }
        Some(LastWechatCall {
            api: WECHAT_APIS.get((packed >> 8 & 0xff) as usize)?,
            outcome: *WECHAT_OUTCOMES.get((packed & 0xff) as usize)?,
            at: (packed >> 16) as i64,
        })
    }

    pub(crate) fn access_token_refreshed(&self) {
        add(&self.access_token_refreshes, 1);
    }

    pub(crate) fn rate_limit_refused(&self) {
        add(&self.rate_limit_refusals, 1);
    }

    /// The text exposition, the apps labelled by `apps` (the server's list, by slot). Labelled
    /// series still at zero are left out, series without labels never are; `accounts` is `None`
    /// when the database could not be read (the gauges are then absent).
    pub(crate) fn render(&self, apps: &[&str], accounts: Option<&AccountCounts>) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);

        family(
            &mut out,
            "wxauth_http_requests_total",
            "counter",
            "Requests answered, by route (API endpoint without the prefix, healthz, readyz, metrics, or other for any unknown path), HTTP status and app (the default app also answers the operator's endpoints and unknown paths).",
        );
        for (app, requests) in apps.iter().zip(&self.requests) {
            for (route, statuses) in ROUTES.iter().zip(requests) {
                for (slot, counter) in statuses.iter().enumerate() {
                    let count = load(counter);
                    if count > 0 {
                        let status = status_label(slot);
                        let _ = writeln!(
                            out,
                            "wxauth_http_requests_total{{route=\"{route}\",status=\"{status}\",app=\"{app}\"}} {count}"
                        );
                    }
                }
            }
        }

        family(
            &mut out,
            "wxauth_http_request_duration_seconds",
            "histogram",
            "Time from a worker taking a request to its answer being ready, by route and app.",
        );
        for (slot, app) in apps.iter().enumerate().take(APP_SLOTS) {
            for (index, route) in ROUTES.iter().enumerate() {
                let counts: Vec<u64> = self.latency[slot][index].iter().map(load).collect();
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let labels = format!("route=\"{route}\",app=\"{app}\"");
                let mut cumulative = 0;
                for ((_, le), count) in BUCKETS.iter().zip(&counts) {
                    cumulative += count;
                    let _ = writeln!(
                        out,
                        "wxauth_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let sum = load(&self.latency_sum[slot][index]) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "wxauth_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}\n\
                     wxauth_http_request_duration_seconds_sum{{{labels}}} {sum}\n\
                     wxauth_http_request_duration_seconds_count{{{labels}}} {total}"
                );
            }
        }

        family(
            &mut out,
            "wxauth_http_refused_total",
            "counter",
            "Requests refused before reaching a worker (head too large or too slow, malformed), by HTTP status.",
        );
        for (slot, counter) in self.refused.iter().enumerate() {
            let count = load(counter);
            if count > 0 {
                let status = status_label(slot);
                let _ = writeln!(out, "wxauth_http_refused_total{{status=\"{status}\"}} {count}");
            }
        }

        family(
            &mut out,
            "wxauth_wechat_calls_total",
            "counter",
            "Calls to WeChat by API, outcome and app: ok, an errcode class (invalid_code, code_used, rate_limited, user_blocked, busy, other_errcode), a transport failure (timeout, refused, connection_error, bad_answer), or in_flight_cap (not sent: too many in flight and WeChat not answering).",
        );
        for (app, calls) in apps.iter().zip(&self.wechat_calls) {
            for (api, outcomes) in WECHAT_APIS.iter().zip(calls) {
                for (outcome, counter) in WECHAT_OUTCOMES.iter().zip(outcomes) {
                    let count = load(counter);
                    if count > 0 {
                        let outcome = outcome.name();
                        let _ = writeln!(
                            out,
                            "wxauth_wechat_calls_total{{api=\"{api}\",outcome=\"{outcome}\",app=\"{app}\"}} {count}"
                        );
                    }
                }
            }
        }

        family(
            &mut out,
            "wxauth_wechat_access_token_refreshes_total",
            "counter",
            "Access tokens obtained from WeChat's stable_token.",
        );
        let refreshes = load(&self.access_token_refreshes);
        let _ = writeln!(out, "wxauth_wechat_access_token_refreshes_total {refreshes}");

        family(
            &mut out,
            "wxauth_rate_limit_refusals_total",
            "counter",
            "Requests refused with 429 by the per-address rate limit.",
        );
        let refusals = load(&self.rate_limit_refusals);
        let _ = writeln!(out, "wxauth_rate_limit_refusals_total {refusals}");

        if let Some(gauges) = accounts {
            family(&mut out, "wxauth_accounts", "gauge", "Accounts in the database.");
            let _ = writeln!(out, "wxauth_accounts {}", gauges.accounts);
            family(
                &mut out,
                "wxauth_registered_accounts",
                "gauge",
                "Accounts that completed registration (is_register).",
            );
            let _ = writeln!(out, "wxauth_registered_accounts {}", gauges.registered);
        }

        family(
            &mut out,
            "wxauth_start_time_seconds",
            "gauge",
            "When the server started, Unix seconds.",
        );
        let _ = writeln!(out, "wxauth_start_time_seconds {}", load(&self.started));
        family(
            &mut out,
            "wxauth_build_info",
            "gauge",
            "Always 1; the labels are the version and the git commit built from (or unknown).",
        );
        let _ = writeln!(
            out,
            "wxauth_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("WXAUTH_COMMIT")
        );
        out
    }
}

/// The sizes of the database file and of its WAL, which grows between checkpoints (0 when
/// there is none); a file that cannot be looked at is left out.
fn render_database_files(out: &mut String, database: &str) {
    family(
        out,
        "wxauth_database_bytes",
        "gauge",
        "Size of the database file (file=\"db\") and of its write-ahead log (file=\"wal\"), in bytes.",
    );
    for (label, suffix) in [("db", ""), ("wal", "-wal")] {
        let size = match std::fs::metadata(format!("{database}{suffix}")) {
            Ok(metadata) => metadata.len(),
            Err(error) if suffix == "-wal" && error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(_) => continue,
        };
        let _ = writeln!(out, "wxauth_database_bytes{{file=\"{label}\"}} {size}");
    }
}

/// The standard process metrics of Prometheus's client libraries (`process_…`), as the kernel
/// reports them in /proc/self. A file that cannot be read leaves its metrics out.
#[cfg(target_os = "linux")]
fn render_process(out: &mut String) {
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) =
        unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(process) = ProcessStat::parse(&stat)
        && ticks > 0
    {
        let ticks = ticks as f64;
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        let cpu = (process.user_ticks + process.system_ticks) as f64 / ticks;
        let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
        family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size, in bytes.");
        let _ = writeln!(out, "process_virtual_memory_bytes {}", process.virtual_bytes);
        family(out, "process_resident_memory_bytes", "gauge", "Resident memory size, in bytes.");
        let resident = process.resident_pages.saturating_mul(page.max(0) as u64);
        let _ = writeln!(out, "process_resident_memory_bytes {resident}");
        // The start is counted in ticks since boot; /proc/stat has the boot time.
        if let Some(boot) = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
            text.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse::<u64>().ok())
        }) {
            family(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
            );
            let start = boot as f64 + process.start_ticks as f64 / ticks;
            let _ = writeln!(out, "process_start_time_seconds {start}");
        }
    }
    if let Ok(descriptors) = std::fs::read_dir("/proc/self/fd") {
        family(out, "process_open_fds", "gauge", "Open file descriptors.");
        let _ = writeln!(out, "process_open_fds {}", descriptors.count());
    }
    if let Some(limit) = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| {
        let line = text.lines().find(|line| line.starts_with("Max open files"))?;
        line.strip_prefix("Max open files")?.split_whitespace().next()?.parse::<u64>().ok()
    }) {
        family(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (the soft limit).",
        );
        let _ = writeln!(out, "process_max_fds {limit}");
    }
}

#[cfg(not(target_os = "linux"))]
fn render_process(_: &mut String) {}

/// The fields of /proc/self/stat the process metrics use.
#[derive(Debug, PartialEq, Eq)]
struct ProcessStat {
    user_ticks: u64,
    system_ticks: u64,
    /// Clock ticks after boot.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

impl ProcessStat {
    /// Parses /proc/PID/stat (proc(5)): the fields after the command name, which is in
    /// parentheses and may itself hold spaces and parentheses, so it ends at the last `)`.
    fn parse(stat: &str) -> Option<ProcessStat> {
        let (_, rest) = stat.rsplit_once(')')?;
        // Field 3 (state) is the first after the name.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
        Some(ProcessStat {
            user_ticks: field(14)?,
            system_ticks: field(15)?,
            start_ticks: field(22)?,
            virtual_bytes: field(23)?,
            resident_pages: field(24)?,
        })
    }
}

/// The exposition for `GET /metrics`: the server's metrics, the account gauges, counted on the
/// worker's read connection unless a scrape counted them less than `ACCOUNTS_COUNTED_EVERY` ago,
/// the sizes of the files of `database`, and the process's metrics; `apps` names the app slots.
pub(crate) fn scrape(db: &Connection, database: &str, apps: &[&str]) -> String {
    let counts = recent_counts(&ACCOUNT_COUNT, Instant::now(), || {
        crate::store::account_counts(db)
            .inspect_err(|error| {
                crate::log::warn(&format!("metrics: cannot count accounts: {error}"));
            })
            .ok()
    });
    let mut out = METRICS.render(apps, counts.as_ref());
    // A MySQL database is no file of ours: its sizes are the server's to report.
    if !crate::store::is_shared(database) {
        render_database_files(&mut out, database);
    }
    render_process(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels come from the router's lists, so a route added there is labelled; scrapers
    /// depend on the values, so they are pinned here too.
    #[test]
    fn every_route_the_router_answers_has_its_own_label() {
        for route in Route::ALL {
            let path = format!("{PREFIX}{}", route.name());
            assert_eq!(RouteLabel::of(PREFIX, &path, 200).name(), route.name());
            assert!(!RouteLabel::of(PREFIX, &path, 200).is_probe());
        }
        for operation in Operation::ALL {
            let path = format!("/{}", operation.name());
            assert_eq!(Operation::of(&path), Some(operation), "the router answers {path}");
            assert_eq!(RouteLabel::of(PREFIX, &path, 200).name(), operation.name());
            assert!(RouteLabel::of(PREFIX, &path, 200).is_probe());
        }
        assert_eq!(
            ROUTES,
            [
                "get_openid_by_code",
                "is_openid_registered",
                "register",
                "login",
                "logout",
                "verify",
                "me",
                "healthz",
                "readyz",
                "metrics",
                "other",
            ]
        );
    }

    const PREFIX: &str = "/miniprog/wx_auth/";

    #[test]
    fn route_labels_are_bounded() {
        let label = |path: &str, status| RouteLabel::of(PREFIX, path, status).name();
        assert_eq!(label("/miniprog/wx_auth/login", 200), "login");
        assert_eq!(label("/miniprog/wx_auth/login/", 405), "login");
        assert_eq!(label("/miniprog/wx_auth/get_openid_by_code", 403), "get_openid_by_code");
        assert_eq!(label("/miniprog/wx_auth/verify", 401), "verify");
        assert_eq!(label("/miniprog/wx_auth/me/", 200), "me");
        assert_eq!(label("/healthz", 200), "healthz");
        assert_eq!(label("/metrics", 405), "metrics");
        assert_eq!(label("/miniprog/wx_auth/nope", 404), "other");
        assert_eq!(label("/miniprog/wx_auth/login", 404), "other");
        assert_eq!(label("/anything/else", 500), "other");
        assert_eq!(label("/miniprog/wx_auth/healthz", 200), "other");
        assert!(RouteLabel::of(PREFIX, "/readyz", 503).is_probe());
        assert!(!RouteLabel::of(PREFIX, "/miniprog/wx_auth/login", 200).is_probe());
        // With the API at the root, the probes still win.
        assert_eq!(RouteLabel::of("/", "/metrics", 200).name(), "metrics");
        assert_eq!(RouteLabel::of("/", "/login", 200).name(), "login");
    }

    #[test]
    fn histograms_are_cumulative_and_count_every_request() {
        let metrics = Metrics::new();
        let login = RouteLabel::of(PREFIX, "/miniprog/wx_auth/login", 200);
        metrics.request(0, login, 200, Duration::from_micros(400));
        metrics.request(0, login, 200, Duration::from_millis(3));
        metrics.request(0, login, 599, Duration::from_secs(60));
        let text = metrics.render(&["default"], None);
        let line = |prefix: &str| {
            text.lines()
                .find(|line| line.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            line("wxauth_http_requests_total{route=\"login\",status=\"200\",app=\"default\"}"),
            "2"
        );
        assert_eq!(
            line("wxauth_http_requests_total{route=\"login\",status=\"other\",app=\"default\"}"),
            "1"
        );
        let bucket = |le: &str| {
            line(&format!(
                "wxauth_http_request_duration_seconds_bucket{{route=\"login\",app=\"default\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.0005"), "1");
        assert_eq!(bucket("0.0025"), "1");
        assert_eq!(bucket("0.005"), "2");
        assert_eq!(bucket("10"), "2");
        assert_eq!(bucket("+Inf"), "3");
        assert_eq!(
            line("wxauth_http_request_duration_seconds_count{route=\"login\",app=\"default\"}"),
            "3"
        );
        assert_eq!(
            line("wxauth_http_request_duration_seconds_sum{route=\"login\",app=\"default\"}"),
            "60.0034"
        );
        assert!(!text.contains("route=\"logout\""), "zero series are left out");
        assert!(!text.contains("wxauth_accounts "), "no gauges without the database");
    }

    #[test]
    fn every_family_has_help_and_type() {
        let metrics = Metrics::new();
        metrics.wechat_call(0, "jscode2session", WechatOutcome::Busy, 1_700_000_000);
        metrics.refused(431);
        let text =
            metrics.render(&["default"], Some(&AccountCounts { accounts: 2, registered: 1 }));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                .unwrap_or(name);
            assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {name}");
            assert!(text.contains(&format!("# TYPE {family} ")), "no TYPE for {name}");
        }
        assert!(text.contains(
            "wxauth_wechat_calls_total{api=\"jscode2session\",outcome=\"busy\",app=\"default\"} 1"
        ));
        assert!(text.contains("wxauth_http_refused_total{status=\"431\"} 1"));
        assert!(text.contains("wxauth_registered_accounts 1"));
    }

    #[test]
    fn every_status_wxauth_answers_has_its_own_label() {
        use crate::error::Error;
        let errors = [
            Error::MissingParameter("openid"),
            Error::BodyTooLarge { limit: 1 },
            Error::UriTooLong,
            Error::HeadersTooLarge,
            Error::RequestTimeout,
            Error::RateLimited { retry_after: 1 },
            Error::NotFound,
            Error::MethodNotAllowed("GET"),
            Error::WechatUnavailable { api: "jscode2session", reason: String::new() },
            Error::Internal(String::new()),
        ];
        let mut statuses: Vec<u16> = errors.iter().map(Error::status).collect();
        // Success; `verify`'s 401; an unready `/readyz`; tiny_http's malformed head and Expect.
        statuses.extend([200, 401, 503, 400, 417]);
        for status in statuses {
            assert_eq!(status_label(status_slot(status)), status.to_string());
        }
        assert_eq!(status_label(status_slot(599)), "other");
    }

    #[test]
    fn accounts_are_counted_at_most_every_15_seconds() {
        let last = Mutex::new(None);
        let start = Instant::now();
        let counts = |accounts| Some(AccountCounts { accounts, registered: 0 });
        let at = |seconds| start + Duration::from_secs(seconds);
        assert_eq!(recent_counts(&last, at(0), || counts(1)), counts(1));
        assert_eq!(recent_counts(&last, at(14), || unreachable!("counted again")), counts(1));
        assert_eq!(recent_counts(&last, at(15), || counts(2)), counts(2));
        // A failed count is kept too: the gauges stay absent until the next one.
        assert_eq!(recent_counts(&last, at(30), || None), None);
        assert_eq!(recent_counts(&last, at(44), || unreachable!("counted again")), None);
        assert_eq!(recent_counts(&last, at(45), || counts(3)), counts(3));
        // A scrape that read the clock before another's count (and waited for the lock) reuses it.
        assert_eq!(recent_counts(&last, at(40), || unreachable!("counted again")), counts(3));
    }

    #[test]
    fn proc_stat_is_read_after_the_last_parenthesis() {
        // A command name with a space and a parenthesis of its own (proc(5)'s example layout).
        let stat = "4242 (wx auth) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    17 4 0 0 20 0 7 0 123456 987654321 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            ProcessStat::parse(stat),
            Some(ProcessStat {
                user_ticks: 17,
                system_ticks: 4,
                start_ticks: 123456,
                virtual_bytes: 987654321,
                resident_pages: 2048,
            })
        );
        assert_eq!(ProcessStat::parse("4242 (cut short) S 1"), None);
    }

    #[test]
    fn the_last_wechat_call_is_one_word() {
        let metrics = Metrics::new();
        assert_eq!(metrics.last_wechat_call(), None);
        metrics.wechat_call(0, "stable_token", WechatOutcome::Timeout, 1_700_000_000);
        metrics.wechat_call(0, "getuserphonenumber", WechatOutcome::InFlightCap, 1_700_000_005);
        let last = metrics.last_wechat_call().unwrap();
        assert_eq!(last.api, "stable_token", "a call never sent is not the last call");
        assert_eq!(last.outcome, WechatOutcome::Timeout);
        assert_eq!(last.at, 1_700_000_000);
        assert!(!last.outcome.answered());
    }
}
