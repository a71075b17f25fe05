//! `--hub-interface NAME`: a dummy network interface holding the HTTPS
//! listener's address, so pods can reach `--hub-https-addr` (a link-local
//! address such as 169.254.2.1 that no other interface has), as YurtHub
//! does with its `yurthub-dummy0`.
//!
//! The agent image has no `ip` binary, so this speaks rtnetlink itself, in
//! three requests that are each idempotent: create the `dummy` link (an
//! existing interface of that name, of any type, is used as it is), set it
//! up, add the address as a /32 (or /128; an existing one is fine). It needs
//! `CAP_NET_ADMIN` in the node's network namespace, and a kernel with the
//! `dummy` driver unless the interface exists already.
//!
//! The messages are built by pure functions ([`new_dummy_link`],
//! [`set_link_up`], [`add_address`]) and the kernel's answer is read by
//! [`parse_ack`], which checks every length it is given; the socket is the
//! thin layer in [`ensure`].

use std::net::IpAddr;

/// Kernels limit interface names to 15 bytes (`IFNAMSIZ` - 1).
const MAX_NAME: usize = 15;

/// Why the interface could not be set up; messages name the interface.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubInterfaceError {
    #[error("--hub-interface {0:?}: an interface name is 1-15 characters without `/`, `:` or whitespace")]
    BadName(String),
    #[error("--hub-interface {name}: {step}: permission denied (the agent needs CAP_NET_ADMIN)")]
    NoPermission { name: String, step: &'static str },
    #[error("--hub-interface {0}: this kernel has no `dummy` link type (CONFIG_DUMMY / module dummy); create the interface beforehand (any type) and the agent only adds the address")]
    NoDummyDriver(String),
    #[error("--hub-interface {name}: {step}: {reason}")]
    Kernel {
        name: String,
        step: &'static str,
        reason: String,
    },
    #[error("--hub-interface {name}: {step}: unreadable netlink answer ({reason})")]
    BadAnswer {
        name: String,
        step: &'static str,
        reason: &'static str,
    },
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn check_name(name: &str) -> Result<(), HubInterfaceError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if bad {
        return Err(HubInterfaceError::BadName(name.to_owned()));
    }
    Ok(())
}

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const IFLA_INFO_KIND: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const IFF_UP: u32 = 1;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink request under construction: header, fixed part, attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = vec![0u8; NLMSG_HDR];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        Self { buf }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// One attribute; its data is padded to 4 bytes.
    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.bytes(data)
    }

    fn finish(&mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        std::mem::take(&mut self.buf)
    }
}

/// `struct ifinfomsg`: family, type, index, flags, change.
fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn c_name(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// RTM_NEWLINK creating a `dummy` link called `name` (fails with EEXIST when it exists).
pub fn new_dummy_link(name: &str, seq: u32) -> Vec<u8> {
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut kind = Request { buf: Vec::new() };
    kind.attr(IFLA_INFO_KIND, b"dummy");
    let link_info = kind.buf;
    Request::new(libc::RTM_NEWLINK, flags, seq)
        .bytes(&ifinfomsg(0, 0, 0))
        .attr(libc::IFLA_IFNAME, &c_name(name))
        .attr(libc::IFLA_LINKINFO | NLA_F_NESTED, &link_info)
        .finish()
}

/// RTM_NEWLINK setting link `index` up.
pub fn set_link_up(index: u32, seq: u32) -> Vec<u8> {
    Request::new(libc::RTM_NEWLINK, 0, seq)
        .bytes(&ifinfomsg(index as i32, IFF_UP, IFF_UP))
        .finish()
}

/// RTM_NEWADDR adding `ip` as a host address (/32 or /128) to link `index`
/// (fails with EEXIST when it is there).
pub fn add_address(index: u32, ip: IpAddr, seq: u32) -> Vec<u8> {
    let (family, prefix, octets) = match ip {
        IpAddr::V4(v4) => (libc::AF_INET, 32u8, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6, 128u8, v6.octets().to_vec()),
    };
    let mut msg = [0u8; 8];
    msg[0] = family as u8;
    msg[1] = prefix;
    msg[3] = libc::RT_SCOPE_UNIVERSE;
    msg[4..8].copy_from_slice(&index.to_ne_bytes());
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    Request::new(libc::RTM_NEWADDR, flags, seq)
        .bytes(&msg)
        .attr(libc::IFA_LOCAL, &octets)
        .attr(libc::IFA_ADDRESS, &octets)
        .finish()
}

/// What the kernel answered to request `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    Ok,
    /// A positive errno.
    Errno(i32),
}

