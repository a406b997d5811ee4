//! TCP connections that carry traffic: inbound ones to the watched ports
//! (SSH, JupyterHub, Jupyter, RStudio, xrdp), and any connection a user-range
//! uid owns, inbound or outbound, to another host (a dataset download left
//! running in `nohup`). Bytes received and acknowledged come from the
//! kernel's socket diagnostics (netlink `sock_diag`, `INET_DIAG_INFO` →
//! `tcp_info`) and are judged over a sliding minute, never one interval
//! scaled up: a connection that is merely open (a forgotten SSH window,
//! keep-alives) stays below `idle.connection_bytes_per_minute`. Ports of
//! Jupyter servers the Jupyter signal reads are left to it (a browser tab's
//! polling is not work). The agent's own connections never count.

use super::signal::{Sample, Source};
use futures_util::future::BoxFuture;
use std::collections::{HashMap, HashSet, VecDeque};
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

/// The span the bytes are judged over.
const WINDOW: Duration = Duration::from_secs(60);

pub struct Connections {
    ports: Vec<u16>,
    bytes_per_minute: u64,
    uids: crate::core::user_uids::UserUids,
    /// Ports a Jupyter server or hub serves that the Jupyter signal reads.
    judged_ports: super::jupyter::JudgedPorts,
    accounts: crate::core::accounts::AccountsView,
    /// Per connection (kernel cookie): its byte counter over the last minute
    /// (and the newest reading older than that, as the window's start).
    seen: HashMap<u64, VecDeque<(Instant, u64)>>,
}

/// The bytes a connection moved over the sliding minute ending at the last
/// reading: from the newest reading at least a minute old, else from the
/// first (a connection seen for less than a minute), never scaled up.
pub fn moved_over_the_minute(readings: &VecDeque<(Instant, u64)>) -> u64 {
    let Some((last_at, last)) = readings.back() else { return 0 };
    let start = readings
        .iter()
        .rev()
        .find(|(at, _)| last_at.duration_since(*at) >= WINDOW)
        .or(readings.front())
        .map_or(*last, |(_, total)| *total);
    last.saturating_sub(start)
}

/// Keeps the readings of the last minute and the newest one older than that.
fn trim(readings: &mut VecDeque<(Instant, u64)>, now: Instant) {
    while readings.len() > 1 && readings.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW) {
        readings.pop_front();
    }
}

impl Connections {
    pub fn new(
        ports: Vec<u16>,
        bytes_per_minute: u64,
        uids: crate::core::user_uids::UserUids,
        judged_ports: super::jupyter::JudgedPorts,
        accounts: crate::core::accounts::AccountsView,
    ) -> Self {
        Self { ports, bytes_per_minute, uids, judged_ports, accounts, seen: HashMap::new() }
    }

    fn look(&mut self) -> Sample {
        let mut all = match established(libc::AF_INET) {
            Ok(sockets) => sockets,
            Err(err) => return Sample::unknown(format!("socket diagnostics (sock_diag) failed: {err}")),
        };
        match established(libc::AF_INET6) {
            Ok(v6) => all.extend(v6),
            // A kernel without IPv6 has no such sockets to miss.
            Err(err) if err.raw_os_error() == Some(libc::EAFNOSUPPORT) || err.raw_os_error() == Some(libc::ENOENT) => {}
            Err(err) => return Sample::unknown(format!("socket diagnostics (sock_diag, IPv6) failed: {err}")),
        }
        self.judge(&all, &own_socket_inodes(), Instant::now())
    }

