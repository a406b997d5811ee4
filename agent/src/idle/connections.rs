//! Inbound TCP connections to the watched ports (SSH, JupyterHub, Jupyter,
//! RStudio, xrdp), counted while they carry traffic: bytes received and
//! acknowledged per minute from the kernel's socket diagnostics (netlink
//! `sock_diag`, `INET_DIAG_INFO` → `tcp_info`). A connection that is merely
//! open (a forgotten SSH window, an idle browser tab's keep-alives) stays
//! below `idle.connection_bytes_per_minute` and does not keep the VM billed.
//! The agent's own connections (its Jupyter and IMDS calls) never count.

use super::signal::{Sample, Source};
use futures_util::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_INFO: u16 = 2;
const TCP_ESTABLISHED: u32 = 1;
const HEADER: usize = 16;
const DIAG_MSG: usize = 72;
/// Offsets in `struct tcp_info` (linux/tcp.h, stable since 4.1).
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;

/// One established TCP socket as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inode: u32,
    pub uid: u32,
    pub cookie: u64,
    /// Payload bytes received, and sent that the peer acknowledged.
    pub bytes_received: u64,
    pub bytes_acked: u64,
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn ne32(bytes: &[u8]) -> u32 {
    u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn ne64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_ne_bytes(b)
}

fn address(family: u8, bytes: &[u8], port: u16) -> SocketAddr {
    let ip = if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        let mut b = [0u8; 16];
        b.copy_from_slice(&bytes[..16]);
        let v6 = Ipv6Addr::from(b);
        v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
    };
    SocketAddr::new(ip, port)
}

/// Every established TCP socket of `family` (AF_INET or AF_INET6), with its counters.
pub fn established(family: i32) -> io::Result<Vec<TcpSocket>> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut request = [0u8; HEADER + 56];
    let length = request.len() as u32;
    request[0..4].copy_from_slice(&length.to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[HEADER] = family as u8;
    request[HEADER + 1] = libc::IPPROTO_TCP as u8;
    request[HEADER + 2] = 1 << (INET_DIAG_INFO - 1);
    request[HEADER + 4..HEADER + 8].copy_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    // SAFETY: sending a buffer we own, of the length given.
    let sent = unsafe { libc::send(socket.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sockets = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own, at most its length.
        let got = unsafe { libc::recv(socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buffer[..got as usize];
        while rest.len() >= HEADER {
            let length = ne32(&rest[0..4]) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if length < HEADER || length > rest.len() {
                return Err(io::Error::other("malformed netlink answer"));
            }
            match kind {
                NLMSG_DONE => return Ok(sockets),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
                    return Err(io::Error::from_raw_os_error(-code));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(socket) = parse_diag(&rest[HEADER..length]) {
                        sockets.push(socket);
                    }
                }
                _ => {}
            }
            rest = &rest[length.next_multiple_of(4).min(rest.len())..];
        }
    }
}

fn parse_diag(message: &[u8]) -> Option<TcpSocket> {
    if message.len() < DIAG_MSG {
        return None;
    }
    let family = message[0];
    let id = &message[4..52];
    let local = address(family, &id[4..20], be16(&id[0..2]));
    let remote = address(family, &id[20..36], be16(&id[2..4]));
    let cookie = u64::from(ne32(&id[40..44])) | (u64::from(ne32(&id[44..48])) << 32);
    let uid = ne32(&message[64..68]);
    let inode = ne32(&message[68..72]);
    let mut attributes = &message[DIAG_MSG..];
    let (mut bytes_received, mut bytes_acked) = (0, 0);
    while attributes.len() >= 4 {
        let length = u16::from_ne_bytes([attributes[0], attributes[1]]) as usize;
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if length < 4 || length > attributes.len() {
            break;
        }
        let payload = &attributes[4..length];
        if kind == INET_DIAG_INFO && payload.len() >= TCPI_BYTES_RECEIVED + 8 {
            bytes_acked = ne64(&payload[TCPI_BYTES_ACKED..]);
            bytes_received = ne64(&payload[TCPI_BYTES_RECEIVED..]);
        }
        attributes = &attributes[length.next_multiple_of(4).min(attributes.len())..];
    }
    Some(TcpSocket { local, remote, inode, uid, cookie, bytes_received, bytes_acked })
}

/// The inodes of the agent's own sockets.
fn own_socket_inodes() -> HashSet<u32> {
    let mut inodes = HashSet::new();
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        for entry in entries.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                let target = target.to_string_lossy();
                if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                    if let Ok(inode) = inode.parse() {
                        inodes.insert(inode);
                    }
                }
            }
        }
    }
    inodes
}

