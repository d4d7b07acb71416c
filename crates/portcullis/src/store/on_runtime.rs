//! A store whose calls from serving threads run on the main runtime.
//!
//! Each serving thread of `serve_on_threads` is a single-threaded runtime. A database or
//! Redis connection is driven by the runtime that opened it: opened by a serving thread,
//! it would make progress only when that thread gets round to its reactor (under load:
//! late), and it would die with that thread at shutdown while another thread still
//! drains. So calls made on a serving thread are run as a task on the main runtime,
//! where every store connection lives; calls made anywhere else run in place. Each call
//! is timed (`portcullis_store_operation_duration_seconds`). The
//! session cache sits in front of this adapter: a cache hit never leaves its thread.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::runtime::Handle;
use uuid::Uuid;

use super::{
    ChangeFeed, IdHash, IdentityKind, LoginTransaction, NewSession, SessionRecord,
    SigningKeyRecord, Store, StoreError, StoreResult, TokenSet, TransactionLimits, User,
    UserProfile,
};
use crate::clock::UnixTime;

#[derive(Debug)]
pub struct OnRuntime {
    inner: Arc<dyn Store>,
    runtime: Handle,
}

impl OnRuntime {
    /// `inner`'s calls from serving threads go to `runtime`.
    pub fn wrap(inner: Arc<dyn Store>, runtime: Handle) -> Arc<dyn Store> {
        Arc::new(Self { inner, runtime })
    }

    /// Runs the store's method `operation`, timed for
    /// `portcullis_store_operation_duration_seconds`.
    async fn run<T, F, Fut>(&self, operation: &'static str, call: F) -> StoreResult<T>
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = StoreResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        let start = tokio::time::Instant::now();
        let work = call(self.inner.clone());
        let result = if !crate::threads::is_serving_thread() {
            work.await
        } else {
            match self.runtime.spawn(work).await {
                Ok(result) => result,
                Err(e) => Err(StoreError::Unavailable(format!(
                    "the store call was cut short: {e}"
                ))),
            }
        };
        crate::metrics::store_operation(operation, start.elapsed());
        result
    }
}

#[async_trait]
impl Store for OnRuntime {
    async fn ping(&self) -> StoreResult<()> {
        self.run("ping", |s| async move { s.ping().await }).await
    }

    fn feed(&self) -> &ChangeFeed {
        self.inner.feed()
    }

    async fn upsert_identity(
        &self,
        issuer: &str,
        kind: IdentityKind,
        subject: &str,
        profile: Option<&UserProfile>,
        now: UnixTime,
    ) -> StoreResult<User> {
        let (issuer, subject, profile) = (issuer.to_owned(), subject.to_owned(), profile.cloned());
        self.run("upsert_identity", |s| async move {
            s.upsert_identity(&issuer, kind, &subject, profile.as_ref(), now)
                .await
        })
        .await
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        self.run("get_user", |s| async move { s.get_user(id).await })
            .await
    }

    async fn list_users(&self, after: Option<Uuid>, limit: u32) -> StoreResult<Vec<User>> {
        self.run(
            "list_users",
            |s| async move { s.list_users(after, limit).await },
        )
        .await
    }

    async fn import_user(&self, user: &User) -> StoreResult<bool> {
        let user = user.clone();
        self.run("import_user", |s| async move { s.import_user(&user).await })
            .await
    }

    async fn create_session(&self, session: &NewSession) -> StoreResult<()> {
        let session = session.clone();
        self.run("create_session", |s| async move {
            s.create_session(&session).await
        })
        .await
    }

    async fn get_session(&self, id_hash: &IdHash) -> StoreResult<Option<SessionRecord>> {
        let id_hash = id_hash.clone();
        self.run(
            "get_session",
            |s| async move { s.get_session(&id_hash).await },
        )
        .await
    }

    async fn get_session_fresh(&self, id_hash: &IdHash) -> StoreResult<Option<SessionRecord>> {
        let id_hash = id_hash.clone();
        self.run("get_session_fresh", |s| async move {
            s.get_session_fresh(&id_hash).await
        })
        .await
    }

    async fn touch_session(
        &self,
        family_id: Uuid,
        last_seen_at: UnixTime,
        idle_expires_at: UnixTime,
        seen: Option<&IdHash>,
    ) -> StoreResult<bool> {
        let seen = seen.cloned();
        self.run("touch_session", |s| async move {
            s.touch_session(family_id, last_seen_at, idle_expires_at, seen.as_ref())
                .await
        })
        .await
    }

    async fn update_tokens(
        &self,
        family_id: Uuid,
        expected_version: i64,
        tokens: &TokenSet,
    ) -> StoreResult<bool> {
        let tokens = tokens.clone();
        self.run("update_tokens", |s| async move {
            s.update_tokens(family_id, expected_version, &tokens).await
        })
        .await
    }

    async fn rotate_session_id(
        &self,
        family_id: Uuid,
        expected_version: i64,
        new_id_hash: &IdHash,
        previous_valid_until: UnixTime,
        handover: &str,
        tokens: &TokenSet,
        keep_previous: bool,
    ) -> StoreResult<bool> {
        let (new_id_hash, handover, tokens) =
            (new_id_hash.clone(), handover.to_owned(), tokens.clone());
        self.run("rotate_session_id", |s| async move {
            s.rotate_session_id(
                family_id,
                expected_version,
                &new_id_hash,
                previous_valid_until,
                &handover,
                &tokens,
                keep_previous,
            )
            .await
        })
        .await
    }

