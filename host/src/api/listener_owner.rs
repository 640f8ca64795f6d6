//! Who owns a local TCP listener, from `/proc/net/tcp{,6}` (this network namespace). The CLI
//! asks before it sends the API token to a loopback address: while the agent is down, any user
//! may listen on its port, and a root CLI must not hand that user the token (nor `zerostep ui`
//! print a link carrying it).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const LISTEN: &str = "0A";

/// The uids of the listening sockets that would take a connection to `addr`: bound to its port
/// and to its address or the unspecified one.
pub fn listener_uids(addr: SocketAddr) -> Vec<u32> {
    let mut uids = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[3] != LISTEN {
                continue;
            }
            let Some((ip, port)) = parse_local(f[1], v6) else {
                continue;
            };
            if port != addr.port() || !(ip == addr.ip() || ip.is_unspecified()) {
                continue;
            }
            if let Ok(uid) = f[7].parse() {
                uids.push(uid);
            }
        }
    }
    uids
}

/// `0100007F:1EB3` → 127.0.0.1:7859. Each 32-bit word is printed in host byte order.
fn parse_local(field: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match (v6, bytes.len()) {
        (false, 4) => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        (true, 16) => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            let v6 = Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_of_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(listener_uids(addr), vec![me]);
        drop(l);
        assert!(listener_uids(addr).is_empty());
        assert_eq!(
            parse_local("0100007F:1EB3", false),
            Some(("127.0.0.1".parse().unwrap(), 7859))
        );
    }
}
