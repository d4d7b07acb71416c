//! The gateway's DPoP key (`provider.dpop = "on"`, RFC 9449): one EC P-256 key sealed
//! in the store under the setting `dpop_key`, shared by every instance, so that a token
//! bound to it on one instance is usable on all of them, and never replaced implicitly
//! (a new key would strand every token bound to the old one).
//!
//! G08's rules for sealed keys (docs/security.md): a stored key that this key ring
//! cannot open counts as absent for this instance and is never deleted or overwritten
//! (instances on the other ring still use it); this instance then uses the key of its
//! own sealing key (`dpop_key.{sealing id}`), which instances on the same ring share.
//! Creation is insert-if-absent and the stored value is read back, so instances racing
//! to create it agree on the first.
//!
//! A rotated ring (a new key in front, the old one kept) is no reason for a new key: a
//! ring that opens the shared key only with an older key seals a copy under its own
//! sealing key (`dpop_key.{sealing id}`, insert-if-absent), at load and at a reload, so
//! that once the old key leaves the ring it still finds the same key.

use std::sync::Arc;

use super::seal::{KeyRing, Sealed};
use super::{SessionError, Sessions};
use crate::jose::dpop::DpopKey;
use crate::store::Store;

/// The setting that holds the shared, sealed key.
const SETTING: &str = "dpop_key";

/// What the sealed key is bound to (a ciphertext moved from another setting fails).
const CONTEXT: &[u8] = b"portcullis dpop key";

impl Sessions {
    /// The gateway's DPoP key when `wanted` (a token bound before `provider.dpop` was
    /// turned off still needs it).
    pub(crate) async fn dpop_key_if(
        &self,
        wanted: bool,
    ) -> Result<Option<Arc<DpopKey>>, SessionError> {
        if !wanted {
            return Ok(None);
        }
        let ring = self.keys();
        let key = self
            .dpop
            .get_or_try_init(|| load(&*self.store, &ring))
            .await?;
        Ok(Some(key.clone()))
    }
}

impl Sessions {
    /// A DPoP proof for relaying a bound token with `method` to `path` at the upstream.
    pub(crate) async fn relay_proof(
        &self,
        method: &str,
        path: &str,
        token: &str,
        now: crate::clock::UnixTime,
    ) -> Result<String, SessionError> {
        let Some(key) = self.dpop_key_if(true).await? else {
            return Err(SessionError::DpopKey("no DPoP key".into()));
        };
        let htu = self.relay_htu(path);
        let nonce = self.relay_nonces.get(&self.config.public_origin());
        key.proof(method, &htu, nonce.as_deref(), Some(token), now)
            .map_err(|e| SessionError::DpopKey(e.to_string()))
    }

    /// Keeps the `DPoP-Nonce` an upstream answer to a relayed request carried, for
    /// the next proof (RFC 9449 §9).
    pub fn upstream_dpop_nonce(&self, nonce: &str) {
        self.relay_nonces
            .remember_value(&self.config.public_origin(), nonce);
    }

    /// `htu` of a relayed request: the public origin and the decided path.
    fn relay_htu(&self, path: &str) -> String {
        format!("{}{path}", self.config.public_origin())
    }
}

/// How a session keeps its access token: a DPoP-bound one behind `DPoP `, a bearer
/// token as it is (an access token holds no space: RFC 6750 §2.1, RFC 9449 §7.1).
pub(crate) fn stored_access_token(token: &str, bound: bool) -> std::borrow::Cow<'_, str> {
    if bound {
        format!("{BOUND_PREFIX}{token}").into()
    } else {
        token.into()
    }
}

/// A session's access token, opened: the token, and whether it is DPoP-bound.
pub(crate) fn read_access_token(
    mut stored: zeroize::Zeroizing<String>,
) -> (zeroize::Zeroizing<String>, bool) {
    if stored.starts_with(BOUND_PREFIX) {
        stored.drain(..BOUND_PREFIX.len());
        (stored, true)
    } else {
        (stored, false)
    }
}

const BOUND_PREFIX: &str = "DPoP ";

impl Sessions {
    /// `portcullis keys prune` (G08): whether the shared DPoP key is sealed under a key
    /// this ring lacks. With `delete` it goes, and this ring's own key, if it made one,
    /// takes its place (instances on this ring already use that key).
    pub async fn prune_dpop_key(&self, delete: bool) -> Result<bool, SessionError> {
        prune(&*self.store, &self.keys(), delete).await
    }
}

async fn prune(store: &dyn Store, ring: &KeyRing, delete: bool) -> Result<bool, SessionError> {
    let Some(shared) = store.get_setting(SETTING).await? else {
        return Ok(false);
    };
    if ring.holds_key_of(&Sealed::from_stored(shared)) {
        return Ok(false);
    }
    if delete {
        let own = format!("{SETTING}.{}", ring.sealing_id());
        match store.get_setting(&own).await? {
            Some(value) => {
                store.put_setting(SETTING, &value).await?;
                store.delete_setting(&own).await?;
            }
            None => {
                store.delete_setting(SETTING).await?;
            }
        }
    }
    Ok(true)
}

