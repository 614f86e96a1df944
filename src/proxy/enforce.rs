//! TTL enforcement in the session: what a write becomes on the shared pool or on the pinned
//! connection, and the bookkeeping that keeps EXEC's reply the client's.

use bytes::Bytes;

use super::{Env, Session};
use crate::command::{Class, Command, Effect};
use crate::framing::CommandView;
use crate::ttl::{self, Plan, Rewrite, Shape};

impl Session {
    /// TTL enforcement on the pinned connection (before the pin state follows `class`). The
    /// proxy's commands go right after the client's; in a transaction they are queued with it
    /// and EXEC's reply loses their elements. A stream connection is not enforced (its replies
    /// go to the client as they come).
    pub(super) fn enforce_ttl_pinned(
        &mut self,
        class: Class,
        cmd: &CommandView<'_>,
        command: &Command,
        env: &Env<'_>,
    ) -> Result<Option<Rewrite>, Bytes> {
        if self.pin.stream {
            return Ok(None);
        }
        // The transaction's bookkeeping, with or without TTL rules: a refusal (deny_commands,
        // TTL enforcement) aborts EXEC, as Redis aborts a transaction it refused to queue into;
        // a new MULTI, DISCARD or RESET starts clean.
        match class {
            Class::Multi if !self.pin.in_multi => self.forget_transaction(),
            Class::Discard | Class::Reset if self.pin.in_multi => self.forget_transaction(),
            Class::Exec if self.pin.in_multi && self.refused_in_multi => {
                self.forget_transaction();
                let discard = Bytes::from_static(b"*1\r\n$7\r\nDISCARD\r\n");
                return Ok(Some(Rewrite { bytes: Some(discard), shape: Some(Shape::Discarded) }));
            }
            _ => {}
        }
        if !env.policy.enforces_ttl() {
            return Ok(None);
        }
        if !self.pin.in_multi {
            return Ok(enforce_ttl(cmd, command, env)?.map(Plan::trailing));
        }
        Ok(match class {
            // Not queued: run at once (MULTI, WATCH: errors) or ending the transaction.
            Class::Multi | Class::Watch | Class::Quit | Class::Discard | Class::Reset => None,
            Class::Exec => {
                let visible = std::mem::take(&mut self.queued);
                visible.contains(&false).then_some(Rewrite { bytes: None, shape: Some(Shape::Exec(visible)) })
            }
            _ => {
                let plan = enforce_ttl(cmd, command, env).inspect_err(|_| self.refused_in_multi = true)?;
                self.queued.push(true);
                self.queued.extend(std::iter::repeat_n(false, plan.as_ref().map_or(0, Plan::hidden)));
                plan.map(Plan::trailing)
            }
        })
    }

    /// The transaction ended (or never was): no queued commands, nothing refused.
    pub(super) fn forget_transaction(&mut self) {
        self.queued.clear();
        self.refused_in_multi = false;
    }
}

/// TTL enforcement for a command: what to send instead, or the refusal to answer.
pub(super) fn enforce_ttl(cmd: &CommandView<'_>, command: &Command, env: &Env<'_>) -> Result<Option<Plan>, Bytes> {
    if !env.policy.enforces_ttl() || !matches!(command.effect(cmd), Effect::Writes(_)) {
        return Ok(None);
    }
    ttl::plan(cmd, command.spec.ttl, env.policy, env.ttl, ttl::wall_clock_ms()).map_err(|refused| refused.to_reply())
}
