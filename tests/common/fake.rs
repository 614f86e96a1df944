//! A scriptable fake upstream, for what Redis cannot do on demand: hold one reply while the
//! tracking connection delivers an invalidation, or stop halfway through a large reply. It
//! speaks just enough RESP for the proxy:
//! HELLO, CONFIG, CLIENT SETNAME/ID/TRACKING (`ON REDIRECT <id>` names where pushes go), PTTL,
//! GET and SET.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use nearcache::framing::{CommandView, Limits, Parsed, RequestParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

#[derive(Default)]
struct State {
    values: HashMap<Vec<u8>, Vec<u8>>,
    /// GETs of these keys wait for [`FakeRedis::release`] before answering.
    held: HashSet<Vec<u8>>,
    /// GETs of these keys send the first KiB of their reply, then wait for the release.
    midway: HashSet<Vec<u8>>,
    /// Replies sent halfway so far.
    halfway: usize,
    gets: usize,
    /// Every GET answers after this long.
    delay: std::time::Duration,
    /// Where to write pushes: the connection a `CLIENT TRACKING ON REDIRECT` named.
    tracking: Option<mpsc::UnboundedSender<Bytes>>,
    /// Every connection's output, by client id.
    connections: Vec<mpsc::UnboundedSender<Bytes>>,
}

pub struct FakeRedis {
    pub addr: String,
    state: Arc<Mutex<State>>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRedis {
    pub async fn start() -> FakeRedis {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let release = Arc::new(Notify::new());
        let (s, r) = (Arc::clone(&state), Arc::clone(&release));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&s), Arc::clone(&r)));
            }
        });
        FakeRedis { addr, state, release, task }
    }

    pub fn set(&self, key: &str, value: &str) {
        self.state.lock().unwrap().values.insert(key.into(), value.into());
    }

    pub fn hold(&self, key: &str) {
        self.state.lock().unwrap().held.insert(key.into());
    }

    /// GETs of `key` stop after the first KiB of their reply until [`FakeRedis::release`].
    pub fn hold_midway(&self, key: &str) {
        self.state.lock().unwrap().midway.insert(key.into());
    }

    /// How many replies were sent halfway (and held there).
    pub fn halfway(&self) -> usize {
        self.state.lock().unwrap().halfway
    }

    /// Lets every held GET answer (with the value it read when it arrived).
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap();
        state.held.clear();
        state.midway.clear();
        drop(state);
        self.release.notify_waiters();
    }

    pub fn delay_gets(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn gets(&self) -> usize {
        self.state.lock().unwrap().gets
    }

    /// Sends `invalidate [key]` on the tracking connection.
    pub fn invalidate(&self, key: &str) {
        let push = format!(">2\r\n$10\r\ninvalidate\r\n*1\r\n${}\r\n{key}\r\n", key.len());
        let state = self.state.lock().unwrap();
        state.tracking.as_ref().expect("tracking is on").send(Bytes::from(push)).unwrap();
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, state: Arc<Mutex<State>>, release: Arc<Notify>) {
    let (mut rd, mut wr) = stream.into_split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<Bytes>();
    let id = {
        let mut state = state.lock().unwrap();
        state.connections.push(out.clone());
        state.connections.len() - 1
    };
    tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = BytesMut::new();
    let mut parser = RequestParser::new(Limits { max_request_size: 1 << 20, max_args: 1024 });
    loop {
        while let Ok(Some(Parsed::Command { len, argc })) = parser.parse(&buf) {
            let frame = buf.split_to(len);
            let args: Vec<Vec<u8>> = CommandView::new(&frame, argc).args().map(<[u8]>::to_vec).collect();
            let reply = answer(&args, &state, id, &release, &out).await;
            if out.send(reply).is_err() {
                return;
            }
        }
        if rd.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    }
}

async fn answer(
    args: &[Vec<u8>],
    state: &Mutex<State>,
    id: usize,
    release: &Notify,
    out: &mpsc::UnboundedSender<Bytes>,
) -> Bytes {
    let name = String::from_utf8_lossy(&args[0]).to_uppercase();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let bulk = |v: Option<Vec<u8>>| match v {
        Some(v) => Bytes::from([format!("${}\r\n", v.len()).into_bytes(), v, b"\r\n".to_vec()].concat()),
        None => Bytes::from_static(b"$-1\r\n"),
    };
    match name.as_str() {
        "HELLO" => Bytes::from_static(b"*2\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n"),
        "CONFIG" => Bytes::from_static(b"*0\r\n"),
        "CLIENT" => match String::from_utf8_lossy(&arg(1)).to_uppercase().as_str() {
            "ID" => Bytes::from(format!(":{id}\r\n")),
            "TRACKING" if args.len() == 5 => {
                let mut state = state.lock().unwrap();
                let target = String::from_utf8_lossy(&arg(4)).parse::<usize>().unwrap();
                state.tracking = Some(state.connections[target].clone());
                Bytes::from_static(b"+OK\r\n")
            }
            _ => Bytes::from_static(b"+OK\r\n"),
        },
        "PTTL" => Bytes::from_static(b":-1\r\n"),
        "SET" => {
            state.lock().unwrap().values.insert(arg(1), arg(2));
            Bytes::from_static(b"+OK\r\n")
        }
        "GET" => {
            // Created before the GET is counted, so a release after the count always wakes it.
            let released = release.notified();
            let (value, held, midway, delay) = {
                let mut state = state.lock().unwrap();
                state.gets += 1;
                let key = arg(1);
                (state.values.get(&key).cloned(), state.held.contains(&key), state.midway.contains(&key), state.delay)
            };
            if midway {
                let whole = bulk(value);
                let head = whole.slice(..whole.len().min(1 << 10));
                let _ = out.send(head.clone());
                state.lock().unwrap().halfway += 1;
                released.await;
                return whole.slice(head.len()..);
            }
            if held {
                released.await;
            }
            tokio::time::sleep(delay).await;
            bulk(value)
        }
        _ => Bytes::from_static(b"-ERR unknown command\r\n"),
    }
}
