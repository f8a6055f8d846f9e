//! cpu: what a target on this machine spent of the CPU during a measured window, read from
//! `/proc` (Linux):
//!
//! - **server**: the processes holding the target's listening socket, with their descendants
//!   (this server's embedded PostgreSQL is its child, gunicorn's workers are the master's);
//!   a database, queue or worker started apart from the server is not among them;
//! - **machine**: every process's CPU time (the kernel's threads too), less loadtest's own: on a
//!   machine given to one implementation (`--before-each`), everything it runs, its database
//!   and workers included, and whatever else ran there.
//!
//! Both are sums of the processes' own counts, which the kernel keeps exactly; not the busy time
//! of `/proc/stat`, which a tickless kernel samples at its ticks and which missed a quarter of a
//! bursty server's time here (a CPU that goes idle between ticks is counted idle).
//!
//! A target is on this machine when a socket listening on its port is bound to its address (or
//! to any address, for a loopback target). Other targets have no CPU figures: this machine's
//! CPU says nothing of theirs.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use serde_json::{json, Value};

use crate::client::Target;

/// Busy CPU time during one measured window.
#[derive(Clone, Debug, PartialEq)]
pub struct Cpu {
    /// Wall-clock seconds of the window.
    pub seconds: f64,
    /// The serving processes' CPU seconds, when they could be read (another user's processes
    /// cannot be, unless loadtest runs as root).
    pub server: Option<Server>,
    /// CPU seconds of every process on the machine, loadtest's own included.
    pub machine_s: f64,
    /// loadtest's own CPU seconds.
    pub loadtest_s: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub cpu_s: f64,
    /// The processes holding the listening socket, as "command pid".
    pub holders: Vec<String>,
    /// Processes counted at the end of the window: the holders and their descendants.
    pub processes: usize,
}

impl Cpu {
    /// The CPU seconds of every process but loadtest.
    pub fn others_s(&self) -> f64 {
        (self.machine_s - self.loadtest_s).max(0.0)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "server": self.server.as_ref().map(|s| json!({
                "cpu_s": s.cpu_s,
                "holders": s.holders,
                "processes": s.processes,
            })),
            "machine_s": self.machine_s,
            "loadtest_s": self.loadtest_s,
        })
    }

    pub fn from_json(v: &Value) -> Option<Cpu> {
        let f = |v: &Value, k: &str| v[k].as_f64();
        let server = match &v["server"] {
            Value::Null => None,
            s => Some(Server {
                cpu_s: f(s, "cpu_s")?,
                holders: s["holders"]
                    .as_array()?
                    .iter()
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect(),
                processes: s["processes"].as_u64()? as usize,
            }),
        };
        Some(Cpu {
            seconds: f(v, "seconds")?,
            server,
            machine_s: f(v, "machine_s")?,
            loadtest_s: f(v, "loadtest_s")?,
        })
    }
}

/// The readings at the start of a window.
pub struct Probe {
    started: Instant,
    holders: Vec<u32>,
    server_ticks: u64,
    machine_ticks: u64,
    own_ticks: u64,
}

impl Probe {
    /// Starts a window for `target`; `None` when it is not on this machine, or `/proc` cannot
    /// be read.
    pub fn start(target: &Target) -> Option<Probe> {
        let addrs: Vec<SocketAddr> = if target.nodes.is_empty() {
            vec![target.addr]
        } else {
            target.nodes.iter().map(|n| n.addr).collect()
        };
        let inodes = listening_inodes(&addrs);
        if inodes.is_empty() {
            return None;
        }
        let all = processes();
        let holders = holders(&inodes, &all);
        Some(Probe {
            started: Instant::now(),
            server_ticks: tree_ticks(&holders, &all).0,
            holders,
            machine_ticks: all.values().map(Stat::ticks).sum(),
            own_ticks: all.get(&std::process::id())?.ticks(),
        })
    }

