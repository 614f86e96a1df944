//! Following the primary through Redis Sentinel (`[upstream] sentinels`, `master_name`), the
//! way Redis's guidelines for Sentinel clients describe:
//!
//! - Every sentinel is asked (at once, each within `upstream.connect_timeout`) for the primary's
//!   address (`SENTINEL GET-MASTER-ADDR-BY-NAME`) and its configuration epoch (`SENTINEL
//!   MASTER`); the answer with the highest epoch wins, so a sentinel that has not heard of a
//!   failover yet never takes the proxy back to the old primary. Among equals, the sentinel
//!   running a failover wins: it names the promoted replica as soon as that is a primary, before
//!   `+switch-master` (what the old primary accepts after that is lost when it becomes a
//!   replica). Then the sentinel that answered best last time.
//! - Before anything is sent there, `ROLE` must say the address is a primary: a sentinel that
//!   names a replica is refused, and then no primary is known.
//! - It asks again every second, at once when a connection to the primary is lost or Redis
//!   refuses a write with READONLY ([`Target::doubt`](crate::upstream::Target::doubt)), and when
//!   any sentinel publishes `+promoted-slave` or `+switch-master` for the name (each is
//!   subscribed to).
//! - The list grows with the sentinels they know of (`SENTINEL SENTINELS <name>`).
//!
//! A new primary: every connection to the old one closes ([`Upstream::switch_primary`]):
//! requests in flight get an error (their outcome is unknown; never retried), clients with
//! session state there are disconnected, and the tier distrusts all it holds at the same
//! moment ([`Tier::distrust`]: dropped, or demoted under `serve_stale`), since the new primary
//! never tracked it. No primary known: the breaker is open, cached reads are served under
//! `serve_stale`, everything else fails at once.

mod link;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::cache::Tier;
use crate::upstream::Upstream;
pub use link::Settings;
use link::{Link, MasterReply};

/// How often the sentinels are asked when nothing prompts it.
const POLL: Duration = Duration::from_secs(1);
/// Rounds between refreshes of the sentinel list.
const REFRESH_EVERY: u32 = 10;

/// What `PROXY INFO` and `/metrics` show.
#[derive(Debug, Default)]
pub struct Stats {
    /// The primary changed from one address to another.
    pub failovers: AtomicU64,
    /// Sentinels that answered the last round, and those known.
    pub reachable: AtomicUsize,
    pub known: AtomicUsize,
    /// Since when no primary is known, and how long there was none before that.
    without: Mutex<(Option<Instant>, Duration)>,
}

impl Stats {
    /// Seconds without a known primary since the proxy started (the current stretch included).
    pub fn seconds_without_primary(&self) -> f64 {
        let (since, before) = *self.without.lock().unwrap_or_else(|e| e.into_inner());
        (before + since.map_or(Duration::ZERO, |s| s.elapsed())).as_secs_f64()
    }

    fn primary_known(&self, known: bool) {
        let mut without = self.without.lock().unwrap_or_else(|e| e.into_inner());
        match (known, without.0) {
            (true, Some(since)) => *without = (None, without.1 + since.elapsed()),
            (false, None) => without.0 = Some(Instant::now()),
            _ => {}
        }
    }
}

/// Starts following the primary: the stats, and the task (runs until aborted).
pub fn start(
    settings: Settings,
    upstream: Arc<Upstream>,
    tier: Option<Arc<Tier>>,
) -> (Arc<Stats>, tokio::task::JoinHandle<()>) {
    let stats = Arc::new(Stats::default());
    stats.primary_known(false);
    // Nothing can be sent until a primary is found: refused at once, not after a timeout.
    upstream.breaker().no_primary();
    let task = tokio::spawn(run(Arc::new(settings), upstream, tier, Arc::clone(&stats)));
    (stats, task)
}

async fn run(settings: Arc<Settings>, upstream: Arc<Upstream>, tier: Option<Arc<Tier>>, stats: Arc<Stats>) {
    let mut links: Vec<Link> = settings.sentinels.iter().map(|addr| Link::new(addr)).collect();
    let mut subscribers = JoinSet::new();
    for addr in &settings.sentinels {
        subscribers.spawn(link::follow_switches(Arc::clone(&settings), addr.clone(), Arc::clone(&upstream)));
    }
    let mut rounds = 0u32;
    let mut last_problem = String::new();
    loop {
        stats.known.store(links.len(), Ordering::Relaxed);
        let answers;
        (links, answers) = ask_all(links, &settings).await;
        stats.reachable.store(links.iter().filter(|link| link.answered()).count(), Ordering::Relaxed);
        let problem = match choose(&answers) {
            Ok((index, addr)) => match upstream.role_of(&addr).await {
                Ok(role) if role == "master" => {
                    // The sentinel that answered best is asked first next time.
                    let best = links.remove(index);
                    links.insert(0, best);
                    switch(&upstream, tier.as_deref(), &stats, Some(&addr), &settings.master_name);
                    String::new()
                }
                Ok(role) => {
                    switch(&upstream, tier.as_deref(), &stats, None, &settings.master_name);
                    format!("Sentinel names {addr} as the primary, but it says it is a {role}: no writes go there")
                }
                // Down or unreachable: Sentinel will notice; meanwhile the breaker decides.
                Err(e) => format!("the primary Sentinel names, {addr}, does not answer: {e}"),
            },
            Err(why) => why,
        };
        if problem != last_problem && !problem.is_empty() {
            match upstream.target().addr() {
                None => error!(master = %settings.master_name, "no primary known: {problem}"),
                Some(_) => warn!(master = %settings.master_name, "{problem}"),
            }
        }
        last_problem = problem;
        rounds += 1;
        if rounds.is_multiple_of(REFRESH_EVERY) {
            refresh(&mut links, &settings, &mut subscribers, &upstream).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = upstream.target().doubted() => {}
        }
    }
}