pub struct Connections {
    ports: Vec<u16>,
    bytes_per_minute: u64,
    /// Per connection (kernel cookie): the counters and when they were read.
    seen: HashMap<u64, (u64, Instant)>,
}

impl Connections {
    pub fn new(ports: Vec<u16>, bytes_per_minute: u64) -> Self {
        Self { ports, bytes_per_minute, seen: HashMap::new() }
    }

    fn look(&mut self) -> Sample {
        let mut all = match established(libc::AF_INET) {
            Ok(sockets) => sockets,
            Err(err) => return Sample::unknown(format!("socket diagnostics (sock_diag) failed: {err}")),
        };
        if let Ok(v6) = established(libc::AF_INET6) {
            all.extend(v6);
        }
        let now = Instant::now();
        let ours = own_socket_inodes();
        let by_ends: HashMap<(SocketAddr, SocketAddr), &TcpSocket> =
            all.iter().map(|s| ((s.local, s.remote), s)).collect();
        let mut reasons = Vec::new();
        let mut watched = 0;
        let mut carrying = 0;
        let mut next = HashMap::new();
        for socket in all.iter().filter(|s| self.ports.contains(&s.local.port())) {
            // The other end on this VM belongs to the agent: its own call, never activity.
            if by_ends.get(&(socket.remote, socket.local)).is_some_and(|peer| ours.contains(&peer.inode)) {
                continue;
            }
            watched += 1;
            let total = socket.bytes_received + socket.bytes_acked;
            next.insert(socket.cookie, (total, now));
            let Some((before, at)) = self.seen.get(&socket.cookie) else { continue };
            let elapsed = now.duration_since(*at).max(Duration::from_millis(100));
            let per_minute = total.saturating_sub(*before) as f64 * 60.0 / elapsed.as_secs_f64();
            if per_minute >= self.bytes_per_minute as f64 {
                carrying += 1;
                reasons.push(format!(
                    "tcp {} -> :{} ({:.1} KiB/min)",
                    socket.remote,
                    socket.local.port(),
                    per_minute / 1024.0
                ));
            }
        }
        self.seen = next;
        let sample = if carrying > 0 {
            Sample::active(reasons)
        } else if watched > 0 {
            Sample::idle(format!("{watched} connection(s) open, none carrying traffic"))
        } else {
            Sample::idle("no connections to the watched ports")
        };
        sample.with_figure("connections", watched as f64).with_figure("connections_active", carrying as f64)
    }
}

impl Source for Connections {
    fn name(&self) -> &'static str {
        "connections"
    }

    fn sample(&mut self, _now: SystemTime) -> BoxFuture<'_, Sample> {
        Box::pin(async move { self.look() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_kernel_reports_a_loopback_connection_with_its_byte_counters() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(&[7u8; 5000]).unwrap();
        let mut got = vec![0u8; 5000];
        server.read_exact(&mut got).unwrap();
        let sockets = established(libc::AF_INET).unwrap();
        let server_side = sockets.iter().find(|s| s.local.port() == port).expect("the server side is listed");
        assert_eq!(server_side.bytes_received, 5000);
        assert!(server_side.inode != 0);
    }
}
