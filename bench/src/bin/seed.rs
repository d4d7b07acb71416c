//! `seed --store URL --prefix P --count N --cookies FILE --write K [--issuer URL]`:
//! fills a store with N signed-in sessions (one user per 1,000) through the
//! `portcullis::store::Store` trait, as the gateway would have written them, and writes
//! the first K session ids (cookie values) to FILE, one per line.
//!
//! The sessions carry no provider tokens: the gateway treats them as signed in and
//! never finds a refresh due, so a benchmark measures the lookup, not the provider.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use portcullis::clock::{Clock, SystemClock, UnixTime};
use portcullis::config::StoreLocation;
use portcullis::session::{SessionId, new_uuid};
use portcullis::store::{NewSession, Store, TokenSet, User, UserProfile};

/// Sessions per user.
const SESSIONS_PER_USER: u64 = 1_000;
/// Store calls in flight at once.
const IN_FLIGHT: u64 = 32;
/// A seeded session was signed in this long ago: its first request touches it (the
/// idle deadline slides), as happens to any session not seen for a while.
const SIGNED_IN_AGO: i64 = 3_600;
const DAY: i64 = 86_400;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread();
    let main = async { run().await.map_err(|e| format!("seed: {e}")) };
    portcullis_bench::exit_with(portcullis_bench::block_on("seed", runtime, main))
}

async fn run() -> Result<(), BoxError> {
    let args = portcullis_bench::args::Args::from_env(
        "seed",
        &["store", "prefix", "count", "cookies", "write", "issuer"],
    )?;
    let location = StoreLocation::parse(&args.required::<String>("store")?)?;
    let prefix: String = args
        .optional("prefix")?
        .unwrap_or_else(|| "portcullis".into());
    let count: u64 = args.required("count")?;
    let cookies: std::path::PathBuf = args.required("cookies")?;
    let write: u64 = args.required("write")?;
    let issuer: String = args
        .optional("issuer")?
        .unwrap_or_else(|| "http://127.0.0.1/portcullis-bench".into());
    if write > count {
        return Err(format!("--write {write} is more than --count {count}").into());
    }

    portcullis::install_crypto_provider();
    let store = portcullis::store::open(&location, &prefix).await?;
    let now = SystemClock.now();
    let started = Instant::now();

    let users = create_users(&*store, &issuer, count.div_ceil(SESSIONS_PER_USER), now).await?;
    // The ids whose cookies are written out are chosen first; the rest are made as needed.
    let kept: Arc<Vec<SessionId>> = Arc::new((0..write).map(|_| SessionId::generate()).collect());

    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let users = Arc::new(users);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (store, next, done, users, kept) = (
            store.clone(),
            next.clone(),
            done.clone(),
            users.clone(),
            kept.clone(),
        );
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), BoxError>(());
                }
                let id = kept
                    .get(i as usize)
                    .cloned()
                    .unwrap_or_else(SessionId::generate);
                let user = &users[(i / SESSIONS_PER_USER) as usize];
                store.create_session(&new_session(&id, user, now)).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    loop {
        tokio::select! {
            finished = workers.join_next() => match finished {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(e.into()),
            },
            _ = progress.tick() => report(done.load(Ordering::Relaxed), count, started),
        }
    }
    report(count, count, started);

    write_cookies(&cookies, &kept)?;
    eprintln!(
        "seed: {count} session(s) for {} user(s) in {}; {write} cookie(s) in {}",
        users.len(),
        location.describe(),
        cookies.display()
    );
    Ok(())
}

/// The kept sessions' cookies, one a line.
fn write_cookies(path: &std::path::Path, kept: &[SessionId]) -> Result<(), BoxError> {
    let mut text = String::with_capacity(kept.len() * 44);
    for id in kept {
        text.push_str(id.expose());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

async fn create_users(
    store: &dyn Store,
    issuer: &str,
    count: u64,
    now: UnixTime,
) -> Result<Vec<User>, BoxError> {
    let mut users = Vec::with_capacity(count as usize);
    for n in 0..count {
        let profile = UserProfile {
            email: Some(format!("bench{n}@example.com")),
            name: Some(format!("Bench User {n}")),
        };
        users.push(
            store
                .upsert_user(issuer, &format!("bench-{n}"), &profile, now)
                .await?,
        );
    }
    Ok(users)
}

/// A session like one a sign-in creates, minus the provider tokens.
fn new_session(id: &SessionId, user: &User, now: UnixTime) -> NewSession {
    let email = user.email.as_deref().unwrap_or_default();
    let name = user.name.as_deref().unwrap_or_default();
    NewSession {
        family_id: new_uuid(),
        id_hash: id.hash(),
        user_id: user.id,
        provider_sid: None,
        created_at: now - SIGNED_IN_AGO,
        idle_expires_at: now + 2 * DAY,
        absolute_expires_at: now + 30 * DAY,
        tokens: TokenSet::default(),
        user_agent: Some("portcullis-bench seed".into()),
        // The claims a sign-in keeps (ID token and UserInfo), as the identity headers read them.
        claims: format!(
            r#"{{"sub":"{}","email":"{email}","email_verified":true,"name":"{name}"}}"#,
            user.subject
        ),
        email_verified: true,
        provider_id: "default".into(),
    }
}

fn report(done: u64, count: u64, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "seed: {done}/{count} sessions ({:.0}/s)",
        done as f64 / seconds.max(0.001)
    );
}
