//! A real Redis Cluster on loopback: redis-server nodes with `--cluster-enabled yes`, joined
//! by `redis-cli --cluster create`, stopped on drop.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{PATIENCE, Redis};

pub struct Cluster {
    pub nodes: Vec<Redis>,
    dir: std::path::PathBuf,
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = super::free_port();
        if port < 55000 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// Runs redis-cli with `args`; its stdout, or `None` when it failed.
pub fn cli(args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli").args(args).stdin(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Cluster {
    /// `masters` masters with `replicas` replicas each, every slot covered and agreed on.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        let dir = std::env::temp_dir().join(format!("nearcache-cluster-{}-{}", std::process::id(), cluster_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let nodes: Vec<Redis> = (0..masters * (1 + replicas))
            .map(|_| {
                let port = cluster_port();
                let conf = dir.join(format!("nodes-{port}.conf"));
                Redis::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        conf.to_str().unwrap(),
                        "--cluster-node-timeout",
                        "1000",
                        "--dir",
                        dir.to_str().unwrap(),
                    ],
                )
            })
            .collect();
        let cluster = Cluster { nodes, dir };
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(cluster.nodes.iter().map(Redis::addr));
        args.extend(["--cluster-replicas".to_owned(), replicas.to_string(), "--cluster-yes".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args).expect("redis-cli --cluster create failed");
        cluster.wait_agreed();
        cluster
    }

    /// Waits until every node says the cluster is ok, every replica has finished its sync with
    /// its master (a replica promoted before that has lost what it had not received), and
    /// `--cluster check` finds it consistent.
    pub fn wait_agreed(&self) {
        let deadline = Instant::now() + PATIENCE * 3;
        loop {
            let ok = self.nodes.iter().all(|n| {
                let port = n.port.to_string();
                cli(&["-p", &port, "CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
                    && cli(&["-p", &port, "ROLE"])
                        .is_some_and(|r| r.starts_with("master") || r.contains("\nconnected\n"))
            }) && cli(&["--cluster", "check", &self.nodes[0].addr()]).is_some_and(|out| {
                out.contains("[OK] All nodes agree") && out.contains("[OK] All 16384 slots covered")
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never agreed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::addr).collect()
    }

    /// The node id of the node on `port`.
    pub fn id_of(&self, port: u16) -> String {
        cli(&["-p", &port.to_string(), "CLUSTER", "MYID"]).unwrap().trim().to_owned()
    }

    /// The port of the master serving `key`'s slot, as the cluster says.
    pub fn owner_of(&self, key: &str) -> u16 {
        let slot: u16 =
            cli(&["-p", &self.nodes[0].port.to_string(), "CLUSTER", "KEYSLOT", key]).unwrap().trim().parse().unwrap();
        self.owner_of_slot(slot)
    }

    pub fn owner_of_slot(&self, slot: u16) -> u16 {
        let out = cli(&["-p", &self.nodes[0].port.to_string(), "CLUSTER", "SLOTS"]).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        // redis-cli prints each range as start, end, then the master's host, port, id, ...
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].trim().parse::<u16>(), lines[i + 1].trim().parse::<u16>())
                && (start..=end).contains(&slot)
                && let Ok(port) = lines[i + 3].trim().parse::<u16>()
            {
                return port;
            }
            i += 1;
        }
        panic!("no owner for slot {slot} in {out}");
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        let at = self.nodes.iter().position(|n| n.port == port).unwrap();
        self.nodes.remove(at).stop();
    }

    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| cli(&["-p", &n.port.to_string(), "ROLE"]).is_some_and(|r| r.starts_with("master")))
            .map(|n| n.port)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