/// Asks every sentinel at once; the links come back in their order, with each one's answer.
async fn ask_all(links: Vec<Link>, settings: &Arc<Settings>) -> (Vec<Link>, Vec<Result<MasterReply, String>>) {
    let mut asked = JoinSet::new();
    let count = links.len();
    for (index, mut link) in links.into_iter().enumerate() {
        let settings = Arc::clone(settings);
        asked.spawn(async move {
            let answer = link.master(&settings).await;
            (index, link, answer)
        });
    }
    let mut back: Vec<_> = asked.join_all().await;
    back.sort_by_key(|(index, _, _)| *index);
    debug_assert_eq!(back.len(), count);
    back.into_iter().map(|(_, link, answer)| (link, answer)).unzip()
}

/// The answer with the highest config epoch, and among equals one from a sentinel running a
/// failover (it names the promoted replica before the others learn of it), then the earliest
/// in the list: its index and address. Otherwise why there is none.
fn choose(answers: &[Result<MasterReply, String>]) -> Result<(usize, String), String> {
    let mut best: Option<(usize, &MasterReply)> = None;
    for (index, answer) in answers.iter().enumerate() {
        if let Ok(reply) = answer
            && best.is_none_or(|(_, b)| (reply.epoch, reply.failing_over) > (b.epoch, b.failing_over))
        {
            best = Some((index, reply));
        }
    }
    match best {
        Some((index, reply)) => Ok((index, reply.addr.clone())),
        None => Err(format!(
            "no sentinel names a primary: {}",
            answers.iter().filter_map(|a| a.as_ref().err().cloned()).collect::<Vec<_>>().join("; ")
        )),
    }
}

/// Makes `addr` the primary (or none), with the tier distrusting what it holds at that moment.
fn switch(upstream: &Upstream, tier: Option<&Tier>, stats: &Stats, addr: Option<&str>, name: &str) {
    let before = upstream.target().addr();
    if before.as_deref() == addr {
        return;
    }
    let changed = match tier {
        Some(tier) => tier.distrust(|| upstream.switch_primary(addr)),
        None => upstream.switch_primary(addr),
    };
    if !changed {
        return;
    }
    stats.primary_known(addr.is_some());
    match (before, addr) {
        (Some(old), Some(new)) => {
            stats.failovers.fetch_add(1, Ordering::Relaxed);
            warn!(master = %name, old = %old, new = %new, "the primary changed: connections to the old one closed, the local tier cleared");
        }
        (None, Some(new)) => info!(master = %name, primary = %new, "primary found"),
        (_, None) => {}
    }
}

/// Adds the sentinels the best-placed one knows of, each with its subscriber.
async fn refresh(links: &mut Vec<Link>, settings: &Arc<Settings>, subscribers: &mut JoinSet<()>, up: &Arc<Upstream>) {
    let Some(first) = links.first_mut() else { return };
    let Ok(found) = first.sentinels(settings).await else { return };
    for addr in found {
        if links.iter().all(|link| link.addr() != addr) {
            info!(sentinel = %addr, "sentinel discovered");
            subscribers.spawn(link::follow_switches(Arc::clone(settings), addr.clone(), Arc::clone(up)));
            links.push(Link::new(&addr));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(addr: &str, epoch: u64, failing_over: bool) -> Result<MasterReply, String> {
        Ok(MasterReply { addr: addr.into(), epoch, failing_over })
    }

    #[test]
    fn the_highest_epoch_wins_then_a_failover_in_progress_then_the_first() {
        let answers = [Err("a: refused".into()), reply("b:1", 3, true), reply("c:1", 4, false), reply("d:1", 4, false)];
        assert_eq!(choose(&answers), Ok((2, "c:1".into())));
        let answers = [reply("old:1", 4, false), reply("new:1", 4, true), reply("old:1", 4, false)];
        assert_eq!(choose(&answers), Ok((1, "new:1".into())));
        let none: [Result<MasterReply, String>; 2] = [Err("a: refused".into()), Err("b: no such master".into())];
        let err = choose(&none).unwrap_err();
        assert!(err.contains("a: refused") && err.contains("b: no such master"), "{err}");
    }

    #[test]
    fn time_without_a_primary_adds_up() {
        let stats = Stats::default();
        stats.primary_known(false);
        std::thread::sleep(Duration::from_millis(20));
        stats.primary_known(true);
        let first = stats.seconds_without_primary();
        assert!(first >= 0.02, "{first}");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(stats.seconds_without_primary(), first, "no time counted while a primary is known");
    }
}
