//! The single writer thread and its group commit, on any engine: the transaction's plumbing is
//! `Step`s, which each engine spells in its own SQL (`Connection::step`).
//!
//! On a database several instances share (MySQL), `run` and `run_visible` do not go to the
//! writer thread: each write runs on the calling worker in a transaction of its own, on a
//! connection from the pool, and is answered once committed. The server already commits many
//! transactions with one log flush (InnoDB's group commit), and a transaction per request holds
//! its row locks only for its own statements, so two instances' writers never wait on each
//! other's whole groups (nor deadlock across them). The writer thread then only writes the login
//! bookkeeping, in groups, each account's row in id order.
//!
//! The accounts of new identities (first logins, registrations) are the exception
//! (`Writer::write_account`): on a shared database those writes go to two `new-accounts` threads
//! that take turns, each creating the accounts of the writes waiting in one transaction of a few
//! multi-row statements. One alone is about ten round trips and a commit of its own, and a commit
//! waits for the server's log flush, which the server shares only among the commits that arrive
//! during one.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::error::Error;

/// The most jobs one group commit takes.
const MAX_GROUP: usize = 512;

/// Pending writes the queue holds before workers wait to hand theirs over.
const QUEUE_DEPTH: usize = 4096;

/// A group commit with nothing in it but login bookkeeping waits until this long after the last
/// commit. Every commit costs the writer a transaction and costs every worker's read connection
/// its page cache (the next read finds the database changed); a bookkeeping commit per token
/// login, thousands a second, cost both for writes nobody waits for.
const BOOKKEEPING_EVERY: Duration = Duration::from_millis(20);

/// How long login bookkeeping left for later (`Logins::write`) waits for a group when no job
/// calls one: the lock that held it back is tried again about once a second.
const RETRY_LEFT: Duration = Duration::from_secs(1);

/// A write waiting for the writer: runs inside the group's transaction (or, given `None`, learns
/// that no transaction could be started) and returns what to do once the group's commit has
/// succeeded or failed.
type Run = Box<dyn FnOnce(Option<&Connection>) -> Finish + Send>;
type Finish = Box<dyn FnOnce(Result<(), &Error>) + Send>;

/// A write and how durable its acknowledgement must be.
struct Job {
    durability: Durability,
    /// `None`: nothing but the login bookkeeping waiting (`Writer::note_login`) to write.
    run: Option<Run>,
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Once its commit is fsynced (`synchronous = FULL`).
    Synced,
    /// Once it is committed; fsynced with a later synced commit or checkpoint
    /// (`synchronous = NORMAL`, which in WAL mode still keeps the database consistent).
    Visible,
}

/// The handle workers use to hand writes to the writer thread. Cloning it is cheap; the writer
/// stops once every handle is dropped.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::SyncSender<Job>,
    logins: Logins,
    /// For a database several instances share: where each write runs in its own transaction.
    direct: Option<Arc<SharedDatabase>>,
    /// For a database several instances share: the batches that writes of new identities'
    /// accounts go to (`write_account`).
    batches: Option<mpsc::SyncSender<Pending>>,
}

/// Login bookkeeping not yet written. Every group commit writes all of it first, in a savepoint of
/// its own (but for accounts another transaction holds, `Logins::write`). A login that finds no
/// group called for it also queues an empty job, so that one follows; every other finds that group
/// on its way, and a token login wakes the writer only when no group is called.
#[derive(Clone, Default)]
struct Logins(Arc<Mutex<Waiting>>);

#[derive(Default)]
struct Waiting {
    /// The newest login per account not yet written: its time and address.
    logins: HashMap<i64, (String, i64)>,
    /// Whether an empty job is queued that no group has taken yet.
    called: bool,
}