    /// Ends the window.
    pub fn finish(self) -> Option<Cpu> {
        let seconds = self.started.elapsed().as_secs_f64();
        let hz = rustix::param::clock_ticks_per_second() as f64;
        let all = processes();
        let machine: u64 = all.values().map(Stat::ticks).sum();
        let own = all.get(&std::process::id())?.ticks();
        let server = (!self.holders.is_empty()).then(|| {
            let (ticks, processes) = tree_ticks(&self.holders, &all);
            Server {
                cpu_s: ticks.saturating_sub(self.server_ticks) as f64 / hz,
                holders: self
                    .holders
                    .iter()
                    .map(|p| match all.get(p) {
                        Some(s) => format!("{} {p}", s.command),
                        None => format!("{p} (gone)"),
                    })
                    .collect(),
                processes,
            }
        });
        Some(Cpu {
            seconds,
            server,
            machine_s: machine.saturating_sub(self.machine_ticks) as f64 / hz,
            loadtest_s: own.saturating_sub(self.own_ticks) as f64 / hz,
        })
    }
}

/// One process as `/proc/PID/stat` gives it.
struct Stat {
    parent: u32,
    command: String,
    /// User and system ticks of the process, its threads' in all.
    own: u64,
    /// Those of its children it has waited for: a backend that exits during a window still
    /// counts, in its parent.
    children: u64,
}

impl Stat {
    fn ticks(&self) -> u64 {
        self.own + self.children
    }
}

fn parse_stat(line: &str) -> Option<Stat> {
    // "pid (command) state ppid ... utime stime cutime cstime ...": the command may hold
    // spaces and parentheses, so the fields are those after its last ')'.
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let fields: Vec<&str> = line.get(close + 2..)?.split(' ').collect();
    let n = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        parent: n(1)? as u32,
        command: line[open + 1..close].to_string(),
        own: n(11)? + n(12)?,
        children: n(13)? + n(14)?,
    })
}

fn processes() -> HashMap<u32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some((pid, parse_stat(&line)?))
    })
    .collect()
}

/// The ticks of `roots` and all their descendants, and how many processes that is.
fn tree_ticks(roots: &[u32], all: &HashMap<u32, Stat>) -> (u64, usize) {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, s) in all {
        children.entry(s.parent).or_default().push(pid);
    }
    let (mut ticks, mut seen) = (0, HashSet::new());
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(s) = all.get(&pid) {
            ticks += s.ticks();
        }
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    (ticks, seen.len())
}

/// The outermost processes holding one of these socket inodes: those with no holder among
/// their ancestors (gunicorn's master, not each worker that inherited its socket).
fn holders(inodes: &HashSet<u64>, all: &HashMap<u32, Stat>) -> Vec<u32> {
    let holding: HashSet<u32> = all
        .keys()
        .copied()
        .filter(|pid| holds(*pid, inodes))
        .collect();
    let mut roots: Vec<u32> = holding
        .iter()
        .copied()
        .filter(|&pid| {
            let mut p = all.get(&pid).map(|s| s.parent);
            while let Some(parent) = p.filter(|&p| p > 1) {
                if holding.contains(&parent) {
                    return false;
                }
                p = all.get(&parent).map(|s| s.parent);
            }
            true
        })
        .collect();
    roots.sort_unstable();
    roots
}

