//! The circuit breaker in front of the upstream: stop sending to a Redis that is failing,
//! answer at once instead of after a timeout, and find out by itself when it is back.
//!
//! States (textbook names): **closed**, traffic flows; **open**, the upstream is considered
//! down and requests are refused at once; **half-open**, a few requests probe it.
//!
//! The algorithm:
//! 1. Closed: every finished call is recorded in a window of the last `window` calls as a
//!    success, a failure, and/or slow. Once `minimum_calls` are in the window, a failure rate
//!    of at least `failure_rate` or a slow rate of at least `slow_call_rate` trips it. So do
//!    `connect_failures` failed connection attempts in a row.
//! 2. Tripping opens it for `open_for`, doubled on every trip in a row (up to `max_open_for`),
//!    plus up to 10% jitter so that many proxies do not probe in step.
//! 3. When the period is over, the next `half_open_probes` requests go through as probes and
//!    the rest are refused. If all probes succeed it closes (and the doubling starts over);
//!    the first failure opens it again.
//! 4. Whatever the period, it closes as soon as the upstream shows it is back: a connection
//!    to it completes its handshake, or the proxy's own PING (sent every 100 ms while it is
//!    not closed, see `upstream::recover`) is answered ([`Breaker::recovered`]). Clients are
//!    never kept out of a Redis that answers.
//!
//! What counts as a failure is decided by the caller ([`Outcome`]): connection and I/O errors,
//! timeouts, and replies meaning "server unusable" ([`is_unusable`]). Ordinary error replies
//! (WRONGTYPE, ERR syntax) are data: they are successes.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::config;
use crate::metrics::inc;

/// What happened to a call (one request or a pipelined batch of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (error replies included), taking this long.
    Answered(Duration),
    /// Connection lost, timed out, or an "unusable" reply.
    Failed,
    /// A connection attempt succeeded or failed.
    Connected,
    ConnectFailed,
}

/// Why the breaker opened: in logs (and later metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripReason {
    FailureRate,
    SlowCallRate,
    ConnectFailures,
    ProbeFailed,
    /// Sentinel names no primary: there is nothing to send to.
    NoPrimary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

/// May a call go upstream now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Refused; the breaker will let calls through again in about this long.
    Refused {
        retry_in: Duration,
    },
}

pub struct Breaker {
    upstream: String,
    jitter: bool,
    inner: Mutex<Inner>,
    /// False while closed: the common case answers without the lock.
    not_closed: AtomicBool,
    /// Told whenever it opens (the recovery probe waits for it).
    opened: tokio::sync::Notify,
    pub stats: Stats,
}

/// Transitions and refusals, for the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub opened: AtomicU64,
    pub half_opened: AtomicU64,
    pub closed: AtomicU64,
    /// Calls refused while open (or half-open with every probe out).
    pub refused: AtomicU64,
}

struct Inner {
    /// Thresholds; replaced by a configuration reload.
    settings: config::Breaker,
    state: State,
    /// Recent calls while closed: (failed, slow).
    window: VecDeque<(bool, bool)>,
    failures: usize,
    slow: usize,
    connect_failures: u32,
    /// Trips in a row without closing: the exponent of the open period.
    trips: u32,
    open_until: Instant,
    probes_admitted: u32,
    probes_passed: u32,
}

impl Breaker {
    pub fn new(settings: &config::Breaker, upstream: &str) -> Breaker {
        Breaker {
            upstream: upstream.to_owned(),
            jitter: true,
            inner: Mutex::new(Inner {
                settings: settings.clone(),
                state: State::Closed,
                window: VecDeque::with_capacity(settings.window),
                failures: 0,
                slow: 0,
                connect_failures: 0,
                trips: 0,
                open_until: Instant::now(),
                probes_admitted: 0,
                probes_passed: 0,
            }),
            not_closed: AtomicBool::new(false),
            opened: tokio::sync::Notify::new(),
            stats: Stats::default(),
        }
    }