impl Logins {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes what is waiting, in one write, and logs its failure; whether it left logins waiting.
    /// Runs in the group's transaction (`None`: there is none, and what was waiting is lost, as a
    /// failed group's writes are).
    ///
    /// An account another transaction holds (on MySQL: an operator's, another instance's) is
    /// not waited for, which would hold up the others' bookkeeping each round while the lock is
    /// held and lose it all when the wait gives up: its login waits here again, unless a newer
    /// one came meanwhile, for the next group, which the next login calls, or `write_loop` after
    /// `RETRY_LEFT`. A login written late never replaces a later one (`touch_login`).
    fn write(&self, connection: Option<&Connection>) -> bool {
        let waiting = {
            let mut waiting = self.lock();
            waiting.called = false;
            std::mem::take(&mut waiting.logins)
        };
        if waiting.is_empty() {
            return false;
        }
        let mut waiting: Vec<_> = waiting.into_iter().collect();
        waiting.sort_unstable_by_key(|(id, _)| *id);
        let ids: Vec<i64> = waiting.iter().map(|(id, _)| *id).collect();
        let result = run_in_savepoint(connection, |connection| {
            let (free, held) = accounts_free_to_write(connection, &ids)?;
            for (id, (ip, now)) in &waiting {
                if free.binary_search(id).is_ok() {
                    touch_login(connection, *id, ip, *now)?;
                }
            }
            Ok(held)
        });
        match result {
            Ok(held) => {
                let mut again = self.lock();
                for (id, login) in
                    waiting.into_iter().filter(|(id, _)| held.binary_search(id).is_ok())
                {
                    again.logins.entry(id).or_insert(login);
                }
                !held.is_empty()
            }
            Err(error) => {
                crate::log::error(&format!(
                    "login bookkeeping of {} accounts failed: {error}",
                    waiting.len()
                ));
                false
            }
        }
    }
}

impl Writer {
    /// Starts the writer thread on `connection` (from `open_writer`).
    pub(crate) fn start(connection: Connection) -> (Writer, thread::JoinHandle<()>) {
        let (jobs, queue) = mpsc::sync_channel(QUEUE_DEPTH);
        let direct = SharedDatabase::of(&connection).map(Arc::new);
        let batches = direct.as_ref().map(start_batches);
        let logins = Logins::default();
        let waiting = logins.clone();
        let handle = thread::Builder::new()
            .name("writer".into())
            .spawn(move || write_loop(connection, queue, waiting))
            .expect("cannot start the writer thread");
        (Writer { jobs, logins, direct, batches }, handle)
    }

    /// Runs `write` in the writer's transaction and returns its result once it is committed and
    /// on disk (the commit is fsynced). A job that fails is rolled back alone; the others in its
    /// group still commit.
    pub(crate) fn run<T, F>(&self, write: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        self.wait_for(Durability::Synced, write)
    }

    /// Like `run`, but returns once the write is committed (every reader sees it) without waiting
    /// for the fsync: a power loss before the next synced commit or checkpoint may undo it, a
    /// crash of wxauth alone cannot. For records that the client can recreate (a WeChat session
    /// comes back with the next `wx.login` code), never for accounts.
    pub(crate) fn run_visible<T, F>(&self, write: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        self.wait_for(Durability::Visible, write)
    }

    fn wait_for<T, F>(&self, durability: Durability, write: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        if let Some(direct) = &self.direct {
            return run_alone(direct, write);
        }
        let (reply, answer) = mpsc::sync_channel::<Result<T, Error>>(1);
        self.queue(durability, write, move |result| {
            let _ = reply.send(result);
        });
        answer.recv().map_err(|_| Error::Internal("the writer dropped a write".into()))?
    }

