//! CLIENT LIST, CLIENT INFO and CLIENT KILL, answered from the proxy's own client table
//! (`client_table.rs`): clients see the proxy's clients as they would see Redis's, and kill
//! them by id, address, user or type.

use bytes::Bytes;

use super::{Env, Session};
use crate::client_table::{Listed, Row, command_name, is_container};
use crate::command::Command;
use crate::error::ProxyError;
use crate::framing::{CommandView, parse_int};
use crate::reply::ReplyWriter;

/// One `CLIENT KILL` filter.
enum Filter {
    Id(u64),
    Addr(Vec<u8>),
    Laddr(Vec<u8>),
    User(Vec<u8>),
    /// normal, pubsub (the proxy has no replica or master clients).
    Type(bool),
    None,
    MaxAge(u64),
}

impl Session {
    /// Remembers the command for CLIENT LIST's `cmd` (a subcommand only for container commands).
    /// Allocates only for a container command or one the table does not name.
    pub(super) fn note_command(&mut self, command: &Command, cmd: &CommandView<'_>) {
        let name = command.spec.name;
        self.last_name = name;
        if name == "other" || (command.spec.arity < 0 && is_container(name)) {
            self.last_sub = Some(Bytes::from(command_name(cmd.arg(0).unwrap_or_default(), cmd.arg(1))));
        } else if self.last_sub.is_some() {
            self.last_sub = None;
        }
    }

    /// Follows the subscription counts in Redis's (un)subscribe confirmations, which carry the
    /// client's total of channels and patterns (shard channels apart).
    pub fn note_subscription(&mut self, reply: &[u8]) {
        const KINDS: [(&[u8], usize); 6] = [
            (b"$9\r\nsubscribe\r\n", 0),
            (b"$11\r\nunsubscribe\r\n", 0),
            (b"$10\r\npsubscribe\r\n", 1),
            (b"$12\r\npunsubscribe\r\n", 1),
            (b"$10\r\nssubscribe\r\n", 2),
            (b"$12\r\nsunsubscribe\r\n", 2),
        ];
        let Some(rest) = reply.strip_prefix(b"*3\r\n").or_else(|| reply.strip_prefix(b">3\r\n")) else { return };
        let Some(&(_, kind)) = KINDS.iter().find(|(prefix, _)| rest.starts_with(prefix)) else { return };
        let Some(count) = reply
            .strip_suffix(b"\r\n")
            .and_then(|r| r.iter().rposition(|&c| c == b':').map(|at| &r[at + 1..]))
            .and_then(parse_int)
            .and_then(|n| u32::try_from(n).ok())
        else {
            return;
        };
        let s = &mut self.subscriptions;
        match kind {
            0 => s[0] = count.saturating_sub(s[1]),
            1 => s[1] = count.saturating_sub(s[0]),
            _ => s[2] = count,
        }
    }

    /// Writes what the session is into its row of the client table (`env_user`: the proxy
    /// user's name; a Redis ACL login on the session's own connection shows instead).
    pub fn fill_row(&self, row: &mut Row, env_user: &str) {
        let env_user = match &self.redis_user {
            Some(user) => std::str::from_utf8(user).unwrap_or(env_user),
            None => env_user,
        };
        row.shown_id = self.shown_id;
        row.name.clone_from(&self.name);
        row.lib_name.clone_from(&self.lib_name);
        row.lib_ver.clone_from(&self.lib_ver);
        (row.db, row.resp3) = (self.db, self.resp3);
        if row.user != env_user {
            row.user = env_user.to_owned();
        }
        let pin = &self.pin;
        let streaming = pin.active && pin.stream;
        let flags = [streaming, pin.active && pin.in_multi, self.blocked_at().is_some(), pin.tracking];
        row.flags = flags.iter().enumerate().fold(0, |bits, (i, &on)| bits | (u8::from(on) << i));
        row.multi = if pin.active && pin.in_multi { i64::from(pin.queued) } else { -1 };
        row.pubsub = streaming;
        row.subscriptions = self.subscriptions;
        row.cmd_name = self.last_name;
        row.cmd_label.clone_from(&self.last_sub);
    }

