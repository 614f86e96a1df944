//! The commands the proxy answers itself, for the client's own session: HELLO, AUTH, SELECT,
//! RESET and CLIENT SETNAME/GETNAME/SETINFO. Replies follow Redis's, errors included.

use bytes::Bytes;

use super::{Env, Session};
use crate::access::Access;
use crate::error::ProxyError;
use crate::framing::{CommandView, parse_int};
use crate::reply::{self, ReplyWriter};

/// The commands the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Local {
    Hello,
    /// With the proxy's own users.
    Auth,
    Select,
    Reset,
    ClientSetName,
    ClientGetName,
    ClientSetInfo,
}

impl Session {
    /// Answers `local` for the session.
    pub(super) fn answer(&mut self, local: Local, cmd: &CommandView<'_>, env: &Env<'_>) -> Result<Bytes, ProxyError> {
        let argc = cmd.argc();
        let arity = |ok: bool, name: &'static str| if ok { Ok(()) } else { Err(ProxyError::WrongArity(name)) };
        match local {
            Local::Hello => self.hello(cmd, env),
            Local::Auth => match argc {
                2 => self.login(env.access, b"default", cmd.arg(1)),
                3 => self.login(env.access, cmd.arg(1).unwrap_or_default(), cmd.arg(2)),
                _ => Err(ProxyError::WrongArity("auth")),
            },
            Local::Select => {
                arity(argc == 2, "select")?;
                let db = cmd.arg(1).and_then(parse_int).ok_or(ProxyError::NotInteger)?;
                if env.cluster() && db != 0 {
                    return Err(ProxyError::SelectInCluster);
                }
                self.db =
                    u32::try_from(db).ok().filter(|&db| db < env.server.databases()).ok_or(ProxyError::DbOutOfRange)?;
                Ok(ok())
            }
            Local::Reset => {
                (self.db, self.resp3, self.name, self.admin) = (0, false, None, false);
                self.user = env.access.initial_user();
                Ok(Bytes::from_static(b"+RESET\r\n"))
            }
            Local::ClientSetName => {
                arity(argc == 3, "client|setname")?;
                self.name = valid_name(cmd.arg(2).unwrap_or_default())?;
                Ok(ok())
            }
            Local::ClientGetName => {
                arity(argc == 2, "client|getname")?;
                let mut w = ReplyWriter::new(self.resp3);
                match &self.name {
                    Some(name) => w.bulk(name),
                    None => w.null(),
                };
                Ok(w.finish())
            }
            Local::ClientSetInfo => {
                if !env.server.at_least(7, 2) {
                    // The upstream has no CLIENT SETINFO: answer as it would.
                    let sub = String::from_utf8_lossy(cmd.arg(1).unwrap_or_default()).into_owned();
                    return Err(ProxyError::UnknownClientSubcommand(sub));
                }
                arity(argc == 4, "client|setinfo")?;
                let attr = cmd.arg(2).unwrap_or_default();
                let value = Bytes::copy_from_slice(cmd.arg(3).unwrap_or_default());
                if attr.eq_ignore_ascii_case(b"LIB-NAME") {
                    self.lib_name = valid_name(&value)?;
                } else if attr.eq_ignore_ascii_case(b"LIB-VER") {
                    self.lib_ver = valid_name(&value)?;
                } else {
                    return Err(ProxyError::UnknownOption(String::from_utf8_lossy(attr).into_owned()));
                }
                Ok(ok())
            }
        }
    }

    /// `PING [message]`, answered by the proxy while the breaker is open (DESIGN: clients'
    /// pools keep their connections; everything else still fails fast).
    pub(super) fn ping(&self, cmd: &CommandView<'_>) -> Bytes {
        match (cmd.argc(), cmd.arg(1)) {
            (1, _) => Bytes::from_static(b"+PONG\r\n"),
            (2, Some(message)) => {
                let mut w = ReplyWriter::new(self.resp3);
                w.bulk(message);
                w.finish()
            }
            _ => ProxyError::WrongArity("ping").to_reply(),
        }
    }

    /// AUTH, and HELLO's AUTH option: the proxy's users when it has some. Without them only
    /// the proxy's own upstream login gets here (any other goes to Redis, see `Session::route`),
    /// and it changes nothing.
    fn login(&mut self, access: &Access, user: &[u8], password: Option<&[u8]>) -> Result<Bytes, ProxyError> {
        if !access.required() {
            return Ok(ok());
        }
        let id = access.authenticate(user, password.unwrap_or_default()).ok_or(ProxyError::WrongPass)?;
        self.user = Some(id);
        Ok(ok())
    }

    fn hello(&mut self, cmd: &CommandView<'_>, env: &Env<'_>) -> Result<Bytes, ProxyError> {
        let server = env.server;
        let mut args = cmd.args().skip(1);
        let mut resp3 = self.resp3;
        let mut name = None;
        let mut authenticated = false;
        if let Some(version) = args.next() {
            resp3 = match parse_int(version).ok_or(ProxyError::BadProtoVersion)? {
                2 => false,
                3 => true,
                _ => return Err(ProxyError::NoProto),
            };
        }
        while let Some(option) = args.next() {
            let syntax = || ProxyError::HelloSyntax(String::from_utf8_lossy(option).into_owned());
            if option.eq_ignore_ascii_case(b"AUTH") {
                let user = args.next().ok_or_else(syntax)?;
                let password = args.next().ok_or_else(syntax)?;
                self.login(env.access, user, Some(password))?;
                authenticated = true;
            } else if option.eq_ignore_ascii_case(b"SETNAME") {
                name = Some(valid_name(args.next().ok_or_else(syntax)?)?);
            } else {
                return Err(syntax());
            }
        }
        if self.user.is_none() && !authenticated {
            return Err(ProxyError::HelloNoAuth);
        }
        self.resp3 = resp3;
        if let Some(name) = name {
            self.name = name;
        }
        let mut w = ReplyWriter::new(resp3);
        w.map(7);
        w.bulk(b"server").bulk(b"redis");
        w.bulk(b"version").bulk(server.version().as_bytes());
        w.bulk(b"proto").int(if resp3 { 3 } else { 2 });
        w.bulk(b"id").int(self.shown_id.unwrap_or(crate::client_table::UNSHOWN_IDS + self.id) as i64);
        w.bulk(b"mode").bulk(b"standalone");
        w.bulk(b"role").bulk(b"master");
        w.bulk(b"modules").array(0);
        Ok(w.finish())
    }
}

fn ok() -> Bytes {
    Bytes::from_static(reply::OK)
}

/// Client names and library fields: printable ASCII without spaces; empty clears.
fn valid_name(name: &[u8]) -> Result<Option<Bytes>, ProxyError> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        return Err(ProxyError::BadClientName);
    }
    Ok((!name.is_empty()).then(|| Bytes::copy_from_slice(name)))
}