    /// Writes `write` (a registration, or a login with the profile fields sent) onto the account
    /// `known_id` (a token's), or else onto the account of its identity, which gets one if it has
    /// none; returns the account as written and let through by `admit` (the API's last checks: a
    /// refusal undoes the write), once it is committed and on disk, as `run` does.
    ///
    /// On a database several instances share, a write by identity goes to a batch first
    /// (`SharedDatabase::create_accounts`): the writes waiting when a batch thread is free, up to
    /// `MAX_BATCH`, create the accounts of their new identities in one transaction with a few
    /// multi-row statements, where one alone takes about ten statements and a commit of its own.
    /// What a batch leaves (an identity that has an account, a unionid to join, a batch that
    /// failed as a whole), and a login of an identity found to have an account before, runs
    /// alone, in a transaction of its own on this thread.
    pub(crate) fn write_account(
        &self,
        known_id: Option<i64>,
        mut write: IdentityWrite,
        admit: impl Fn(Account) -> Result<Account, Error> + Send + Sync + 'static,
    ) -> Result<Account, Error> {
        let admit: Admit = Arc::new(admit);
        // A login by openid is mostly a returning user's, whose identity has an account: such a
        // write goes alone at once, rather than wait for a batch that leaves it. A registration is
        // mostly a new identity's, and one read more before each costs more than the few that a
        // batch leaves (bench/run on MariaDB; commit e40286a has the figures).
        let returning = |direct: &SharedDatabase| match &write.change {
            AccountChange::Login(_) => {
                is_registered(&direct.connection(), &write.appid, &write.openid)
                    .map(|account| account.is_some())
            }
            AccountChange::Register(_) => Ok(false),
        };
        if let (None, Some(batches), Some(direct)) = (known_id, &self.batches, &self.direct)
            && !returning(direct)?
        {
            let (reply, answer) = mpsc::sync_channel(1);
            let pending = Pending { write, admit: admit.clone(), reply };
            write = match batches.send(pending) {
                Err(mpsc::SendError(pending)) => pending.write,
                Ok(()) => match answer.recv() {
                    Ok(Ok(account)) => return Ok(account),
                    Ok(Err(left)) => left,
                    Err(_) => {
                        return Err(Error::Internal("a batch of new accounts was lost".into()));
                    }
                },
            };
        }
        self.run(move |connection| {
            let IdentityWrite { appid, openid, ip, now, change } = &write;
            let written = match change {
                AccountChange::Register(registration) => {
                    register(connection, known_id, appid, openid, ip, *now, registration)?
                }
                AccountChange::Login(profile) => {
                    let id = match known_id {
                        Some(id) => {
                            touch_login(connection, id, ip, *now)?;
                            id
                        }
                        None => login_account(connection, appid, openid, ip, *now)?,
                    };
                    update_profile(connection, id, profile)?;
                    account_by_id(connection, id)?
                }
            };
            written
                .ok_or_else(|| match known_id {
                    Some(id) => Error::Internal(format!("account {id} vanished")),
                    None => Error::Internal("the account written is not there".into()),
                })
                .and_then(|account| admit(account))
        })
    }

    /// Records a login's bookkeeping (`touch_login`) without waiting for it: it is written first
    /// in the next group commit, so every write queued after it sees it, and fsynced with the
    /// next synced commit or checkpoint, like `run_visible`; on MySQL, an account another
    /// transaction holds, in a later one (`Logins::write`). Of several logins of one account
    /// waiting for that commit, the last one recorded is written; failures are logged.
    pub(crate) fn note_login(&self, id: i64, ip: String, now: i64) {
        let mut waiting = self.logins.lock();
        let call = !waiting.called;
        waiting.called = true;
        waiting.logins.insert(id, (ip, now));
        drop(waiting);
        if call {
            // Taken by the group this job is in, or by an earlier one; either way it is written.
            // The writer has stopped only once every handle is gone, and this is one.
            let _ = self.jobs.send(Job { durability: Durability::Visible, run: None });
        }
    }

    /// Hands `write` to the writer thread; `then` gets its result once its group has committed
    /// (or failed). If the writer has stopped, `then` learns that at once, on this thread.
    fn queue<T, F, G>(&self, durability: Durability, write: F, then: G)
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
        G: FnOnce(Result<T, Error>) + Send + 'static,
    {
        let run: Run = Box::new(move |connection| {
            let result = run_in_savepoint(connection, write);
            Box::new(move |committed| {
                then(match (result, committed) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(error)) => Err(Error::Internal(format!("commit failed: {error}"))),
                    (Err(error), _) => Err(error),
                })
            })
        });
        if let Err(mpsc::SendError(Job { run: Some(run), .. })) =
            self.jobs.send(Job { durability, run: Some(run) })
        {
            run(None)(Err(&Error::Internal("the writer has stopped".into())));
        }
    }
}

