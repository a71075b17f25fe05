//! Network namespaces for tests that need a real network topology: an edge
//! node behind NAT, which the cloud can reach only through the tunnel the
//! agent dials out.
//!
//! ```text
//!  root ns ("cloud": server, test)      NAT ns                      edge ns (agent, services)
//!  et<n>c<pid> 10.231.X.1/24  <-veth->  to-cloud 10.231.X.2/24
//!                                       to-edge  10.231.Y.1/24  <-veth->  to-nat 10.231.Y.2/24
//!                                       ip_forward=1                      default via 10.231.Y.1
//!                                       MASQUERADE out of to-cloud
//! ```
//!
//! The root namespace gets only the directly connected route to X; it has no
//! route to Y, so the server cannot open a connection to the edge, exactly
//! like a cloud in front of an edge site behind a home router.
//!
//! Needs root, iproute2 (`ip netns`) and iptables. Every name carries the test
//! process id and a per-process counter, so parallel runs never collide, and
//! everything is removed on drop (also while unwinding from a failed
//! assertion). Nothing outside the created namespaces is touched except the
//! one root-side veth and its connected route, which go away with it.

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use nix::sched::{setns, CloneFlags};

/// Why namespace tests cannot run here, or `None` when they can.
///
/// Only root can create namespaces and veths; a container without
/// `CAP_SYS_ADMIN` or without iproute2 cannot either.
pub fn unavailable_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip` (iproute2): {e}")),
    }
}

/// Prints a loud `SKIPPED` line and returns true when namespace tests cannot
/// run, so a test outside root passes visibly instead of silently.
///
/// The line goes to stderr, which `cargo test` shows for passing tests only
/// with `--nocapture`; it is therefore also framed so it stands out in CI logs.
pub fn skip_unless_available(test: &str) -> bool {
    match unavailable_reason() {
        None => false,
        Some(why) => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: {test}: NAT test needs root and ip netns ({why}) !!!!!!!!\n"
            );
            true
        }
    }
}

/// Runs a command; its trimmed stdout, or an error naming the command and its stderr.
pub(crate) fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running `{cmd} {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `ip ARGS...`
fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// Runs a command inside namespace `ns` (`ip netns exec`); its trimmed stdout.
pub fn in_ns(ns: &str, cmd: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    ip(&args)
}

/// What [`forward_drop`] blocks in a namespace's FORWARD chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// UDP only: QUIC cannot pass, TCP (the WebSocket fallback) can.
    Udp,
    /// Everything: the link is down.
    All,
}

/// Inserts (`on`) or deletes a DROP rule for `blocked` in the FORWARD chain
/// of `ns` (a NAT namespace between cloud and edge); panics if iptables fails.
pub fn forward_drop(ns: &str, blocked: Blocked, on: bool) {
    let mut args = vec!["iptables", if on { "-I" } else { "-D" }, "FORWARD"];
    if blocked == Blocked::Udp {
        args.extend(["-p", "udp"]);
    }
    args.extend(["-j", "DROP"]);
    if let Err(e) = in_ns(ns, &args) {
        panic!("{}: {e:#}", args.join(" "));
    }
}

/// Picks two /24s under 10.231.0.0/16 that the root namespace neither routes
/// nor has addresses in: one for cloud<->NAT, one for NAT<->edge.
///
/// The edge subnet must be unknown to the root namespace too, or the
/// "cloud cannot reach the edge" check could hit someone else's network.
/// The scan starts at a pid-derived offset so concurrent runs usually pick
/// different pairs; the caller verifies the route afterwards.
fn pick_subnets(seed: u32) -> anyhow::Result<(u8, u8)> {
    let mut used = ip(&["-4", "route", "show", "table", "all"])?;
    used.push('\n');
    used.push_str(&ip(&["-4", "addr", "show"])?);
    let taken = |x: u32| used.contains(&format!("10.231.{x}."));
    let start = seed % 127;
    for i in 0..127 {
        let x = ((start + i) % 127) * 2;
        if !taken(x) && !taken(x + 1) {
            return Ok((x as u8, (x + 1) as u8));
        }
    }
    bail!("no free pair of /24s in 10.231.0.0/16 on this host")
}

