//! Bytes on the wire of one UDP port on this host, from iptables counters
//! (root only): what an idle agent's QUIC connection really costs, IP and
//! UDP headers included.

/// Counts the packets to and from one local UDP port until dropped.
pub struct UdpWireCounter {
    chain: String,
    port: u16,
}

/// Totals since the counter was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpWire {
    /// Packets and bytes sent to the port (agent → server).
    pub to_port: (u64, u64),
    /// Packets and bytes sent from the port (server → agent).
    pub from_port: (u64, u64),
}

impl UdpWire {
    /// The traffic between `earlier` and this reading.
    pub fn since(&self, earlier: &UdpWire) -> UdpWire {
        let d = |a: (u64, u64), b: (u64, u64)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1));
        UdpWire {
            to_port: d(self.to_port, earlier.to_port),
            from_port: d(self.from_port, earlier.from_port),
        }
    }
}

/// `iptables ARGS...` (the wire counter needs root and iptables).
fn iptables(args: &[&str]) -> anyhow::Result<String> {
    crate::netns::run("iptables", args)
}

impl UdpWireCounter {
    /// Starts counting the UDP traffic of local `port` (every packet leaves
    /// through OUTPUT, loopback included).
    pub fn start(port: u16) -> anyhow::Result<Self> {
        let chain = format!("WIRE{}_{port}", std::process::id());
        iptables(&["-N", &chain])?;
        let counter = Self { chain, port };
        let p = port.to_string();
        iptables(&["-A", &counter.chain, "-p", "udp", "--dport", &p])?;
        iptables(&["-A", &counter.chain, "-p", "udp", "--sport", &p])?;
        iptables(&["-I", "OUTPUT", "-p", "udp", "-j", &counter.chain])?;
        Ok(counter)
    }

    /// The totals so far.
    pub fn read(&self) -> anyhow::Result<UdpWire> {
        let listing = iptables(&["-L", &self.chain, "-v", "-x", "-n"])?;
        let mut wire = UdpWire::default();
        for line in listing.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(pkts), Some(bytes)) = (fields.first(), fields.get(1)) else {
                continue;
            };
            let (Ok(pkts), Ok(bytes)) = (pkts.parse(), bytes.parse()) else {
                continue;
            };
            if line.contains(&format!("dpt:{}", self.port)) {
                wire.to_port = (pkts, bytes);
            } else if line.contains(&format!("spt:{}", self.port)) {
                wire.from_port = (pkts, bytes);
            }
        }
        Ok(wire)
    }
}

impl Drop for UdpWireCounter {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "OUTPUT", "-p", "udp", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}