/// The most writes one batch takes (`Writer::write_account`).
const MAX_BATCH: usize = 64;

/// Threads that run batches of new accounts on a shared database, taking turns (`batch_loop`):
/// one batch's statements run while the other's commit waits for the server's log flush.
const BATCH_THREADS: usize = 2;

/// The API's last checks of an account written (`Writer::write_account`).
type Admit = Arc<dyn Fn(Account) -> Result<Account, Error> + Send + Sync>;

/// A write waiting for a batch, and where its outcome goes: the account, or the write back when
/// the batch left it.
struct Pending {
    write: IdentityWrite,
    admit: Admit,
    reply: mpsc::SyncSender<Result<Account, IdentityWrite>>,
}

/// Starts the batch threads of `database`; they stop once every `Writer` handle is gone.
fn start_batches(database: &Arc<SharedDatabase>) -> mpsc::SyncSender<Pending> {
    let (batches, queue) = mpsc::sync_channel(QUEUE_DEPTH);
    let queue = Arc::new(Mutex::new(queue));
    for _ in 0..BATCH_THREADS {
        let (database, queue) = (database.clone(), queue.clone());
        thread::Builder::new()
            .name("new-accounts".into())
            .spawn(move || batch_loop(&database, &queue))
            .expect("cannot start a thread for batches of new accounts");
    }
    batches
}

/// Runs batches of writes of new accounts and answers each write, until the queue is closed. A
/// thread holds the queue from gathering its batch (the writes waiting, at least one, up to
/// `MAX_BATCH`) until the batch's statements are done, and lets go before its commit: the
/// commit, which waits for the server's log flush, is the longest part, and meanwhile the other
/// thread gathers what arrived and runs its statements. Two threads so do more registrations a
/// second than one (`BENCH_MYSQL=… bench/compare`, bench/README.md); two that each held the
/// queue only while gathering made smaller batches and did worse than one.
fn batch_loop(database: &SharedDatabase, queue: &Mutex<mpsc::Receiver<Pending>>) {
    let connection = database.pinned_connection();
    let mut writes = Vec::with_capacity(MAX_BATCH);
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    loop {
        let turn = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = turn.recv().ok();
        while let Some(Pending { write, admit, reply }) = next {
            writes.push(write);
            waiting.push((admit, reply));
            next = if writes.len() < MAX_BATCH { turn.try_recv().ok() } else { None };
        }
        if writes.is_empty() {
            return;
        }
        let batch = || {
            SharedDatabase::create_accounts(
                &connection,
                &writes,
                |index, account| {
                    catch_unwind(AssertUnwindSafe(|| (waiting[index].0)(account))).unwrap_or_else(
                        |_| Err(Error::Internal("an account's checks panicked".into())),
                    )
                },
                || drop(turn),
            )
        };
        // A panic costs the batch, never the thread: each write is then written alone.
        let written = catch_unwind(AssertUnwindSafe(batch)).unwrap_or_else(|_| {
            crate::log::error("a batch of new accounts panicked; each is written alone");
            SharedDatabase::abandon(&connection);
            vec![None; writes.len()]
        });
        for ((write, (_, reply)), account) in writes.drain(..).zip(waiting.drain(..)).zip(written) {
            let _ = reply.send(account.ok_or(write));
        }
    }
}

/// Runs `write` on a shared database in a transaction of its own, on this thread, and returns
/// its result once committed; a failing or panicking write is rolled back.
fn run_alone<T>(
    database: &SharedDatabase,
    write: impl FnOnce(&Connection) -> Result<T, Error>,
) -> Result<T, Error> {
    let connection = database.connection();
    connection.step(Step::Begin)?;
    let result = catch_unwind(AssertUnwindSafe(|| write(&connection)))
        .unwrap_or_else(|_| Err(Error::Internal("a write panicked".into())));
    match result {
        Ok(value) => connection.step(Step::Commit).map(|()| value),
        Err(error) => {
            let _ = connection.step(Step::Rollback);
            Err(error)
        }
    }
}