    /// Without jitter, for tests on paused time.
    pub fn without_jitter(mut self) -> Breaker {
        self.jitter = false;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New thresholds (configuration reload); the state and the window are kept (a shorter
    /// window drops its oldest calls).
    pub fn reconfigure(&self, settings: &config::Breaker) {
        let mut inner = self.lock();
        while inner.window.len() > settings.window {
            if let Some((f, s)) = inner.window.pop_front() {
                inner.failures -= usize::from(f);
                inner.slow -= usize::from(s);
            }
        }
        inner.settings = settings.clone();
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Asks to send a call upstream (step 3: counts half-open probes).
    pub fn admit(&self) -> Admission {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.state == State::Open && now >= inner.open_until {
            inc(&self.stats.half_opened);
            inner.state = State::HalfOpen;
            inner.probes_admitted = 0;
            inner.probes_passed = 0;
            info!(upstream = %self.upstream, state = "half-open", "circuit breaker probing the upstream");
        }
        let admission = match inner.state {
            State::Closed => Admission::Allowed,
            State::HalfOpen if inner.probes_admitted < inner.settings.half_open_probes => {
                inner.probes_admitted += 1;
                Admission::Allowed
            }
            State::HalfOpen => Admission::Refused { retry_in: Duration::ZERO },
            State::Open => Admission::Refused { retry_in: inner.open_until - now },
        };
        if admission != Admission::Allowed {
            inc(&self.stats.refused);
        }
        admission
    }

    /// `PROXY BREAKER STATUS`: the state and its counters, in Redis INFO style.
    pub fn status(&self) -> String {
        let inner = self.lock();
        let now = Instant::now();
        let retry_in =
            if inner.state == State::Open { inner.open_until.saturating_duration_since(now) } else { Duration::ZERO };
        format!(
            "state:{}\r\nupstream:{}\r\nwindow_calls:{}\r\nwindow_failures:{}\r\nwindow_slow:{}\r\n\
             connect_failures_in_a_row:{}\r\ntrips_in_a_row:{}\r\nretry_in_ms:{}\r\nhalf_open_probes_sent:{}\r\n",
            inner.state.name(),
            self.upstream,
            inner.window.len(),
            inner.failures,
            inner.slow,
            inner.connect_failures,
            inner.trips,
            retry_in.as_millis(),
            if inner.state == State::HalfOpen { inner.probes_admitted } else { 0 },
        )
    }

    /// True while calls are refused (open, or half-open with every probe out).
    pub fn is_refusing(&self) -> bool {
        self.not_closed.load(Ordering::Acquire) && self.refusal().is_some()
    }

    /// While calls are refused, about how long until they are let through again (without
    /// taking a half-open probe, unlike [`Breaker::admit`]).
    pub fn refusal(&self) -> Option<Duration> {
        let inner = self.lock();
        let now = Instant::now();
        match inner.state {
            State::Closed => None,
            State::Open => (now < inner.open_until).then(|| inner.open_until - now),
            State::HalfOpen => (inner.probes_admitted >= inner.settings.half_open_probes).then_some(Duration::ZERO),
        }
    }

    /// Waits until it is not closed.
    pub async fn until_open(&self) {
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.not_closed.load(Ordering::Acquire) {
                return;
            }
            opened.await;
        }
    }

    /// No primary is known (Sentinel): open now, unless already open.
    pub fn no_primary(&self) {
        let mut inner = self.lock();
        if inner.state != State::Open {
            self.trip(&mut inner, TripReason::NoPrimary);
        }
    }

    /// Step 4: the upstream answered the proxy's own probe: close.
    pub fn recovered(&self) {
        let mut inner = self.lock();
        if inner.state != State::Closed {
            self.close(&mut inner);
        }
    }

    pub fn record(&self, outcome: Outcome) {
        let mut inner = self.lock();
        match (inner.state, outcome) {
            (State::Closed, Outcome::Connected) => inner.connect_failures = 0,
            // Step 4: a connection's handshake was answered.
            (_, Outcome::Connected) => {
                inner.connect_failures = 0;
                self.close(&mut inner);
            }
            (State::Closed, Outcome::ConnectFailed) => {
                inner.connect_failures += 1;
                if inner.connect_failures >= inner.settings.connect_failures {
                    self.trip(&mut inner, TripReason::ConnectFailures);
                }
            }
            (State::Closed, Outcome::Answered(took)) => {
                let slow = took >= inner.settings.slow_call.0;
                self.push(&mut inner, false, slow)
            }
            (State::Closed, Outcome::Failed) => self.push(&mut inner, true, false),
            (State::HalfOpen, Outcome::Answered(took)) if took < inner.settings.slow_call.0 => {
                inner.probes_passed += 1;
                if inner.probes_passed >= inner.settings.half_open_probes {
                    self.close(&mut inner);
                }
            }
            (State::HalfOpen, _) => self.trip(&mut inner, TripReason::ProbeFailed),
            // Late results of calls sent before it opened.
            (State::Open, _) => {}
        }
    }

    /// Step 1: the window and its rates.
    fn push(&self, inner: &mut Inner, failed: bool, slow: bool) {
        if inner.window.len() == inner.settings.window
            && let Some((f, s)) = inner.window.pop_front()
        {
            inner.failures -= usize::from(f);
            inner.slow -= usize::from(s);
        }
        inner.window.push_back((failed, slow));
        inner.failures += usize::from(failed);
        inner.slow += usize::from(slow);
        let calls = inner.window.len();
        if calls < inner.settings.minimum_calls {
            return;
        }
        if inner.failures as f64 >= inner.settings.failure_rate * calls as f64 {
            self.trip(inner, TripReason::FailureRate);
        } else if inner.slow as f64 >= inner.settings.slow_call_rate * calls as f64 {
            self.trip(inner, TripReason::SlowCallRate);
        }
    }

    /// Step 2.
    fn trip(&self, inner: &mut Inner, reason: TripReason) {
        let base = inner.settings.open_for.0.saturating_mul(1 << inner.trips.min(20));
        let period = base.min(inner.settings.max_open_for.0);
        let jitter = if self.jitter { period.mul_f64(random_fraction() * 0.1) } else { Duration::ZERO };
        inner.trips += 1;
        inner.state = State::Open;
        self.not_closed.store(true, Ordering::Release);
        inc(&self.stats.opened);
        inner.open_until = Instant::now() + period + jitter;
        inner.window.clear();
        (inner.failures, inner.slow, inner.connect_failures) = (0, 0, 0);
        self.opened.notify_waiters();
        warn!(
            upstream = %self.upstream, state = "open", reason = ?reason, open_ms = (period + jitter).as_millis() as u64,
            "circuit breaker opened: requests are refused at once"
        );
    }

    fn close(&self, inner: &mut Inner) {
        inner.state = State::Closed;
        self.not_closed.store(false, Ordering::Release);
        inc(&self.stats.closed);
        inner.trips = 0;
        info!(upstream = %self.upstream, state = "closed", "circuit breaker closed: the upstream answers again");
    }
}

/// A uniform fraction in [0, 1) from std's randomly keyed hasher (jitter needs no more).
fn random_fraction() -> f64 {
    (RandomState::new().hash_one(0u8) >> 11) as f64 / (1u64 << 53) as f64
}

/// Replies that mean the server cannot be used now (they count as failures): still loading
/// its data, or a replica without its master.
pub fn is_unusable(reply: &[u8]) -> bool {
    reply.starts_with(b"-LOADING") || reply.starts_with(b"-MASTERDOWN")
}

#[cfg(test)]
mod tests;
