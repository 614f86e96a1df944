use super::*;
use tokio::time::advance;

fn settings() -> config::Breaker {
    config::Breaker {
        failure_rate: 0.5,
        slow_call: config::Span(Duration::from_millis(100)),
        slow_call_rate: 0.5,
        window: 10,
        minimum_calls: 4,
        connect_failures: 3,
        open_for: config::Span(Duration::from_secs(1)),
        max_open_for: config::Span(Duration::from_secs(3)),
        half_open_probes: 2,
    }
}

fn breaker() -> Breaker {
    Breaker::new(&settings(), "127.0.0.1:6379").without_jitter()
}

const FAST: Outcome = Outcome::Answered(Duration::from_millis(1));
const SLOW: Outcome = Outcome::Answered(Duration::from_millis(150));

#[tokio::test(start_paused = true)]
async fn trips_on_the_failure_rate_once_minimum_calls_are_seen() {
    let b = breaker();
    for _ in 0..3 {
        b.record(Outcome::Failed);
    }
    assert_eq!(b.state(), State::Closed, "3 calls are below minimum_calls");
    b.record(FAST);
    assert_eq!(b.state(), State::Open, "3 failures in 4 calls");
    assert_eq!(b.admit(), Admission::Refused { retry_in: Duration::from_secs(1) });
    assert!(b.is_refusing());
}

#[tokio::test(start_paused = true)]
async fn error_replies_that_answered_are_successes() {
    let b = breaker();
    for _ in 0..100 {
        b.record(FAST); // e.g. WRONGTYPE: data, not a failure
    }
    assert_eq!(b.state(), State::Closed);
    assert!(is_unusable(b"-LOADING Redis is loading the dataset in memory\r\n"));
    assert!(is_unusable(b"-MASTERDOWN Link with MASTER is down\r\n"));
    assert!(!is_unusable(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"));
    assert!(!is_unusable(b"-ERR syntax error\r\n"));
}

#[tokio::test(start_paused = true)]
async fn trips_on_the_slow_call_rate() {
    let b = breaker();
    for outcome in [FAST, SLOW, FAST, SLOW] {
        b.record(outcome);
    }
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn old_calls_leave_the_window() {
    let b = breaker();
    for _ in 0..4 {
        b.record(Outcome::Failed);
        for _ in 0..3 {
            b.record(FAST);
        }
    }
    // 25% failures over any 10 recent calls: below the rate.
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn trips_on_consecutive_connection_failures() {
    let b = breaker();
    b.record(Outcome::ConnectFailed);
    b.record(Outcome::ConnectFailed);
    b.record(Outcome::Connected);
    b.record(Outcome::ConnectFailed);
    b.record(Outcome::ConnectFailed);
    assert_eq!(b.state(), State::Closed, "the run was broken by a success");
    b.record(Outcome::ConnectFailed);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_probes_close_it_or_open_it_for_longer() {
    let b = breaker();
    for _ in 0..3 {
        b.record(Outcome::ConnectFailed);
    }
    advance(Duration::from_millis(999)).await;
    assert!(matches!(b.admit(), Admission::Refused { .. }));
    advance(Duration::from_millis(1)).await;
    // Half-open: two probes go through, the rest are refused.
    assert_eq!(b.admit(), Admission::Allowed);
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.admit(), Admission::Allowed);
    assert_eq!(b.admit(), Admission::Refused { retry_in: Duration::ZERO });
    // A failed probe opens it again, for twice as long.
    b.record(Outcome::Failed);
    assert_eq!(b.admit(), Admission::Refused { retry_in: Duration::from_secs(2) });
    advance(Duration::from_secs(2)).await;
    assert_eq!(b.admit(), Admission::Allowed);
    b.record(Outcome::Failed);
    // Doubling stops at max_open_for.
    assert_eq!(b.admit(), Admission::Refused { retry_in: Duration::from_secs(3) });
    advance(Duration::from_secs(3)).await;
    assert_eq!(b.admit(), Admission::Allowed);
    assert_eq!(b.admit(), Admission::Allowed);
    b.record(FAST);
    assert_eq!(b.state(), State::HalfOpen);
    b.record(FAST);
    assert_eq!(b.state(), State::Closed);
    assert!(!b.is_refusing());
    // Closing starts the doubling over.
    for _ in 0..3 {
        b.record(Outcome::ConnectFailed);
    }
    assert_eq!(b.admit(), Admission::Refused { retry_in: Duration::from_secs(1) });
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_is_a_failed_probe() {
    let b = breaker();
    for _ in 0..3 {
        b.record(Outcome::ConnectFailed);
    }
    advance(Duration::from_secs(1)).await;
    assert_eq!(b.admit(), Admission::Allowed);
    b.record(SLOW);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn status_names_the_state() {
    let b = breaker();
    assert!(b.status().starts_with("state:closed\r\nupstream:127.0.0.1:6379\r\n"), "{}", b.status());
    for _ in 0..3 {
        b.record(Outcome::ConnectFailed);
    }
    assert!(b.status().contains("state:open\r\n") && b.status().contains("retry_in_ms:1000\r\n"), "{}", b.status());
    advance(Duration::from_secs(1)).await;
    b.admit();
    assert!(b.status().contains("state:half-open\r\n") && b.status().contains("half_open_probes_sent:1\r\n"));
}

#[tokio::test(start_paused = true)]
async fn jitter_adds_at_most_a_tenth() {
    let b = Breaker::new(&settings(), "x");
    for _ in 0..3 {
        b.record(Outcome::ConnectFailed);
    }
    let Admission::Refused { retry_in } = b.admit() else { panic!() };
    assert!(retry_in >= Duration::from_secs(1) && retry_in <= Duration::from_millis(1100), "{retry_in:?}");
}

#[tokio::test(start_paused = true)]
async fn reconfigured_thresholds_apply_to_the_next_call() {
    let b = breaker();
    for _ in 0..2 {
        b.record(Outcome::Failed);
    }
    assert_eq!(b.state(), State::Closed, "2 calls are below minimum_calls 4");
    b.reconfigure(&config::Breaker { minimum_calls: 2, window: 3, ..settings() });
    b.record(FAST);
    assert_eq!(b.state(), State::Open, "2 failures in 3 calls, minimum_calls now 2");
    assert_eq!(b.stats.opened.load(Ordering::Relaxed), 1);
    assert_eq!(b.admit(), Admission::Refused { retry_in: Duration::from_secs(1) });
    assert_eq!(b.stats.refused.load(Ordering::Relaxed), 1);
}
