//! Hot keys: the most-read keys (hits and misses) and the most-invalidated ones over a recent
//! window, from a bounded, cheap sample.
//!
//! One event in [`SAMPLE_EVERY`] is recorded (a per-thread countdown: no shared counter on the
//! hit path); a recorded key is counted in the current window's map, which holds at most
//! [`CAPACITY`] keys (a key arriving when it is full is not counted until the next window: the
//! hot ones are in long before). Windows rotate every [`WINDOW`]; the top keys are counted over
//! the current and the previous one, scaled back by the sampling rate.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// One event in this many is recorded.
pub const SAMPLE_EVERY: u32 = 16;
/// Keys counted per window at most.
const CAPACITY: usize = 4096;
/// How long a window lasts; the top keys cover one to two of them.
pub const WINDOW: Duration = Duration::from_secs(30);

thread_local! {
    static COUNTDOWN: Cell<u32> = const { Cell::new(SAMPLE_EVERY) };
}

/// Whether this event is one of the sampled ones (per thread).
#[inline]
fn sampled() -> bool {
    COUNTDOWN.with(|left| {
        let n = left.get() - 1;
        left.set(if n == 0 { SAMPLE_EVERY } else { n });
        n == 0
    })
}

/// One kind of event (reads, invalidations) by key.
#[derive(Debug)]
pub struct Sampler {
    windows: Mutex<Windows>,
}

#[derive(Debug)]
struct Windows {
    started: Instant,
    current: HashMap<Bytes, u64>,
    previous: HashMap<Bytes, u64>,
}

impl Default for Sampler {
    fn default() -> Sampler {
        Sampler {
            windows: Mutex::new(Windows { started: Instant::now(), current: HashMap::new(), previous: HashMap::new() }),
        }
    }
}

impl Sampler {
    /// Counts an event on `key` if it is sampled.
    #[inline]
    pub fn record(&self, key: &[u8]) {
        if sampled() {
            self.count(key);
        }
    }

    #[cold]
    fn count(&self, key: &[u8]) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.rotate();
        if let Some(n) = windows.current.get_mut(key) {
            *n += 1;
        } else if windows.current.len() < CAPACITY {
            windows.current.insert(Bytes::copy_from_slice(key), 1);
        }
    }

    /// The `n` keys with the most events over the last one to two windows, most first, with
    /// their estimated event counts.
    pub fn top(&self, n: usize) -> Vec<(Bytes, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows.rotate();
        let mut totals: HashMap<&Bytes, u64> = HashMap::new();
        for (key, count) in windows.previous.iter().chain(&windows.current) {
            *totals.entry(key).or_default() += count;
        }
        let mut top: Vec<(Bytes, u64)> =
            totals.into_iter().map(|(key, count)| (key.clone(), count * u64::from(SAMPLE_EVERY))).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }
}

impl Windows {
    fn rotate(&mut self) {
        let elapsed = self.started.elapsed();
        if elapsed >= WINDOW {
            self.previous = if elapsed >= 2 * WINDOW { HashMap::new() } else { std::mem::take(&mut self.current) };
            self.current.clear();
            self.started = Instant::now();
        }
    }
}

/// The tier's two samplers.
#[derive(Debug, Default)]
pub struct HotKeys {
    pub reads: Sampler,
    pub invalidations: Sampler,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_frequent_keys_come_first_scaled_by_the_sampling() {
        let sampler = Sampler::default();
        for _ in 0..SAMPLE_EVERY * 100 {
            sampler.record(b"hot");
        }
        for _ in 0..SAMPLE_EVERY * 10 {
            sampler.record(b"warm");
        }
        sampler.record(b"cold");
        let top = sampler.top(2);
        assert_eq!(top.len(), 2);
        assert_eq!(&top[0].0[..], b"hot");
        // Every SAMPLE_EVERY-th event on this thread is counted, whichever key it is.
        assert!((99..=101).contains(&(top[0].1 / u64::from(SAMPLE_EVERY))), "{top:?}");
        assert_eq!(&top[1].0[..], b"warm");
    }

    #[test]
    fn it_stays_bounded() {
        let sampler = Sampler::default();
        for i in 0..(CAPACITY as u32 * 2) {
            sampler.count(format!("key:{i}").as_bytes());
        }
        assert_eq!(sampler.windows.lock().unwrap().current.len(), CAPACITY);
    }
}