fn holds(pid: u32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|link| {
            link.to_str()
                .and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

/// Inodes of the sockets listening on one of `addrs` on this machine.
fn listening_inodes(addrs: &[SocketAddr]) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for (bound, inode) in text.lines().skip(1).filter_map(parse_listener) {
            if addrs.iter().any(|a| serves(bound, *a)) {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// A listening socket of `/proc/net/tcp{,6}`: its address and inode.
fn parse_listener(line: &str) -> Option<(SocketAddr, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.get(3) != Some(&"0A") {
        return None;
    }
    let (ip, port) = f.get(1)?.split_once(':')?;
    // Each 32-bit word as the kernel holds it, printed in hex: its bytes in memory order are
    // the address's, in network order.
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((
        SocketAddr::new(ip, u16::from_str_radix(port, 16).ok()?),
        f.get(9)?.parse().ok()?,
    ))
}

/// Whether a socket bound to `bound` takes connections to `target` on this machine.
fn serves(bound: SocketAddr, target: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (bound_ip, target_ip) = (canonical(bound.ip()), canonical(target.ip()));
    bound.port() == target.port()
        && (bound_ip == target_ip || (bound_ip.is_unspecified() && target_ip.is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_command_with_spaces_and_parentheses() {
        let line = "4242 (postgres: a (b) c) S 4200 4242 4242 0 -1 4194560 100 0 0 0 \
                    70 30 5 7 20 0 1 0 100 1000 50";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.parent, 4200);
        assert_eq!(s.command, "postgres: a (b) c");
        assert_eq!((s.own, s.children), (70 + 30, 5 + 7));
    }

    #[test]
    fn listeners_are_read_from_both_tables_and_matched_to_the_target() {
        let v4 = "   0: 0100007F:4844 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 917 1 0000000000000000 100 0 0 10 0";
        let (addr, inode) = parse_listener(v4).unwrap();
        assert_eq!(addr, "127.0.0.1:18500".parse().unwrap());
        assert_eq!(inode, 917);
        let established = v4.replace(" 0A ", " 01 ");
        assert!(parse_listener(&established).is_none(), "only LISTEN");
        let v6_any = "   1: 00000000000000000000000000000000:4844 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 918 1 0000000000000000 100 0 0 10 0";
        let (any, _) = parse_listener(v6_any).unwrap();
        assert_eq!(any, "[::]:18500".parse().unwrap());

        let target: SocketAddr = "127.0.0.1:18500".parse().unwrap();
        assert!(serves(addr, target));
        assert!(serves(any, target), "a wildcard socket serves loopback");
        assert!(!serves(addr, "127.0.0.1:18501".parse().unwrap()));
        assert!(
            !serves(any, "10.1.2.3:18500".parse().unwrap()),
            "a wildcard socket here says nothing of whether 10.1.2.3 is this machine"
        );
        assert!(serves(
            "[::ffff:10.1.2.3]:18500".parse().unwrap(),
            "10.1.2.3:18500".parse().unwrap()
        ));
    }

    fn stat(parent: u32, own: u64) -> Stat {
        Stat {
            parent,
            command: "x".into(),
            own,
            children: 0,
        }
    }

    #[test]
    fn a_tree_counts_the_holders_and_every_descendant_once() {
        let all: HashMap<u32, Stat> = [
            (10, stat(1, 100)),
            (11, stat(10, 10)),
            (12, stat(11, 1)),
            (20, stat(1, 1000)),
        ]
        .into_iter()
        .collect();
        assert_eq!(tree_ticks(&[10], &all), (111, 3));
        assert_eq!(tree_ticks(&[10, 11], &all), (111, 3));
    }

    #[test]
    fn this_process_is_found_holding_its_listening_socket_and_its_cpu_is_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let probe = Probe::start(&target).expect("a local listener");
        assert_eq!(probe.holders, [std::process::id()]);
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed().as_millis() < 300 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let cpu = probe.finish().unwrap();
        let server = cpu.server.clone().unwrap();
        assert!(server.cpu_s >= 0.1, "{cpu:?}");
        assert!(
            cpu.loadtest_s >= 0.1 && cpu.machine_s >= cpu.loadtest_s - 0.05,
            "{cpu:?}"
        );
        assert!(server.holders[0].ends_with(&std::process::id().to_string()));
        assert_eq!(Cpu::from_json(&cpu.to_json()), Some(cpu));
        drop(listener);
        assert!(Probe::start(&target).is_none(), "nothing listens there now");
    }
}