    /// The user name CLIENT LIST shows for the session.
    pub fn user_name<'e>(&self, access: &'e crate::access::Access) -> &'e str {
        self.user.and_then(|id| access.user_name(id)).unwrap_or("default")
    }

    /// The session's row, brought up to date; `cmd` is the request being answered (in the
    /// query buffer while it is, as Redis counts it).
    fn own_row(&self, cmd: &CommandView<'_>, env: &Env<'_>) -> Option<std::sync::Arc<Listed>> {
        let listed = env.clients.get(self.id)?;
        listed.publish(|row| {
            self.fill_row(row, self.user_name(env.access));
            (row.qbuf, row.last) = (cmd.bytes().len(), env.now);
        });
        Some(listed)
    }

    /// `CLIENT LIST [TYPE normal|pubsub|master|replica] [ID id ...]`.
    pub(super) fn client_list(&self, cmd: &CommandView<'_>, env: &Env<'_>) -> Result<Bytes, ProxyError> {
        self.own_row(cmd, env);
        let mut args = cmd.args().skip(2);
        let mut ids: Option<Vec<u64>> = None;
        let mut pubsub: Option<Option<bool>> = None;
        while let Some(option) = args.next() {
            if option.eq_ignore_ascii_case(b"TYPE") && pubsub.is_none() {
                pubsub = Some(client_type(args.next().ok_or(ProxyError::Syntax)?)?);
            } else if option.eq_ignore_ascii_case(b"ID") && ids.is_none() {
                let mut list = Vec::new();
                for id in args.by_ref() {
                    list.push(parse_int(id).filter(|&n| n > 0).ok_or(ProxyError::InvalidClientId)? as u64);
                }
                if list.is_empty() {
                    return Err(ProxyError::Syntax);
                }
                ids = Some(list);
            } else {
                return Err(ProxyError::Syntax);
            }
        }
        let lib_fields = env.server.at_least(7, 2);
        let mut text = String::new();
        for client in env.clients.all() {
            let row = client.row();
            let id = client.id_of(row.shown_id);
            let wanted =
                ids.as_ref().is_none_or(|ids| ids.contains(&id)) && pubsub.is_none_or(|kind| kind == Some(row.pubsub));
            if wanted {
                text.push_str(&client.line(lib_fields));
                text.push('\n');
            }
        }
        Ok(verbatim(self.resp3, text.as_bytes()))
    }

    /// `CLIENT INFO`: the session's own line.
    pub(super) fn client_info(&self, cmd: &CommandView<'_>, env: &Env<'_>) -> Result<Bytes, ProxyError> {
        if cmd.argc() != 2 {
            return Err(ProxyError::WrongArity("client|info"));
        }
        let listed = self.own_row(cmd, env).ok_or(ProxyError::Syntax)?;
        let mut line = listed.line(env.server.at_least(7, 2));
        line.push('\n');
        Ok(verbatim(self.resp3, line.as_bytes()))
    }

    /// `CLIENT KILL ip:port` or `CLIENT KILL <filter> <value> ...`, on the proxy's clients.
    pub(super) fn client_kill(&mut self, cmd: &CommandView<'_>, env: &Env<'_>) -> Result<Bytes, ProxyError> {
        let argc = cmd.argc();
        if argc < 3 {
            return Err(ProxyError::WrongArity("client|kill"));
        }
        if argc == 3 {
            // The old form: one address, +OK or an error.
            let addr = cmd.arg(2).unwrap_or_default();
            let found = env.clients.all().into_iter().find(|c| c.addr().to_string().as_bytes() == addr);
            let client = found.ok_or(ProxyError::NoSuchClient)?;
            self.kill(&client);
            return Ok(Bytes::from_static(b"+OK\r\n"));
        }
        let (filters, skip_me) = self.kill_filters(cmd, env)?;
        let mut killed = 0;
        for client in env.clients.all() {
            if (skip_me && client.number() == self.id) || !filters.iter().all(|f| matches(f, &client)) {
                continue;
            }
            self.kill(&client);
            killed += 1;
        }
        Ok(Bytes::from(format!(":{killed}\r\n")))
    }

    fn kill_filters(&self, cmd: &CommandView<'_>, env: &Env<'_>) -> Result<(Vec<Filter>, bool), ProxyError> {
        let mut args = cmd.args().skip(2);
        let (mut filters, mut skip_me) = (Vec::new(), true);
        while let Some(name) = args.next() {
            let value = args.next().ok_or(ProxyError::Syntax)?;
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            filters.push(if is("ID") {
                Filter::Id(parse_int(value).filter(|&n| n > 0).ok_or(ProxyError::InvalidClientId)? as u64)
            } else if is("ADDR") {
                Filter::Addr(value.to_vec())
            } else if is("LADDR") {
                Filter::Laddr(value.to_vec())
            } else if is("USER") {
                let known =
                    env.access.knows(value) || env.clients.all().iter().any(|c| c.row().user.as_bytes() == value);
                if !known && value != b"default" {
                    return Err(ProxyError::NoSuchUser(String::from_utf8_lossy(value).into_owned()));
                }
                Filter::User(value.to_vec())
            } else if is("TYPE") {
                match client_type(value)? {
                    Some(pubsub) => Filter::Type(pubsub),
                    None => Filter::None,
                }
            } else if is("MAXAGE") {
                Filter::MaxAge(parse_int(value).ok_or(ProxyError::Syntax)?.max(0) as u64)
            } else if is("SKIPME") {
                skip_me = match () {
                    _ if value.eq_ignore_ascii_case(b"yes") => true,
                    _ if value.eq_ignore_ascii_case(b"no") => false,
                    _ => return Err(ProxyError::Syntax),
                };
                continue;
            } else {
                return Err(ProxyError::Syntax);
            });
        }
        Ok((filters, skip_me))
    }

    /// Kills a client: another at once; this one after its reply (as Redis does).
    fn kill(&mut self, client: &Listed) {
        if client.number() == self.id {
            self.killed = true;
        } else {
            client.kill();
        }
    }

    /// CLIENT KILL named the session itself: close it once its replies are written.
    pub fn take_killed(&mut self) -> bool {
        std::mem::take(&mut self.killed)
    }
}