/// Runs one job inside a savepoint, so that its failure (or panic) undoes only its own changes.
fn run_in_savepoint<T>(
    connection: Option<&Connection>,
    write: impl FnOnce(&Connection) -> Result<T, Error>,
) -> Result<T, Error> {
    let connection = connection.ok_or_else(|| {
        Error::Internal("no write transaction (the writer has stopped, or BEGIN failed)".into())
    })?;
    connection.step(Step::Savepoint)?;
    let result = catch_unwind(AssertUnwindSafe(|| write(connection)))
        .unwrap_or_else(|_| Err(Error::Internal("a write panicked".into())));
    if result.is_err() {
        connection.step(Step::RollbackToSavepoint)?;
    }
    connection.step(Step::ReleaseSavepoint)?;
    result
}

/// The writer's transaction plumbing, one statement each, which every engine spells its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Commits wait for their fsync (SQLite: `synchronous = FULL`).
    Synced,
    /// Commits are visible without waiting for an fsync (SQLite: `synchronous = NORMAL`).
    Unsynced,
    /// Starts the group's transaction, taking the write lock at once.
    Begin,
    /// Starts one job's savepoint.
    Savepoint,
    /// Undoes one job's changes.
    RollbackToSavepoint,
    /// Ends one job's savepoint.
    ReleaseSavepoint,
    Commit,
    /// Undoes a group whose commit failed.
    Rollback,
    /// The writer stops: leave the database whole on disk (SQLite folds the WAL back into it).
    Checkpoint,
}

fn write_loop(connection: Connection, queue: mpsc::Receiver<Job>, logins: Logins) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut finishers = Vec::with_capacity(MAX_GROUP);
    // What `open_writer` set; changed only when a group needs the other level.
    let mut synced = true;
    // When the last group committed. A group of nothing but login bookkeeping waits until
    // BOOKKEEPING_EVERY after it, and goes at once when a write that is waited for arrives.
    let mut committed_at: Option<Instant> = None;
    // Whether the last group left logins waiting (their accounts held by another transaction):
    // they get a group of their own after RETRY_LEFT, when no job calls one sooner.
    let mut left_waiting = false;
    loop {
        let first = if left_waiting {
            match queue.recv_timeout(RETRY_LEFT) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match queue.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            }
        };
        group.extend(first);
        take_waiting(&queue, &mut group);
        if let Some(at) = committed_at {
            let until = at + BOOKKEEPING_EVERY;
            while group.iter().all(|job| job.run.is_none()) {
                let left = until.saturating_duration_since(Instant::now());
                match queue.recv_timeout(left) {
                    Ok(job) => group.push(job),
                    // A stop (every handle gone) writes what is waiting at once.
                    Err(_) => break,
                }
            }
            take_waiting(&queue, &mut group);
        }
        // One fsync per group when any job in it waits for one; none when none does. Set outside
        // the transaction, and only on a change.
        let needs_sync = group.iter().any(|job| job.durability == Durability::Synced);
        let mut outcome = Ok(());
        if needs_sync && !synced {
            // Failing this fails the group: its writes must not be answered unsynced.
            outcome = connection.step(Step::Synced);
            synced = outcome.is_ok();
        } else if !needs_sync && synced {
            // Failing this only costs an fsync: the group commits synced.
            synced = connection.step(Step::Unsynced).is_err();
        }
        let outcome = outcome.and_then(|()| connection.step(Step::Begin));
        match outcome {
            Ok(()) => {
                // Before the jobs: a job queued after a login was recorded sees that login.
                left_waiting = logins.write(Some(&connection));
                finishers.extend(
                    group.drain(..).filter_map(|job| job.run).map(|run| run(Some(&connection))),
                );
                let committed = connection.step(Step::Commit);
                committed_at = Some(Instant::now());
                if let Err(error) = &committed {
                    crate::log::error(&format!(
                        "group commit of {} writes failed: {error}",
                        finishers.len()
                    ));
                    let _ = connection.step(Step::Rollback);
                }
                for finish in finishers.drain(..) {
                    answer(finish, committed.as_ref().map(|_| ()));
                }
            }
            Err(error) => {
                crate::log::error(&format!("cannot begin a write transaction: {error}"));
                left_waiting = logins.write(None);
                // The jobs do not run; each still gets its answer (the error).
                for run in group.drain(..).filter_map(|job| job.run) {
                    answer(run(None), Err(&error));
                }
            }
        }
    }
    let left = logins.lock().logins.len();
    if left > 0 {
        crate::log::warn(&format!(
            "login bookkeeping of {left} accounts held by another transaction is not written"
        ));
    }
    // Every handle is gone: fold the WAL back into the database so the file stands alone (the
    // checkpoint fsyncs whatever was committed without a sync).
    if let Err(error) = connection.step(Step::Checkpoint) {
        crate::log::error(&format!("final WAL checkpoint failed: {error}"));
    }
}

