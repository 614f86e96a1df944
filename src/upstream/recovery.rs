//! Finding out that a Redis the breaker gave up on is back (breaker step 4).

use std::sync::Arc;
use std::time::Duration;

use super::Upstream;
use crate::breaker::{State, is_unusable};

/// While the breaker is not closed, PINGs the upstream every 100 ms on a new connection and
/// closes the breaker at the first usable answer (breaker step 4): recovery takes a probe's
/// round trip after Redis is back, not what is left of the open period. Runs until aborted.
pub async fn recover(up: Arc<Upstream>) {
    const EVERY: Duration = Duration::from_millis(100);
    loop {
        up.breaker.until_open().await;
        while up.breaker.state() != State::Closed {
            tokio::time::sleep(EVERY).await;
            if let Some(reply) = up.answers_ping(up.connect_timeout).await
                && !is_unusable(&reply)
            {
                up.breaker.recovered();
                // Shared connections waiting out a reconnection delay dial now.
                up.back.notify_waiters();
            }
        }
    }
}
