//! The change feed over LISTEN/NOTIFY: the listening connection, judged dead by
//! silence, and this instance's heartbeat.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::store::feed::HEARTBEAT_EVERY;
use crate::store::{ChangeFeed, STORE_TIMEOUT};

/// Silence on the LISTEN connection after which it is presumed dead.
const FEED_SILENCE: Duration = Duration::from_secs(3);

/// Carries notifications to the feed. A dropped connection (`try_recv` → `None`) or a
/// failed reconnect is a reset; `try_recv` reconnects and listens again on the next call.
pub(super) async fn listen(pool: PgPool, channel: String, feed: ChangeFeed) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Connecting and LISTEN are outbound calls like any other: bounded.
        let connected = tokio::time::timeout(STORE_TIMEOUT, async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        })
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "the PostgreSQL change feed cannot connect; retrying");
                feed.connection_lost();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // `try_recv` reconnects (and LISTENs again) right after reporting a loss.
        listener.eager_reconnect(true);
        // Whatever was sent before this LISTEN is unknown to us.
        feed.connection_lost();
        loop {
            let Ok(received) = tokio::time::timeout(FEED_SILENCE, listener.try_recv()).await else {
                tracing::warn!("the PostgreSQL change feed went silent; reconnecting");
                feed.connection_lost();
                break;
            };
            match received {
                Ok(Some(note)) => {
                    backoff = Duration::from_millis(100);
                    feed.deliver_text(note.payload());
                }
                Ok(None) => {
                    tracing::warn!("the PostgreSQL change feed lost its connection; caches reset");
                    feed.connection_lost();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the PostgreSQL change feed failed; reconnecting");
                    feed.connection_lost();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
        }
    }
}

/// Sends this instance's heartbeat through the feed every 250 ms.
pub(super) async fn heartbeat(pool: PgPool, channel: String, feed: ChangeFeed) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = tokio::time::timeout(
            STORE_TIMEOUT,
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&channel)
                .bind(feed.heartbeat_text())
                .execute(&pool),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::debug!("a change-feed heartbeat could not be sent");
        }
    }
}