    async fn update_claims(
        &self,
        family_id: Uuid,
        claims: &str,
        email_verified: bool,
    ) -> StoreResult<bool> {
        let claims = claims.to_owned();
        self.run("update_claims", |s| async move {
            s.update_claims(family_id, &claims, email_verified).await
        })
        .await
    }

    async fn import_session(&self, session: &SessionRecord) -> StoreResult<bool> {
        let session = session.clone();
        self.run("import_session", |s| async move {
            s.import_session(&session).await
        })
        .await
    }

    async fn delete_session(&self, family_id: Uuid) -> StoreResult<bool> {
        self.run("delete_session", |s| async move {
            s.delete_session(family_id).await
        })
        .await
    }

    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
        self.run("delete_user_sessions", |s| async move {
            s.delete_user_sessions(user_id).await
        })
        .await
    }

    async fn delete_sessions_by_provider_sid(&self, issuer: &str, sid: &str) -> StoreResult<u64> {
        let (issuer, sid) = (issuer.to_owned(), sid.to_owned());
        self.run("delete_sessions_by_provider_sid", |s| async move {
            s.delete_sessions_by_provider_sid(&issuer, &sid).await
        })
        .await
    }

    async fn delete_sessions_by_subject(&self, issuer: &str, subject: &str) -> StoreResult<u64> {
        let (issuer, subject) = (issuer.to_owned(), subject.to_owned());
        self.run("delete_sessions_by_subject", |s| async move {
            s.delete_sessions_by_subject(&issuer, &subject).await
        })
        .await
    }

    async fn delete_all_sessions(&self) -> StoreResult<u64> {
        self.run("delete_all_sessions", |s| async move {
            s.delete_all_sessions().await
        })
        .await
    }

    async fn list_sessions(
        &self,
        user_id: Option<Uuid>,
        now: UnixTime,
    ) -> StoreResult<Vec<SessionRecord>> {
        self.run("list_sessions", |s| async move {
            s.list_sessions(user_id, now).await
        })
        .await
    }

    async fn put_transaction(
        &self,
        tx: &LoginTransaction,
        limits: TransactionLimits,
    ) -> StoreResult<bool> {
        let tx = tx.clone();
        self.run("put_transaction", |s| async move {
            s.put_transaction(&tx, limits).await
        })
        .await
    }

    async fn take_transaction(&self, state_hash: &str) -> StoreResult<Option<LoginTransaction>> {
        let state_hash = state_hash.to_owned();
        self.run("take_transaction", |s| async move {
            s.take_transaction(&state_hash).await
        })
        .await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.run("acquire_lease", |s| async move {
            s.acquire_lease(&key, &holder, now, until).await
        })
        .await
    }

    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.run("renew_lease", |s| async move {
            s.renew_lease(&key, &holder, now, until).await
        })
        .await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> StoreResult<()> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.run("release_lease", |s| async move {
            s.release_lease(&key, &holder).await
        })
        .await
    }

    async fn remember_once(&self, key: &str, now: UnixTime, until: UnixTime) -> StoreResult<bool> {
        let key = key.to_owned();
        self.run("remember_once", |s| async move {
            s.remember_once(&key, now, until).await
        })
        .await
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        let key = key.to_owned();
        self.run("forget", |s| async move { s.forget(&key).await })
            .await
    }

    async fn add_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        let key = key.clone();
        self.run("add_signing_key", |s| async move {
            s.add_signing_key(&key).await
        })
        .await
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        self.run("signing_keys", |s| async move { s.signing_keys().await })
            .await
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_owned();
        self.run("get_setting", |s| async move { s.get_setting(&key).await })
            .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run("put_setting", |s| async move {
            s.put_setting(&key, &value).await
        })
        .await
    }

    async fn add_setting(&self, key: &str, value: &str) -> StoreResult<bool> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run("add_setting", |s| async move {
            s.add_setting(&key, &value).await
        })
        .await
    }

    async fn delete_setting(&self, key: &str) -> StoreResult<bool> {
        let key = key.to_owned();
        self.run(
            "delete_setting",
            |s| async move { s.delete_setting(&key).await },
        )
        .await
    }

    async fn delete_signing_key(&self, generation: i64) -> StoreResult<bool> {
        self.run("delete_signing_key", |s| async move {
            s.delete_signing_key(generation).await
        })
        .await
    }

    async fn purge_expired(&self, now: UnixTime) -> StoreResult<u64> {
        self.run(
            "purge_expired",
            |s| async move { s.purge_expired(now).await },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    /// Called from a serving thread, every call runs on the main runtime, on one of its
    /// own threads, and the store behaves exactly as without the adapter.
    #[test]
    fn calls_from_serving_threads_run_on_the_main_runtime() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("main-runtime")
            .enable_all()
            .build()
            .unwrap();
        let inner = main.block_on(SqliteStore::in_memory()).unwrap();
        let store = OnRuntime::wrap(Arc::new(inner), main.handle().clone());
        std::thread::spawn(move || {
            crate::threads::mark_serving_thread();
            let serving = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            serving.block_on(async {
                let adapter = OnRuntime {
                    inner: store.clone(),
                    runtime: main.handle().clone(),
                };
                let ran_on = adapter
                    .run("ping", |_| async {
                        Ok(std::thread::current().name().map(str::to_owned))
                    })
                    .await
                    .unwrap();
                assert_eq!(ran_on.as_deref(), Some("main-runtime"));
                crate::store::conformance::run_all(&*store).await;
            });
        })
        .join()
        .unwrap();
    }
}
