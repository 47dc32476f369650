//! SSRF guard: which addresses a postback may connect to.
//!
//! Owns the classification of an IP address as public or not, and the list of this
//! machine's own addresses (a public address on one of its interfaces reaches this
//! machine as the loopback does). It is applied to the address actually connected to,
//! after resolution, so DNS rebinding cannot pass. It must not resolve names.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

/// How often the list of this machine's own addresses is read again (an interface can
/// gain an address at any time: DHCP, a new VPN tunnel).
const LOCAL_REFRESH: Duration = Duration::from_secs(2);

/// Whether the guard refuses `ip` while `allow_private_networks` is off: a range
/// [`is_blocked`] refuses, or an address of one of this machine's interfaces (in any
/// range: a public one too) or its IPv4-mapped form. A connection to one of those never
/// leaves the machine (the kernel routes it through the loopback), so it reaches
/// whatever listens on all addresses here, past a firewall that only filters traffic from
/// outside. The machine's addresses are read at the first call and then every
/// [`LOCAL_REFRESH`] by a thread of its own, so a worker only reads a list: its own copy,
/// taken again when [`LOCAL_GENERATION`] says the list changed.
pub fn refuses(ip: IpAddr) -> bool {
    thread_local! {
        /// This thread's copy of the list, with the generation it was taken at.
        static SEEN: RefCell<(u64, Vec<IpAddr>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    is_blocked(ip)
        || SEEN.with(|seen| {
            let list = local_addresses();
            let mut seen = seen.borrow_mut();
            follow(&mut seen, &LOCAL_GENERATION, list);
            is_own(ip, &seen.1)
        })
}

/// Brings `seen`, a thread's copy of `list` with the generation it was taken at, up to
/// date: copied again only when `generation` moved.
fn follow(seen: &mut (u64, Vec<IpAddr>), generation: &AtomicU64, list: &RwLock<Vec<IpAddr>>) {
    let now = generation.load(Ordering::Acquire);
    if seen.0 != now {
        // Read after the generation: at least as new as it (a newer list is copied
        // again at the next change of generation).
        seen.1 = list.read().unwrap_or_else(|e| e.into_inner()).clone();
        seen.0 = now;
    }
}

/// Changes each time the refresh thread finds the list changed. A guarded attempt
/// (every one, with `allow_private_networks` off) reads this word, which stays in each
/// core's cache while the list holds, where taking the list's lock writes its count of
/// readers, a line the workers' cores would pass between them at every attempt.
static LOCAL_GENERATION: AtomicU64 = AtomicU64::new(0);

/// [`refuses`] with `local` as this machine's addresses.
#[cfg(test)]
fn refuses_given(ip: IpAddr, local: &[IpAddr]) -> bool {
    is_blocked(ip) || is_own(ip, local)
}

/// Whether `ip` (or the IPv4 address it maps) is among `local`.
fn is_own(ip: IpAddr, local: &[IpAddr]) -> bool {
    local.contains(&ip.to_canonical())
}

/// This machine's own addresses; the first call reads them and starts the thread that
/// keeps them current.
fn local_addresses() -> &'static RwLock<Vec<IpAddr>> {
    static LOCAL: OnceLock<RwLock<Vec<IpAddr>>> = OnceLock::new();
    LOCAL.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("ricochet-ifaddr".into())
            .spawn(|| loop {
                std::thread::sleep(LOCAL_REFRESH);
                let Some(v) = interface_addresses() else {
                    continue;
                };
                let mut list = local_addresses().write().unwrap_or_else(|e| e.into_inner());
                if *list != v {
                    *list = v;
                    LOCAL_GENERATION.fetch_add(1, Ordering::Release);
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the thread that follows this machine's addresses");
        }
        RwLock::new(interface_addresses().unwrap_or_default())
    })
}

/// The addresses of this machine's interfaces (`getifaddrs`); `None` when they cannot be
/// read now.
fn interface_addresses() -> Option<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` receives a list that is freed below, once read.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut v = Vec::new();
    let mut at = head;
    while !at.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*at };
        at = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: `ifa_addr` points to a socket address of the family it names, as large
        // as that family's structure.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        if !v.contains(&ip) {
            v.push(ip);
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Some(v)
}

/// Whether connecting to `ip` is refused while `allow_private_networks` is off:
/// loopback, private, link-local, CGNAT, multicast, broadcast, unspecified, documentation
/// and benchmarking ranges, IPv6 ULA and link-local, IPv6 discard-only, ORCHID and SRv6
/// ranges, NAT64's local-use prefix, and the IPv6 forms that carry an IPv4 address
/// (mapped, compatible, translated, 6to4, Teredo, NAT64's well-known prefix) by the
/// address they carry.
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || o[0] == 0                                   // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64)        // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)     // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18)        // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

/// The IPv4 address in segments 6 and 7 (or any two given).
fn v4_of(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
}

fn blocked_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return blocked_v4(v4);
    }
    let s = ip.segments();
    // IPv4-translated (SIIT, RFC 2765) ::ffff:0:a.b.c.d
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return blocked_v4(v4_of(s[6], s[7]));
    }
    // 6to4 (RFC 3056) 2002:AABB:CCDD::/48 carries a.b.c.d after the prefix.
    if s[0] == 0x2002 {
        return blocked_v4(v4_of(s[1], s[2]));
    }
    // Teredo (RFC 4380) 2001:0::/32: the client's address, inverted, in the last 32 bits;
    // the server's in segments 2 and 3.
    if s[0] == 0x2001 && s[1] == 0 {
        return blocked_v4(v4_of(!s[6], !s[7])) || blocked_v4(v4_of(s[2], s[3]));
    }
    // NAT64's well-known prefix (RFC 6052) 64:ff9b::/96: a translator reaches a.b.c.d in
    // the last 32 bits. IANA lists it as globally reachable, and RFC 6052 §3.1 forbids it
    // for a non-global IPv4 address: judged by the address it carries, as the forms above.
    // On an IPv6-only network with DNS64 every IPv4-only receiver's name resolves to one.
    if s[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] {
        return blocked_v4(v4_of(s[6], s[7]));
    }
    // IPv4-compatible (deprecated) ::a.b.c.d
    if s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return blocked_v4(v4_of(s[6], s[7]));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation 3fff::/20 (RFC 9637)
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // benchmarking 2001:2::/48
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010) // ORCHID 2001:10::/28
        || s[..4] == [0x0100, 0, 0, 0] // discard-only 100::/64 (RFC 6666)
        || s[0] == 0x5f00 // SRv6 SIDs 5f00::/16 (RFC 9602)
        // The rest of 64:ff9b::/32: NAT64's local-use 64:ff9b:1::/48 (RFC 8215, where
        // the IPv4 address sits at a place the network chooses, and which IANA lists as
        // not globally reachable) and what is not yet assigned.
        || (s[0] == 0x0064 && s[1] == 0xff9b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> bool {
        is_blocked(s.parse().unwrap())
    }

    /// A public address on one of this machine's interfaces reaches this machine: it is
    /// refused as the loopback is (in its IPv4-mapped form too), and passes elsewhere.
    #[test]
    fn this_machine_s_own_addresses_are_refused_whatever_their_range() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let local = [
            ip("127.0.0.1"),
            ip("203.0.113.9"),
            ip("8.8.8.8"),
            ip("2606:4700::1111"),
        ];
        for s in ["8.8.8.8", "::ffff:8.8.8.8", "2606:4700::1111"] {
            assert!(refuses_given(ip(s), &local), "{s}");
            assert!(!refuses_given(ip(s), &[]), "{s}");
        }
        assert!(!refuses_given(ip("1.1.1.1"), &local));
        // What the machine has is read: the loopback at least, each address refused.
        let own = interface_addresses().expect("getifaddrs");
        assert!(own.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{own:?}");
        for a in &own {
            assert!(refuses(*a), "{a}");
        }
    }

    /// A thread's copy of the machine's addresses follows the list when its generation
    /// moves, and reads no lock while it does not.
    #[test]
    fn a_thread_s_copy_follows_the_list_by_its_generation() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let generation = AtomicU64::new(0);
        let list = RwLock::new(vec![ip("127.0.0.1")]);
        let mut seen = (u64::MAX, Vec::new());
        follow(&mut seen, &generation, &list);
        assert_eq!(seen, (0, vec![ip("127.0.0.1")]));
        // The list changes, the generation with it: copied again.
        list.write().unwrap().push(ip("8.8.8.8"));
        generation.fetch_add(1, Ordering::Release);
        follow(&mut seen, &generation, &list);
        assert_eq!(seen, (1, vec![ip("127.0.0.1"), ip("8.8.8.8")]));
        // While the generation holds, the lock is not taken (held for writing here, a
        // read would wait for ever).
        let _held = list.write().unwrap();
        follow(&mut seen, &generation, &list);
        assert_eq!(seen.0, 1);
    }

    #[test]
    fn classifies() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "ff02::1",
            // IPv4-translated, 6to4 and Teredo forms of private addresses.
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "2002:c0a8:101::",
            // Teredo: server 65.54.227.120, client 127.0.0.1 (inverted: 80ff:fffe).
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            // Teredo: server 10.0.0.1, client 8.8.8.8 (inverted: f7f7:f7f7).
            "2001:0:a00:1:8000:63bf:f7f7:f7f7",
            // IANA special-purpose ranges not globally reachable.
            "2001:db8::1",
            "3fff::1",
            "3fff:fff:ffff::1",
            "2001:2::1",
            "2001:10::1",
            "100::1",
            "5f00::1",
            // Cloud metadata, CGNAT and the reserved IPv4 ranges, and the IPv6 forms
            // that carry them.
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "::ffff:0:a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::ffff:100.64.0.1",
            "100.127.255.255",
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "240.0.0.1",
            "239.255.255.250",
            "fec0::1",
            "ff0e::1",
            "::ffff:0.0.0.0",
            // NAT64's well-known prefix carrying a private, loopback, link-local or
            // reserved IPv4 address; the local-use prefix (RFC 8215) whatever it carries,
            // and the rest of 64:ff9b::/32.
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::6440:1",
            "64:ff9b::",
            "64:ff9b:1::a00:1",
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff::1",
            "64:ff9b:0:0:1::808:808",
        ] {
            assert!(b(s), "{s} should be blocked");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::ffff:0:808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "2001:4860:4860::8888",
            "3fff:1000::1",
            "2001:3::1",
            "100:0:0:1::1",
            "5f01::1",
            "100.63.255.255",
            "100.128.0.0",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "64:ff9a::a00:1",
            "64:ff9c::a00:1",
            // NAT64's well-known prefix carrying a public IPv4 address: what DNS64 answers
            // for an IPv4-only receiver on an IPv6-only network.
            "64:ff9b::808:808",
            "64:ff9b::8.8.4.4",
        ] {
            assert!(!b(s), "{s} should be allowed");
        }
    }
}
