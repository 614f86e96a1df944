//! A TCP relay that delays every byte by a fixed one-way time, both ways: a network between the
//! proxy (or a client) and Redis, for `benches/network.sh`. Byte order and pipelining are kept:
//! each chunk read is written to the other side once its deadline (read time + delay) passes.
//!
//! ```text
//! cargo run --release --example delay_relay -- --listen 127.0.0.1:7000 --target 127.0.0.1:6379 --delay-us 250
//! ```
//!
//! # Accuracy
//! tokio's timers tick in milliseconds, so this uses plain threads: a reader per direction of
//! each connection, and one scheduler thread that sleeps until the oldest chunk is due. Every
//! chunk has the same delay, so deadlines are in arrival order and one FIFO holds them all. The
//! scheduler's timer slack is set to 1 ns (Linux's default 50 us would make every wake-up that
//! late). It prints, every `--report-secs` and at exit (SIGINT/SIGTERM end it), how late chunks
//! were written past their deadline: `relay late_us p50 <n> p99 <n> max <n> chunks <n>`.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    target: String,
    /// One-way delay, in microseconds.
    #[arg(long)]
    delay_us: u64,
    #[arg(long, default_value_t = 0)]
    report_secs: u64,
}

/// A chunk to write once due; `None` bytes: the sender closed its side.
struct Due {
    at: Instant,
    to: Arc<TcpStream>,
    bytes: Option<Vec<u8>>,
}

#[derive(Default)]
struct Queue {
    chunks: Mutex<VecDeque<Due>>,
    ready: Condvar,
    /// How late each chunk was written, in microseconds (capped at 100 ms).
    late_us: Mutex<Vec<u32>>,
}

fn main() {
    let args = Args::parse();
    let delay = Duration::from_micros(args.delay_us);
    let listener = TcpListener::bind(&args.listen).unwrap_or_else(|e| panic!("cannot listen on {}: {e}", args.listen));
    let queue = Arc::new(Queue::default());
    thread::spawn({
        let queue = Arc::clone(&queue);
        move || schedule(&queue)
    });
    if args.report_secs > 0 {
        let queue = Arc::clone(&queue);
        thread::spawn(move || {
            loop {
                thread::sleep(Duration::from_secs(args.report_secs));
                report(&queue);
            }
        });
    }
    let queue_at_exit = Arc::clone(&queue);
    ctrlc_like(move || report(&queue_at_exit));
    for client in listener.incoming().flatten() {
        let Ok(server) = TcpStream::connect(&args.target) else { continue };
        let (client, server) = (Arc::new(client), Arc::new(server));
        for side in [&client, &server] {
            let _ = side.set_nodelay(true);
        }
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (from, to, queue) = (Arc::clone(from), Arc::clone(to), Arc::clone(&queue));
            thread::spawn(move || relay(&from, to, delay, &queue));
        }
    }
}

/// Reads from `from` and queues each chunk for `to`, due `delay` after it was read.
fn relay(mut from: &TcpStream, to: Arc<TcpStream>, delay: Duration, queue: &Queue) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let bytes = match from.read(&mut buf) {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(buf[..n].to_vec()),
        };
        let done = bytes.is_none();
        queue.chunks.lock().unwrap().push_back(Due { at: Instant::now() + delay, to: Arc::clone(&to), bytes });
        queue.ready.notify_one();
        if done {
            return;
        }
    }
}

/// Writes each chunk once it is due, oldest first.
fn schedule(queue: &Queue) {
    set_timer_slack_ns(1);
    let mut chunks = queue.chunks.lock().unwrap();
    loop {
        let Some(at) = chunks.front().map(|front| front.at) else {
            chunks = queue.ready.wait(chunks).unwrap();
            continue;
        };
        let now = Instant::now();
        if at > now {
            chunks = queue.ready.wait_timeout(chunks, at - now).unwrap().0;
            continue;
        }
        let due = chunks.pop_front().expect("checked above");
        drop(chunks);
        let late = Instant::now().saturating_duration_since(due.at).as_micros().min(100_000) as u32;
        queue.late_us.lock().unwrap().push(late);
        match &due.bytes {
            Some(bytes) => _ = (&*due.to).write_all(bytes),
            None => _ = due.to.shutdown(Shutdown::Write),
        }
        chunks = queue.chunks.lock().unwrap();
    }
}

fn report(queue: &Queue) {
    let mut late = queue.late_us.lock().unwrap().clone();
    if late.is_empty() {
        return eprintln!("relay late_us p50 0 p99 0 max 0 chunks 0");
    }
    late.sort_unstable();
    let at = |q: f64| late[((late.len() - 1) as f64 * q) as usize];
    eprintln!("relay late_us p50 {} p99 {} max {} chunks {}", at(0.5), at(0.99), at(1.0), late.len());
}

/// Linux wakes a sleeping thread up to its timer slack late (50 us by default).
fn set_timer_slack_ns(ns: u64) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0);
    }
}

/// Runs `at_exit` on SIGINT or SIGTERM, then exits.
fn ctrlc_like(at_exit: impl FnOnce() + Send + 'static) {
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        at_exit();
        std::process::exit(0);
    });
}