/// Finds the acknowledgement of `seq` in one datagram from the kernel.
/// Every length is checked against what was received.
pub fn parse_ack(datagram: &[u8], seq: u32) -> Result<Option<Ack>, &'static str> {
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDR {
            return Err("truncated message header");
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDR || len > rest.len() {
            return Err("message length outside the datagram");
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let got_seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if kind == NLMSG_ERROR && got_seq == seq {
            let body = &rest[NLMSG_HDR..len];
            if body.len() < 4 {
                return Err("truncated error message");
            }
            let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            return Ok(Some(if code == 0 {
                Ack::Ok
            } else {
                Ack::Errno(code.saturating_neg())
            }));
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
    Ok(None)
}

/// Creates (or finds) interface `name`, sets it up and gives it `ip`.
pub fn ensure(name: &str, ip: IpAddr) -> Result<(), HubInterfaceError> {
    check_name(name)?;
    let sock = NetlinkSocket::open().map_err(|e| kernel(name, "opening a netlink socket", &e))?;
    let exists_ok = |step: &'static str, ack: Ack| match ack {
        Ack::Ok | Ack::Errno(libc::EEXIST) => Ok(()),
        Ack::Errno(libc::EPERM) => Err(HubInterfaceError::NoPermission {
            name: name.to_owned(),
            step,
        }),
        Ack::Errno(e) => Err(kernel(name, step, &std::io::Error::from_raw_os_error(e))),
    };
    let step = "creating the dummy link";
    match sock.call(name, step, &new_dummy_link(name, 1), 1)? {
        Ack::Errno(libc::EOPNOTSUPP) => return Err(HubInterfaceError::NoDummyDriver(name.into())),
        ack => exists_ok(step, ack)?,
    }
    let index = if_index(name).map_err(|e| kernel(name, "finding its index", &e))?;
    let step = "setting it up";
    exists_ok(step, sock.call(name, step, &set_link_up(index, 2), 2)?)?;
    let step = "adding the listener's address";
    exists_ok(step, sock.call(name, step, &add_address(index, ip, 3), 3)?)?;
    tracing::info!(interface = name, %ip, "HTTPS listener address is on its dummy interface");
    Ok(())
}

fn kernel(name: &str, step: &'static str, e: &std::io::Error) -> HubInterfaceError {
    HubInterfaceError::Kernel {
        name: name.to_owned(),
        step,
        reason: e.to_string(),
    }
}

fn if_index(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(index)
}

/// A blocking NETLINK_ROUTE socket (three requests at startup).
struct NetlinkSocket {
    fd: std::os::fd::OwnedFd,
}

/// An answer that does not come within this time is an error, not a hang.
const ANSWER_TIMEOUT_SECS: libc::time_t = 5;

impl NetlinkSocket {
    fn open() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: ANSWER_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: `timeout` outlives the call; the length matches its type.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Sends one request to the kernel and waits for its acknowledgement.
    fn call(
        &self,
        name: &str,
        step: &'static str,
        msg: &[u8],
        seq: u32,
    ) -> Result<Ack, HubInterfaceError> {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero sockaddr_nl is valid; pid 0 addresses the kernel.
        let mut kernel_addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel_addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `kernel_addr` are valid for the call; lengths match.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel_addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(kernel(name, step, &std::io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 8192];
        for _ in 0..16 {
            // SAFETY: `buf` is writable for its whole length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(kernel(name, step, &std::io::Error::last_os_error()));
            }
            let got = &buf[..n as usize];
            match parse_ack(got, seq) {
                Ok(Some(ack)) => return Ok(ack),
                Ok(None) => continue,
                Err(reason) => {
                    return Err(HubInterfaceError::BadAnswer {
                        name: name.to_owned(),
                        step,
                        reason,
                    })
                }
            }
        }
        Err(HubInterfaceError::BadAnswer {
            name: name.to_owned(),
            step,
            reason: "no acknowledgement",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes([b[i], b[i + 1]])
    }

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    #[test]
    fn names_follow_the_kernels_rules() {
        for ok in ["edgehub0", "yurthub-dummy0", "a", "x234567890abcde"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "eth0:1", "x234567890abcdef"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_dummy_link_request_is_laid_out_as_rtnetlink_expects() {
        let m = new_dummy_link("edgehub0", 7);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(m.len() % 4, 0);
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWLINK);
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        assert_eq!(u16_at(&m, 6), flags as u16);
        assert_eq!(u32_at(&m, 8), 7);
        // ifinfomsg (16 bytes), then IFLA_IFNAME "edgehub0\0" (4 + 9, padded to 16).
        let attr = NLMSG_HDR + 16;
        assert_eq!(
            (u16_at(&m, attr), u16_at(&m, attr + 2)),
            (13, libc::IFLA_IFNAME)
        );
        assert_eq!(&m[attr + 4..attr + 13], b"edgehub0\0");
        // Nested IFLA_LINKINFO holding IFLA_INFO_KIND "dummy".
        let info = attr + 16;
        assert_eq!(u16_at(&m, info + 2), libc::IFLA_LINKINFO | NLA_F_NESTED);
        assert_eq!(u16_at(&m, info), 4 + 12);
        assert_eq!(
            (u16_at(&m, info + 4), u16_at(&m, info + 6)),
            (9, IFLA_INFO_KIND)
        );
        assert_eq!(&m[info + 8..info + 13], b"dummy");
        assert_eq!(m.len(), info + 16);
    }

    #[test]
    fn the_address_request_is_a_host_route_on_the_link() {
        let m = add_address(5, "169.254.2.1".parse().unwrap(), 3);
        assert_eq!(u16_at(&m, 4), libc::RTM_NEWADDR);
        assert_eq!(m[NLMSG_HDR], libc::AF_INET as u8);
        assert_eq!(m[NLMSG_HDR + 1], 32);
        assert_eq!(u32_at(&m, NLMSG_HDR + 4), 5);
        let local = NLMSG_HDR + 8;
        assert_eq!(
            (u16_at(&m, local), u16_at(&m, local + 2)),
            (8, libc::IFA_LOCAL)
        );
        assert_eq!(&m[local + 4..local + 8], &[169, 254, 2, 1]);
        let v6 = add_address(5, "fd00::1".parse().unwrap(), 3);
        assert_eq!(v6[NLMSG_HDR + 1], 128);
        assert_eq!(u32_at(&v6, 0) as usize, v6.len());
    }

    fn error_msg(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Request::new(NLMSG_ERROR, 0, seq);
        m.bytes(&code.to_ne_bytes()).bytes(&[0u8; 16]);
        m.finish()
    }

    #[test]
    fn acks_are_found_by_sequence_and_errors_are_positive_errnos() {
        assert_eq!(parse_ack(&error_msg(2, 0), 2), Ok(Some(Ack::Ok)));
        let eexist = error_msg(3, -libc::EEXIST);
        assert_eq!(parse_ack(&eexist, 3), Ok(Some(Ack::Errno(libc::EEXIST))));
        assert_eq!(parse_ack(&eexist, 4), Ok(None));
        let mut two = error_msg(1, 0);
        two.extend(error_msg(2, -libc::EPERM));
        assert_eq!(parse_ack(&two, 2), Ok(Some(Ack::Errno(libc::EPERM))));
    }

    #[test]
    fn lengths_from_the_kernel_are_never_trusted() {
        let ok = error_msg(1, 0);
        for cut in 0..ok.len() {
            let _ = parse_ack(&ok[..cut], 1);
        }
        let mut lying = ok.clone();
        lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_ack(&lying, 1).is_err());
        lying[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse_ack(&lying, 1).is_err());
        let mut short = Request::new(NLMSG_ERROR, 0, 1);
        assert!(parse_ack(&short.finish(), 1).is_err());
        assert_eq!(parse_ack(&[], 1), Ok(None));
    }
}
