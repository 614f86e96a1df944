//! Reads the upstream's `COMMAND` (its own description of every command it knows), for the
//! command table to learn what it does not name (`command/learned.rs`).

use bytes::Bytes;

use super::handshake::exchange;
use super::{PoolKey, Upstream};
use crate::framing::encode_command;

impl Upstream {
    /// The reply to `COMMAND` on a connection of its own; `None` when it cannot be read.
    pub async fn read_commands(&self) -> Option<Bytes> {
        let reply = self
            .within("COMMAND", async {
                let mut stream = self.connect(PoolKey::default()).await.map_err(|e| e.to_string())?;
                exchange(&mut stream, &encode_command(&["cOMMAND"]), 1).await
            })
            .await;
        reply.ok()?.pop()
    }
}
