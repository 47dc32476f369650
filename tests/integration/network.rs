//! The network layer's edges (SPEC §2 `allow_private_networks`, §6): what the SSRF guard
//! takes as a public target.

use std::time::Duration;

use crate::harness::run;

/// On an IPv6-only network with DNS64, every IPv4-only receiver's name resolves to an
/// address under NAT64's well-known prefix 64:ff9b::/96 (RFC 6052), which carries the
/// IPv4 address the translator reaches. The guard judges that address: a public one
/// passes (the guard refused the whole prefix, so no delivery to an IPv4-only receiver
/// could be made there), one it refuses as itself (cloud metadata here) is refused.
#[test]
fn nat64_addresses_are_judged_by_the_ipv4_address_they_carry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[endpoint]]\nname = \"dns64\"\nevents = [\"t\"]\nurl = \"http://[64:ff9b::808:808]/pb\"\n\n\
         [[endpoint]]\nname = \"metadata\"\nevents = [\"t\"]\nurl = \"http://[64:ff9b::a9fe:a9fe]/pb\"\n",
    )
    .unwrap();
    let out = run(
        &["check", "--config", path.to_str().unwrap()],
        Duration::from_secs(30),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 1, "{said}");
    assert!(
        lines[0].contains(
            "endpoint metadata: field `url`: 64:ff9b::a9fe:a9fe is a loopback, private or \
             reserved address, which the SSRF guard refuses"
        ),
        "{said}"
    );
}