    /// The sample from the sockets the kernel listed at `now`; `ours` are the agent's own.
    pub fn judge(&mut self, all: &[TcpSocket], ours: &HashSet<u32>, now: Instant) -> Sample {
        let judged = self.judged_ports.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let by_ends: HashMap<(SocketAddr, SocketAddr), &TcpSocket> =
            all.iter().map(|s| ((s.local, s.remote), s)).collect();
        let mut reasons = Vec::new();
        let (mut watched, mut carrying, mut owned) = (0, 0, 0);
        let mut next = HashMap::new();
        for socket in all {
            if ours.contains(&socket.inode) {
                continue;
            }
            let port = socket.local.port();
            let on_watched_port = self.ports.contains(&port) && !judged.contains(&port);
            // A user's own connection to elsewhere (a download left running);
            // loopback pairs are the VM talking to itself (a kernel's heartbeats).
            let users = self.uids.contains(&socket.uid) && !socket.remote.ip().is_loopback();
            if !on_watched_port && !users {
                continue;
            }
            // The other end on this VM belongs to the agent: its own call, never activity.
            if by_ends.get(&(socket.remote, socket.local)).is_some_and(|peer| ours.contains(&peer.inode)) {
                continue;
            }
            if on_watched_port {
                watched += 1;
            } else {
                owned += 1;
            }
            let mut readings = self.seen.remove(&socket.cookie).unwrap_or_default();
            readings.push_back((now, socket.bytes_received + socket.bytes_acked));
            trim(&mut readings, now);
            let moved = moved_over_the_minute(&readings);
            if moved >= self.bytes_per_minute {
                carrying += 1;
                let kib = moved as f64 / 1024.0;
                if on_watched_port {
                    reasons.push(format!("tcp {} -> :{port} ({kib:.1} KiB in the last minute)", socket.remote));
                } else {
                    let who = self.accounts.user_name(socket.uid);
                    reasons.push(format!(
                        "{who}: tcp {} <-> {} ({kib:.1} KiB in the last minute)",
                        socket.local, socket.remote
                    ));
                }
            }
            next.insert(socket.cookie, readings);
        }
        self.seen = next;
        let sample = if carrying > 0 {
            Sample::active(reasons)
        } else if watched + owned > 0 {
            Sample::idle(format!(
                "{} connection(s) open, none moving {} bytes a minute",
                watched + owned,
                self.bytes_per_minute
            ))
        } else {
            Sample::idle("no connections to the watched ports or of users")
        };
        sample
            .with_figure("connections", watched as f64)
            .with_figure("user_connections", owned as f64)
            .with_figure("connections_active", carrying as f64)
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
    use crate::core::user_uids::UserUids;
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

    #[test]
    fn bytes_are_judged_over_the_sliding_minute_never_scaled_up() {
        let start = Instant::now();
        let mut readings = VecDeque::new();
        // One 855-byte poll inside a 1 s sample: 855 bytes, not 51 KB a minute.
        readings.push_back((start, 10_000));
        readings.push_back((start + Duration::from_secs(1), 10_855));
        assert_eq!(moved_over_the_minute(&readings), 855);
        // Polls every 10 s for two minutes: what the last minute moved.
        let mut total = 10_855;
        for second in (11..=121).step_by(10) {
            total += 855;
            let now = start + Duration::from_secs(second);
            readings.push_back((now, total));
            trim(&mut readings, now);
        }
        let moved = moved_over_the_minute(&readings);
        assert!((855 * 6..=855 * 7).contains(&moved), "{moved}");
        assert!(readings.len() <= 8, "only the last minute is kept: {}", readings.len());
    }

    #[test]
    fn a_user_s_download_to_another_host_keeps_the_vm_active_and_names_the_user_and_a_poll_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let passwd = tmp.path().join("passwd");
        std::fs::write(&passwd, "dana:x:1005:1005::/home/dana:/bin/bash\n").unwrap();
        let accounts = crate::core::accounts::AccountsView::new(crate::core::accounts::AccountSource::Files {
            passwd,
            group: tmp.path().join("group"),
        });
        let judged = crate::idle::jupyter::JudgedPorts::default();
        judged.lock().unwrap().insert(8888);
        let mut source = Connections::new(vec![22, 8888], 16 * 1024, UserUids::new(1000, 60000), judged, accounts);
        let socket = |cookie, local: &str, remote: &str, uid, bytes| TcpSocket {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode: cookie as u32,
            uid,
            cookie,
            bytes_received: bytes,
            bytes_acked: 0,
        };
        let start = Instant::now();
        let ours = HashSet::new();
        let at = |seconds| start + Duration::from_secs(seconds);
        let listing = |download: u64, tab: u64, heartbeat: u64| {
            vec![
                socket(1, "10.0.0.4:50312", "203.0.113.7:443", 1005, download),
                socket(2, "10.0.0.4:8888", "10.0.0.9:61000", 1005, tab),
                socket(3, "127.0.0.1:50000", "127.0.0.1:50001", 1005, heartbeat),
            ]
        };
        assert_eq!(source.judge(&listing(0, 0, 0), &ours, at(0)).state, crate::idle::signal::SignalState::Idle);
        // 10 s later: 5 MiB downloaded; the browser tab polled 855 bytes; a kernel's heartbeats moved 40 KiB.
        let sample = source.judge(&listing(5 << 20, 855, 40 << 10), &ours, at(10));
        assert_eq!(sample.state, crate::idle::signal::SignalState::Active, "{sample:?}");
        assert_eq!(
            sample.reasons,
            vec!["dana: tcp 10.0.0.4:50312 <-> 203.0.113.7:443 (5120.0 KiB in the last minute)".to_string()]
        );
        // The download stalls for good: idle once its minute has passed, the poll never counts.
        let sample = source.judge(&listing(5 << 20, 1710, 80 << 10), &ours, at(40));
        assert_eq!(sample.state, crate::idle::signal::SignalState::Active, "5 MiB within the last minute");
        let sample = source.judge(&listing(5 << 20, 2565, 120 << 10), &ours, at(80));
        assert_eq!(sample.state, crate::idle::signal::SignalState::Idle, "{sample:?}");
    }
}