/// What the store holds for this key ring, for `doctor` (G08).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// No DPoP key yet: the first sign-in makes it.
    Absent,
    /// The shared key, and it opens with this ring.
    Shared,
    /// The shared key is sealed under a key this ring lacks: this ring uses its own
    /// (`made`: already in the store).
    OwnKey { made: bool },
    /// A stored key this ring should open does not.
    Broken,
}

/// Reads, never makes, the DPoP key this ring would use.
pub async fn key_state(store: &dyn Store, ring: &KeyRing) -> Result<KeyState, SessionError> {
    let Some(shared) = store.get_setting(SETTING).await? else {
        return Ok(KeyState::Absent);
    };
    let opens = |stored: &str| {
        let sealed = Sealed::from_stored(stored.to_owned());
        ring.open(&sealed, CONTEXT)
            .ok()
            .and_then(|pem| DpopKey::from_pem(&pem).ok())
            .is_some()
    };
    let sealed = Sealed::from_stored(shared.clone());
    if ring.holds_key_of(&sealed) {
        return Ok(if opens(&shared) {
            KeyState::Shared
        } else {
            KeyState::Broken
        });
    }
    let own = format!("{SETTING}.{}", ring.sealing_id());
    Ok(match store.get_setting(&own).await? {
        None => KeyState::OwnKey { made: false },
        Some(stored) if opens(&stored) => KeyState::OwnKey { made: true },
        Some(_) => KeyState::Broken,
    })
}

/// Reads the shared key, making it when the store has none.
pub(crate) async fn load(store: &dyn Store, ring: &KeyRing) -> Result<Arc<DpopKey>, SessionError> {
    let own = format!("{SETTING}.{}", ring.sealing_id());
    for name in [SETTING, own.as_str()] {
        if let Some(key) = open_or_create(store, ring, name).await? {
            return Ok(Arc::new(key));
        }
    }
    Err(SessionError::DpopKey(
        "no stored DPoP key opens with this key ring".into(),
    ))
}

/// The key under `name`, made if absent; `None` when it was sealed under a key this
/// ring lacks (left as it is).
async fn open_or_create(
    store: &dyn Store,
    ring: &KeyRing,
    name: &str,
) -> Result<Option<DpopKey>, SessionError> {
    let stored = match store.get_setting(name).await? {
        Some(stored) => stored,
        None => {
            let (key, pem) =
                DpopKey::generate().map_err(|e| SessionError::DpopKey(e.to_string()))?;
            let sealed = ring.seal(pem.as_bytes(), CONTEXT);
            if store.add_setting(name, sealed.as_stored()).await? {
                tracing::info!(
                    jkt = key.jkt(),
                    setting = name,
                    "made the gateway's DPoP key"
                );
            }
            // Another instance may have won the race: its key is the one.
            store
                .get_setting(name)
                .await?
                .ok_or_else(|| SessionError::DpopKey("the stored DPoP key vanished".into()))?
        }
    };
    let sealed = Sealed::from_stored(stored);
    if !ring.holds_key_of(&sealed) {
        tracing::warn!(
            setting = name,
            "the stored DPoP key is sealed under a key this key ring lacks (a new secret?); it is left for the instances that can open it"
        );
        return Ok(None);
    }
    let pem = ring
        .open(&sealed, CONTEXT)
        .map_err(|_| SessionError::DpopKey("the stored DPoP key does not open".into()))?;
    let key = DpopKey::from_pem(&pem).map_err(|e| SessionError::DpopKey(e.to_string()))?;
    if !ring.sealed_with_sealing_key(&sealed) {
        reseal(store, ring, &key).await?;
    }
    Ok(Some(key))
}