/// Adds to `group` the jobs waiting in `queue`, up to `MAX_GROUP`.
fn take_waiting(queue: &mpsc::Receiver<Job>, group: &mut Vec<Job>) {
    while group.len() < MAX_GROUP {
        match queue.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

/// Gives one job its outcome (hands it to the thread waiting for it); a panic there costs that
/// answer, never the writer thread.
fn answer(finish: Finish, committed: Result<(), &Error>) {
    if catch_unwind(AssertUnwindSafe(|| finish(committed))).is_err() {
        crate::log::error("a write's answer panicked on the writer thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_writes_are_seen_by_readers_when_answered() {
        let path = temp_database("visible");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let (writer, handle) = Writer::start(connection);
        let reader = open_reader(&path).unwrap();
        let session = WechatSession { unionid: None, session_key: "key-1".into(), created_at: 100 };
        for round in 0..3 {
            let record = WechatSession { created_at: 100 + round, ..session.clone() };
            writer
                .run_visible(move |c| save_wechat_session(c, "wxa", "openid-v", &record))
                .unwrap();
            let seen = wechat_session(&reader, "wxa", "openid-v").unwrap().unwrap();
            assert_eq!(seen.session.created_at, 100 + round);
            // A synced write after an unsynced group switches the level back and commits too.
            let (id, level) = writer
                .run(move |c| {
                    let id = login_account(c, "wxa", "openid-v", "::1", 200 + round)?;
                    Ok((
                        id,
                        c.sqlite()
                            .query_row("PRAGMA synchronous", [], |row| row.get::<_, i64>(0))?,
                    ))
                })
                .unwrap();
            assert_eq!(level, 2, "FULL: answered after its fsync");
            let account = account_by_id(&reader, id).unwrap().unwrap();
            assert_eq!(account.last_login, Some(200 + round));
        }
        drop(writer);
        handle.join().unwrap();
    }

    #[test]
    fn noted_logins_are_written_newest_per_account_before_later_writes() {
        let path = temp_database("logins");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let (writer, handle) = Writer::start(connection);
        let first = writer.run(|c| login_account(c, "wxa", "openid-1", "127.0.0.1", 100)).unwrap();
        let second = writer.run(|c| login_account(c, "wxa", "openid-2", "127.0.0.1", 100)).unwrap();
        // Many logins, from many threads: the last one recorded for each account is written.
        thread::scope(|scope| {
            for thread in 0..4 {
                let writer = writer.clone();
                scope.spawn(move || {
                    for round in 0..50 {
                        writer.note_login(second, format!("10.0.{thread}.{round}"), 200 + round);
                    }
                });
            }
        });
        writer.note_login(first, "192.0.2.1".into(), 300);
        writer.note_login(first, "192.0.2.2".into(), 301);
        // A write queued after them sees them, and so does every reader once it is answered.
        let seen = writer
            .run(move |c| Ok(account_by_id(c, first)?.and_then(|account| account.last_login)))
            .unwrap();
        assert_eq!(seen, Some(301));
        let reader = open_reader(&path).unwrap();
        let account = account_by_id(&reader, first).unwrap().unwrap();
        assert_eq!(
            (account.last_login, account.last_ip.as_deref()),
            (Some(301), Some("192.0.2.2"))
        );
        let account = account_by_id(&reader, second).unwrap().unwrap();
        assert_eq!(account.last_login, Some(249));
        assert!(account.last_ip.as_deref().is_some_and(|ip| ip.ends_with(".49")), "{account:?}");
        assert!(writer.logins.lock().logins.is_empty(), "nothing left waiting");
        // Noted with nothing queued after it, a login is still written by itself.
        writer.note_login(first, "192.0.2.3".into(), 400);
        let deadline = Instant::now() + Duration::from_secs(10);
        while account_by_id(&reader, first).unwrap().unwrap().last_login != Some(400) {
            assert!(Instant::now() < deadline, "the login was never written");
            thread::sleep(Duration::from_millis(5));
        }
        drop(writer);
        handle.join().unwrap();
    }

    #[test]
    fn logins_alone_commit_at_most_once_per_bookkeeping_interval() {
        let path = temp_database("logins-interval");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let (writer, handle) = Writer::start(connection);
        let id = writer.run(|c| login_account(c, "wxa", "openid-1", "127.0.0.1", 100)).unwrap();
        // Commits counted by the WAL's frames (no checkpoint runs below 1000), each of these
        // commits writing the same page(s): one bookkeeping commit's worth first.
        let frames =
            || (std::fs::metadata(format!("{path}-wal")).unwrap().len() - 32) / (24 + 4096);
        let before = frames();
        writer.note_login(id, "192.0.2.1".into(), 101);
        writer.run(|_| Ok(())).unwrap();
        let per_commit = frames() - before;
        assert!(per_commit > 0);
        // 100 logins a millisecond or more apart: one commit each without the interval.
        let (before, started) = (frames(), Instant::now());
        for round in 0..100 {
            writer.note_login(id, "192.0.2.2".into(), 200 + round);
            thread::sleep(Duration::from_millis(1));
        }
        let most = started.elapsed().as_millis() / BOOKKEEPING_EVERY.as_millis() + 2;
        writer.run(|_| Ok(())).unwrap();
        let commits = (frames() - before) / per_commit;
        assert!(commits as u128 <= most, "{commits} commits, at most {most} expected");
        let reader = open_reader(&path).unwrap();
        assert_eq!(account_by_id(&reader, id).unwrap().unwrap().last_login, Some(299));
        drop(writer);
        handle.join().unwrap();
    }

    #[test]
    fn one_account_per_identity_and_failed_jobs_roll_back_alone() {
        let path = temp_database("writer");
        let (connection, _) = open_writer(&path, Opener::Server).unwrap();
        let (writer, handle) = Writer::start(connection);
        let first = writer.run(|c| login_account(c, "wxa", "openid-1", "127.0.0.1", 100)).unwrap();
        let again = writer.run(|c| login_account(c, "wxa", "openid-1", "127.0.0.2", 200)).unwrap();
        assert_eq!(first, again);
        let failed = writer.run(|c| {
            login_account(c, "wxa", "openid-2", "127.0.0.1", 100)?;
            Err::<(), _>(Error::InvalidParameter("boom".into()))
        });
        assert!(failed.is_err());
        let reader = open_reader(&path).unwrap();
        assert!(account_by_openid(&reader, "wxa", "openid-2").unwrap().is_none());
        let account = account_by_openid(&reader, "wxa", "openid-1").unwrap().unwrap();
        assert_eq!(account.join_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(account.last_ip.as_deref(), Some("127.0.0.2"));
        assert_eq!(account.last_login, Some(200));
        assert_eq!(account.date_joined, 100);
        assert_eq!(account.username, "openid-1");
        drop(writer);
        handle.join().unwrap();
    }
}