/// `normal` / `pubsub`: `Some(false)` / `Some(true)`; `master`, `replica`, `slave`: `None`
/// (the proxy has none of those). Anything else is an error.
fn client_type(name: &[u8]) -> Result<Option<bool>, ProxyError> {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match () {
        _ if is("normal") => Ok(Some(false)),
        _ if is("pubsub") => Ok(Some(true)),
        _ if is("master") || is("replica") || is("slave") => Ok(None),
        _ => Err(ProxyError::UnknownClientType(String::from_utf8_lossy(name).into_owned())),
    }
}

fn matches(filter: &Filter, client: &Listed) -> bool {
    match filter {
        Filter::Id(id) => client.id() == *id,
        Filter::Addr(addr) => client.addr().to_string().as_bytes() == addr,
        Filter::Laddr(addr) => client.laddr().to_string().as_bytes() == addr,
        Filter::User(user) => client.row().user.as_bytes() == user,
        Filter::Type(pubsub) => client.row().pubsub == *pubsub,
        Filter::None => false,
        Filter::MaxAge(secs) => client.age_secs() >= *secs,
    }
}

/// CLIENT LIST and INFO reply as Redis does: a verbatim string in RESP3, a bulk in RESP2.
fn verbatim(resp3: bool, text: &[u8]) -> Bytes {
    let mut w = ReplyWriter::new(resp3);
    w.verbatim(text);
    w.finish()
}