/// Keeps a copy of `key` sealed under `ring`'s sealing key (unless one is there), for
/// when the key that sealed the shared copy leaves the ring.
pub(crate) async fn reseal(
    store: &dyn Store,
    ring: &KeyRing,
    key: &DpopKey,
) -> Result<(), SessionError> {
    let own = format!("{SETTING}.{}", ring.sealing_id());
    store
        .add_setting(&own, ring.seal(key.pem(), CONTEXT).as_stored())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretKeys;
    use crate::store::sqlite::SqliteStore;

    fn ring(bytes: &[u8]) -> KeyRing {
        KeyRing::new(&SecretKeys(
            bytes
                .iter()
                .map(|b| zeroize::Zeroizing::new([*b; 32]))
                .collect(),
        ))
        .unwrap()
    }

    async fn store() -> Arc<dyn Store> {
        crate::install_crypto_provider();
        Arc::new(SqliteStore::in_memory().await.unwrap())
    }

    #[tokio::test]
    async fn the_first_key_is_made_once_and_shared() {
        let store = store().await;
        let ring = ring(&[1]);
        let a = load(&*store, &ring).await.unwrap();
        let b = load(&*store, &ring).await.unwrap();
        assert_eq!(
            a.jkt(),
            b.jkt(),
            "a second instance reads the first one's key"
        );
        assert!(store.get_setting(SETTING).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_new_secret_leaves_the_old_key_and_uses_its_own() {
        let store = store().await;
        let old = ring(&[1]);
        let new = ring(&[2]);
        let before = load(&*store, &old).await.unwrap();
        let stored = store.get_setting(SETTING).await.unwrap();
        let after = load(&*store, &new).await.unwrap();
        assert_ne!(before.jkt(), after.jkt());
        assert_eq!(
            store.get_setting(SETTING).await.unwrap(),
            stored,
            "the key the new ring cannot open is never replaced (G08)"
        );
        // Both rings keep their own key.
        assert_eq!(load(&*store, &old).await.unwrap().jkt(), before.jkt());
        assert_eq!(load(&*store, &new).await.unwrap().jkt(), after.jkt());
    }

    #[tokio::test]
    async fn a_ring_that_holds_the_old_key_keeps_the_shared_key() {
        let store = store().await;
        let before = load(&*store, &ring(&[1])).await.unwrap();
        // A new sealing key in front, the old one kept to open what it sealed.
        let after = load(&*store, &ring(&[2, 1])).await.unwrap();
        assert_eq!(
            before.jkt(),
            after.jkt(),
            "a rotated ring is no reason for a new DPoP key"
        );
    }

    /// The documented rotation: a new key in front, later the old one dropped — the
    /// same DPoP key all along, so tokens bound to it keep working.
    #[tokio::test]
    async fn a_rotated_ring_keeps_the_key_after_the_old_secret_leaves() {
        let store = store().await;
        let first = load(&*store, &ring(&[1])).await.unwrap();
        let rotated = load(&*store, &ring(&[2, 1])).await.unwrap();
        assert_eq!(rotated.jkt(), first.jkt());
        let after = load(&*store, &ring(&[2])).await.unwrap();
        assert_eq!(
            after.jkt(),
            first.jkt(),
            "the copy sealed during the rotation"
        );
        // The shared copy is untouched (instances on the old ring still read it).
        assert_eq!(load(&*store, &ring(&[1])).await.unwrap().jkt(), first.jkt());
    }

    #[tokio::test]
    async fn doctor_sees_which_key_a_ring_uses() {
        let store = store().await;
        assert_eq!(
            key_state(&*store, &ring(&[1])).await.unwrap(),
            KeyState::Absent
        );
        load(&*store, &ring(&[1])).await.unwrap();
        assert_eq!(
            key_state(&*store, &ring(&[1])).await.unwrap(),
            KeyState::Shared
        );
        assert_eq!(
            key_state(&*store, &ring(&[2])).await.unwrap(),
            KeyState::OwnKey { made: false }
        );
        load(&*store, &ring(&[2])).await.unwrap();
        assert_eq!(
            key_state(&*store, &ring(&[2])).await.unwrap(),
            KeyState::OwnKey { made: true }
        );
    }

    #[tokio::test]
    async fn prune_removes_only_a_key_the_ring_cannot_open_and_keeps_the_rings_own() {
        let store = store().await;
        let old = load(&*store, &ring(&[1])).await.unwrap();
        assert!(
            !prune(&*store, &ring(&[1]), true).await.unwrap(),
            "it opens"
        );
        assert_eq!(load(&*store, &ring(&[1])).await.unwrap().jkt(), old.jkt());
        let own = load(&*store, &ring(&[2])).await.unwrap();
        assert!(prune(&*store, &ring(&[2]), false).await.unwrap());
        assert!(
            store.get_setting(SETTING).await.unwrap().is_some(),
            "a dry run"
        );
        assert!(prune(&*store, &ring(&[2]), true).await.unwrap());
        // The ring's own key is now the shared one: the same key, for every instance.
        assert_eq!(
            key_state(&*store, &ring(&[2])).await.unwrap(),
            KeyState::Shared
        );
        assert_eq!(load(&*store, &ring(&[2])).await.unwrap().jkt(), own.jkt());
        assert_eq!(
            store
                .get_setting(&format!("{SETTING}.{}", ring(&[2]).sealing_id()))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_key_moved_from_another_setting_does_not_open() {
        let store = store().await;
        let ring = ring(&[1]);
        let (_, pem) = DpopKey::generate().unwrap();
        let elsewhere = ring.seal(pem.as_bytes(), b"another context");
        store
            .put_setting(SETTING, elsewhere.as_stored())
            .await
            .unwrap();
        assert!(matches!(
            load(&*store, &ring).await,
            Err(SessionError::DpopKey(_))
        ));
    }
}