/// A cloud <-> NAT <-> edge topology of namespaces and veths, removed on drop.
#[derive(Debug)]
pub struct NatTopology {
    /// The NAT ("home router") namespace.
    pub nat_ns: String,
    /// The edge namespace, where the agent and the edge services run.
    pub edge_ns: String,
    /// Root-namespace veth name (the cloud end of the link to the NAT ns).
    pub cloud_if: String,
    /// Address of `cloud_if`: where the server listens for agents.
    pub cloud_ip: Ipv4Addr,
    /// The NAT namespace's cloud-side address: what the cloud sees as the
    /// source of every edge connection (MASQUERADE).
    pub nat_cloud_ip: Ipv4Addr,
    /// The NAT namespace's edge-side address (the edge's default gateway).
    pub nat_edge_ip: Ipv4Addr,
    /// The edge node's IP: the agent certificate's node IP and the services' address.
    pub edge_ip: Ipv4Addr,
}

impl NatTopology {
    /// Builds the topology. On error everything created so far is removed.
    ///
    /// Requires iptables for MASQUERADE: a root machine with `ip netns` but
    /// without iptables fails here (rather than skipping) so that a CI image
    /// missing the package is noticed instead of silently testing nothing.
    pub fn create() -> anyhow::Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let (x, y) = pick_subnets(pid.wrapping_mul(7).wrapping_add(n))?;
        let topo = Self {
            nat_ns: format!("et-nat-{pid}-{n}"),
            edge_ns: format!("et-edge-{pid}-{n}"),
            // IFNAMSIZ is 16: "et" + counter + "c" + pid (at most 7 digits) fits.
            cloud_if: format!("et{n}c{pid}"),
            cloud_ip: Ipv4Addr::new(10, 231, x, 1),
            nat_cloud_ip: Ipv4Addr::new(10, 231, x, 2),
            nat_edge_ip: Ipv4Addr::new(10, 231, y, 1),
            edge_ip: Ipv4Addr::new(10, 231, y, 2),
        };
        // Leftovers of an earlier process that had the same pid (killed before
        // its drop ran): same names, so ours would fail to create. Only these
        // exact names are touched, never other runs' namespaces.
        topo.teardown();
        // From here on, `topo` is armed: an early return drops it and cleans up.
        topo.build().context("building the NAT test topology")?;
        Ok(topo)
    }

    fn build(&self) -> anyhow::Result<()> {
        let (nat, edge, cif) = (&self.nat_ns, &self.edge_ns, &self.cloud_if);
        ip(&["netns", "add", nat])?;
        ip(&["netns", "add", edge])?;
        // The peers are created directly inside their namespaces, so their
        // short names cannot clash with anything in the root namespace.
        ip(&[
            "link", "add", cif, "type", "veth", "peer", "name", "to-cloud", "netns", nat,
        ])?;
        ip(&[
            "link", "add", "to-edge", "netns", nat, "type", "veth", "peer", "name", "to-nat",
            "netns", edge,
        ])?;

        let cidr = |a: Ipv4Addr| format!("{a}/24");
        ip(&["addr", "add", &cidr(self.cloud_ip), "dev", cif])?;
        ip(&["link", "set", cif, "up"])?;

        ip(&["-n", nat, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            nat,
            "addr",
            "add",
            &cidr(self.nat_cloud_ip),
            "dev",
            "to-cloud",
        ])?;
        ip(&["-n", nat, "link", "set", "to-cloud", "up"])?;
        ip(&[
            "-n",
            nat,
            "addr",
            "add",
            &cidr(self.nat_edge_ip),
            "dev",
            "to-edge",
        ])?;
        ip(&["-n", nat, "link", "set", "to-edge", "up"])?;

        ip(&["-n", edge, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            edge,
            "addr",
            "add",
            &cidr(self.edge_ip),
            "dev",
            "to-nat",
        ])?;
        ip(&["-n", edge, "link", "set", "to-nat", "up"])?;
        ip(&[
            "-n",
            edge,
            "route",
            "add",
            "default",
            "via",
            &self.nat_edge_ip.to_string(),
        ])?;

        // The router: forwarding is per namespace, so this changes nothing in root.
        in_ns(nat, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        in_ns(
            nat,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "to-cloud",
                "-j",
                "MASQUERADE",
            ],
        )
        .context("iptables is required for the NAT topology (Debian: apt-get install iptables)")?;

        // A concurrent run could have picked the same cloud subnet between our
        // scan and `addr add`; then routing in root would be ambiguous.
        let x = self.cloud_ip.octets()[2];
        let routes = ip(&["-4", "route", "show", &format!("10.231.{x}.0/24")])?;
        if routes.lines().count() != 1 || !routes.contains(&format!("dev {cif} ")) {
            bail!("10.231.{x}.0/24 is routed elsewhere too (a concurrent run?):\n{routes}");
        }
        Ok(())
    }

    /// Removes everything by name; errors (already gone) are ignored.
    fn teardown(&self) {
        // Deleting one end of a veth deletes its peer; doing it explicitly (and
        // first) frees the root-side name and route at once, whereas namespace
        // destruction is asynchronous and could lag behind a quick re-run.
        let _ = ip(&["link", "del", &self.cloud_if]);
        let _ = ip(&["netns", "del", &self.edge_ns]);
        let _ = ip(&["netns", "del", &self.nat_ns]);
    }

    /// Cluster certificates in `dir` whose server certificate also names the
    /// cloud veth address, which agents in the edge namespace dial.
    pub fn cloud_pki(&self, dir: &std::path::Path) -> anyhow::Result<crate::pki::Pki> {
        certs::init_cluster(
            dir,
            "localhost",
            &["127.0.0.1".parse()?, std::net::IpAddr::V4(self.cloud_ip)],
            false,
        )?;
        Ok(crate::pki::Pki {
            dir: dir.to_path_buf(),
        })
    }

    /// A runtime whose tasks run inside the edge namespace (for edge services).
    pub fn edge_runtime(&self) -> anyhow::Result<NsRuntime> {
        NsRuntime::enter(&self.edge_ns)
    }

    /// What `ip route get` in the root namespace says about the edge IP.
    pub fn root_route_to_edge(&self) -> anyhow::Result<String> {
        ip(&["-4", "route", "get", &self.edge_ip.to_string()])
    }

    /// The packet counter of the NAT namespace's MASQUERADE rule (proof that
    /// edge traffic was actually rewritten, not routed).
    pub fn masquerade_packets(&self) -> anyhow::Result<u64> {
        let out = in_ns(
            &self.nat_ns,
            &[
                "iptables",
                "-t",
                "nat",
                "-L",
                "POSTROUTING",
                "-v",
                "-n",
                "-x",
            ],
        )?;
        out.lines()
            .find(|l| l.contains("MASQUERADE"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no MASQUERADE counter in:\n{out}"))
    }
}

impl NatTopology {
    /// Adds `10.231.Y.<host>` to the edge namespace's link (a second edge
    /// node's IP in the same namespace); the address.
    pub fn add_edge_ip(&self, host: u8) -> anyhow::Result<Ipv4Addr> {
        let [a, b, c, _] = self.edge_ip.octets();
        let addr = Ipv4Addr::new(a, b, c, host);
        ip(&[
            "-n",
            &self.edge_ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "to-nat",
        ])?;
        Ok(addr)
    }

    /// Adds `10.231.X.<host>` to the root side of the cloud veth (another
    /// cloud server's address, reachable from the edge through the NAT); the
    /// address. It goes away with the veth.
    pub fn add_cloud_ip(&self, host: u8) -> anyhow::Result<Ipv4Addr> {
        let [a, b, c, _] = self.cloud_ip.octets();
        let addr = Ipv4Addr::new(a, b, c, host);
        ip(&["addr", "add", &format!("{addr}/24"), "dev", &self.cloud_if])?;
        Ok(addr)
    }
}

/// Files under `/etc/netns/<ns>/`, which `ip netns exec <ns>` bind-mounts
/// over `/etc/` for the command it runs: a namespace's own `/etc/hosts`
/// without touching the host's. The directory is removed on drop.
pub struct NsEtc {
    dir: std::path::PathBuf,
}

impl NsEtc {
    /// Writes `/etc/netns/<ns>/hosts`.
    pub fn hosts(ns: &str, contents: &str) -> anyhow::Result<Self> {
        Self::file(ns, "hosts", contents)
    }

    /// Writes `/etc/netns/<ns>/<name>` (e.g. `resolv.conf`: the namespace's own resolver).
    pub fn file(ns: &str, name: &str, contents: &str) -> anyhow::Result<Self> {
        let dir = std::path::Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let etc = Self { dir };
        std::fs::write(etc.dir.join(name), contents)?;
        Ok(etc)
    }
}

impl Drop for NsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for NatTopology {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A dedicated thread that entered a network namespace and runs a
/// current-thread tokio runtime there, so edge services can live in the test
/// process (sharing its clock and memory) while their sockets are inside the
/// edge namespace.
///
/// Why a thread and not `ip netns exec` of a helper binary: `setns` switches
/// only the calling thread, and a socket belongs to the namespace of the
/// thread that creates it. Every task spawned here runs on that one thread, so
/// every socket it opens is in the namespace, and the test can compare
/// `Instant`s taken by a service with its own (per-line latency) without a
/// second binary or a wire protocol for results.
///
/// Moves the calling thread into the named namespace; threads it starts
/// afterwards (a tokio runtime's workers, say) are inside too.
pub fn enter_on_this_thread(ns: &str) -> anyhow::Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let want_ino = file.metadata()?.ino();
    setns_checked(&file, want_ino).with_context(|| format!("entering netns {ns}"))
}

fn setns_checked(file: &File, want_ino: u64) -> anyhow::Result<()> {
    setns(file, CloneFlags::CLONE_NEWNET).context("setns")?;
    // Check that this thread really is in the namespace now.
    let ino = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    if ino != want_ino {
        bail!("thread is in netns inode {ino}, expected {want_ino}");
    }
    Ok(())
}

/// Drop this before the [`NatTopology`]: a thread still inside a namespace
/// keeps it alive after `ip netns del`.
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the thread inside the named namespace (`/var/run/netns/NAME`).
    pub fn enter(ns: &str) -> anyhow::Result<Self> {
        let path = format!("/var/run/netns/{ns}");
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let want_ino = file.metadata()?.ino();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("netns {ns}"))
            .spawn(move || {
                let setup = || -> anyhow::Result<tokio::runtime::Runtime> {
                    setns_checked(&file, want_ino)?;
                    Ok(tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?)
                };
                match setup() {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(rt.handle().clone()));
                        // Runs spawned tasks until the stop sender is dropped.
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let handle = ready_rx
            .recv()
            .context("namespace thread died")?
            .with_context(|| format!("entering netns {ns}"))?;
        Ok(Self {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Runs `fut` on the namespace thread; sockets it opens are in the namespace.
    ///
    /// Only tasks on this runtime are inside; `spawn_blocking` work started
    /// from them runs on pool threads and is not guaranteed to be.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        // Dropping the sender ends `block_on`; dropping the runtime on its own
        // thread then cancels the services and closes their sockets.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
