//! egress: where this server may connect out to. One classifier for webhook targets, used
//! when a URL is configured (its literal address or name) and again by delivery when it
//! connects (the address a name resolved to), so the two can never disagree.
//!
//! An address is public unless a range of the IANA special-purpose registries (IPv4 and IPv6,
//! as of 2025) marks it not globally reachable, or it is multicast, broadcast or reserved. IPv6
//! outside the global unicast block 2000::/3 is refused whole (this covers unique local,
//! link-local, site-local, multicast, IPv4-compatible, discard-only, SRv6 and the local NAT64
//! prefix), and the forms that carry an IPv4 address (IPv4-mapped, IPv4-translated, NAT64,
//! 6to4) are judged by the address they carry, so `[::ffff:127.0.0.1]` is loopback. Names
//! cannot be judged before they resolve, but a name that is a single label (`metadata`), or in
//! a special-use domain (`localhost`, `.internal`, `.local`, ...), never names a public host.
//!
//! Pure: every rule is unit-tested and fuzzed against the standard library's classifications.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address or URL is not a public webhook target: a phrase that completes "points at".
pub type Why = &'static str;

/// IPv4 ranges that are not public: network, prefix length, what they are.
const V4_NOT_PUBLIC: &[(u32, u8, Why)] = &[
    (0x0000_0000, 8, "\"this network\" (0.0.0.0/8)"),
    (0x0a00_0000, 8, "a private address"),
    (0x6440_0000, 10, "a carrier-grade NAT address"),
    (0x7f00_0000, 8, "a loopback address"),
    (0xa9fe_0000, 16, "a link-local address"),
    (0xac10_0000, 12, "a private address"),
    (
        0xc000_0000,
        24,
        "an IETF protocol assignment (192.0.0.0/24)",
    ),
    (0xc000_0200, 24, "a documentation address"),
    (
        0xc058_6300,
        24,
        "the deprecated 6to4 relay anycast (192.88.99.0/24)",
    ),
    (0xc0a8_0000, 16, "a private address"),
    (0xc612_0000, 15, "a benchmarking address (198.18.0.0/15)"),
    (0xc633_6400, 24, "a documentation address"),
    (0xcb00_7100, 24, "a documentation address"),
    (0xe000_0000, 4, "a multicast address"),
    (0xf000_0000, 4, "a reserved address (240.0.0.0/4)"),
];

/// IPv6 ranges inside 2000::/3 that are not public.
const V6_NOT_PUBLIC: &[(u128, u8, Why)] = &[
    (
        0x2001_0000 << 96,
        23,
        "an IETF protocol assignment (2001::/23, Teredo included)",
    ),
    (0x2001_0db8 << 96, 32, "a documentation address"),
    (0x3fff_0000 << 96, 20, "a documentation address"),
];

/// Whether the first `len` of the `bits` bits of `addr` and `net` agree.
fn in_net(addr: u128, net: u128, len: u8, bits: u32) -> bool {
    let shift = bits - u32::from(len);
    (addr >> shift) == (net >> shift)
}

fn check_v4(ip: Ipv4Addr) -> Result<(), Why> {
    let addr = u128::from(u32::from(ip));
    if ip.is_broadcast() {
        return Err("the broadcast address");
    }
    match V4_NOT_PUBLIC
        .iter()
        .find(|(net, len, _)| in_net(addr, u128::from(*net), *len, 32))
    {
        Some((_, _, why)) => Err(why),
        None => Ok(()),
    }
}

/// The IPv4 address an IPv6 address carries, in the forms that route to it: IPv4-mapped
/// (::ffff:0:0/96), IPv4-translated (::ffff:0:0:0/96), NAT64 (64:ff9b::/96) and 6to4
/// (2002::/16, the address in bits 16..48).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    let s = ip.segments();
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..]
        | [0, 0, 0, 0, 0xffff, 0, ..]
        | [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(low),
        [0x2002, ..] => Some(Ipv4Addr::from((bits >> 80) as u32)),
        _ => None,
    }
}

fn check_v6(ip: Ipv6Addr) -> Result<(), Why> {
    if let Some(v4) = embedded_v4(ip) {
        return check_v4(v4);
    }
    let addr = u128::from(ip);
    if ip.is_loopback() {
        return Err("a loopback address");
    }
    if !in_net(addr, 0x2000 << 112, 3, 128) {
        return Err(match ip.segments()[0] {
            0xfc00..=0xfdff => "a unique local address",
            0xfe80..=0xfebf => "a link-local address",
            0xff00..=0xffff => "a multicast address",
            _ => "an address outside global unicast (2000::/3)",
        });
    }
    match V6_NOT_PUBLIC
        .iter()
        .find(|(net, len, _)| in_net(addr, *net, *len, 128))
    {
        Some((_, _, why)) => Err(why),
        None => Ok(()),
    }
}

/// Whether a webhook may be delivered to `ip` when private targets are not allowed; `Err`
/// says what it is.
pub fn check_ip(ip: IpAddr) -> Result<(), Why> {
    match ip {
        IpAddr::V4(v4) => check_v4(v4),
        IpAddr::V6(v6) => check_v6(v6),
    }
}

/// Special-use domain names (RFC 6761 and the IANA registry) and the private-use `.internal`:
/// no public host is named in them.
const SPECIAL_DOMAINS: &[&str] = &[
    "localhost",
    "localdomain",
    "local",
    "internal",
    "home.arpa",
    "invalid",
    "test",
    "onion",
    "alt",
    "example",
];

/// Whether a host name may name a public webhook target (its addresses are checked again when
/// delivery resolves it).
pub fn check_name(name: &str) -> Result<(), Why> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if !name.contains('.') {
        return Err("a single-label name, which resolves only inside a private network");
    }
    let special = SPECIAL_DOMAINS
        .iter()
        .any(|d| name == *d || name.ends_with(&format!(".{d}")));
    if special {
        return Err("a special-use or private domain name");
    }
    Ok(())
}

/// Why a webhook URL is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a URL a webhook can be sent to; the message says why.
    Invalid(String),
    /// A valid URL whose host is not public: what it points at.
    NotPublic(Why),
}

/// Largest webhook URL.
pub const URL_BYTES_MAX: usize = 2048;

/// Checks a webhook URL: absolute http or https, a host, a port that is not 0, no credentials
/// (a secret in a URL is stored and shown back), and unless `allow_private`, a public host.
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, Refused> {
    let invalid = |why: &str| Refused::Invalid(why.to_string());
    if raw.len() > URL_BYTES_MAX {
        return Err(invalid(&format!("is longer than {URL_BYTES_MAX} bytes")));
    }
    let url = url::Url::parse(raw).map_err(|e| invalid(&format!("is not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must use http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "must not carry credentials; the signing secret authenticates deliveries",
        ));
    }
    if url.port() == Some(0) {
        return Err(invalid("must not use port 0"));
    }
    let host = url.host().ok_or_else(|| invalid("has no host"))?;
    if allow_private {
        return Ok(url);
    }
    match host {
        url::Host::Domain(name) => check_name(name),
        url::Host::Ipv4(ip) => check_v4(ip),
        url::Host::Ipv6(ip) => check_v6(ip),
    }
    .map_err(Refused::NotPublic)?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        check_ip(s.parse().unwrap()).is_err()
    }

    #[test]
    fn every_special_purpose_range_is_refused_and_public_addresses_pass() {
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:2800:220:1::1",
            "2a00:1450:4001:80e::200e",
            "2001:200::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(public), "{public}");
        }
        for private in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0:7f00:1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "100::1",
            "100:0:0:1::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(refused(private), "{private}");
        }
    }

    #[test]
    fn names_in_special_use_domains_and_single_labels_are_refused() {
        for ok in ["hooks.example.com", "api.stripe.com.", "a.b.c.io"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "localhost",
            "LOCALHOST.",
            "api.localhost",
            "localhost.localdomain",
            "metadata",
            "metadata.google.internal",
            "printer.local",
            "router.home.arpa",
            "x.test",
            "x.invalid",
            "x.onion",
            "www.example",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_checked_whole_and_refusals_say_which_kind() {
        for ok in [
            "https://hooks.example.com/in",
            "http://93.184.216.34:8080/x?y=1",
            "https://[2606:2800:220:1::1]/",
        ] {
            assert!(check_url(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "not a url",
            "/relative/path",
            "ftp://example.com/",
            "https://user:p4ss@example.com/",
            "https://user@example.com/",
            "http://example.com:0/",
            &format!("https://example.com/{}", "a".repeat(URL_BYTES_MAX)),
        ] {
            assert!(
                matches!(check_url(bad, false), Err(Refused::Invalid(_))),
                "{bad}"
            );
            assert!(
                check_url(bad, true).is_err(),
                "{bad}: even when private is allowed"
            );
        }
        for bad in [
            "http://localhost:9000/",
            "http://127.0.0.1/",
            // The WHATWG parser reads these as 127.0.0.1.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://metadata/",
            "http://169.254.169.254/latest/meta-data",
        ] {
            assert!(
                matches!(check_url(bad, false), Err(Refused::NotPublic(_))),
                "{bad}"
            );
        }
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
    }

    mod fuzz {
        //! The classifier against the standard library's classifications and against itself
        //! across the forms one address can take.
        use proptest::prelude::*;

        use super::*;

        /// Addresses near the special ranges' edges as often as anywhere else.
        fn a_v4() -> impl Strategy<Value = Ipv4Addr> {
            let edge =
                prop::sample::select(V4_NOT_PUBLIC.to_vec()).prop_flat_map(|(net, len, _)| {
                    let size = 1u64 << (32 - len);
                    (0..size + 2).prop_map(move |off| {
                        Ipv4Addr::from((u64::from(net) + off).wrapping_sub(1) as u32)
                    })
                });
            prop_oneof![any::<u32>().prop_map(Ipv4Addr::from), edge]
        }

        proptest! {
            #[test]
            fn what_std_calls_special_is_refused(v4 in a_v4(), v6 in any::<u128>()) {
                let special = v4.is_private() || v4.is_loopback() || v4.is_link_local()
                    || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()
                    || v4.is_documentation();
                if special {
                    prop_assert!(check_v4(v4).is_err(), "{}", v4);
                }
                let v6 = Ipv6Addr::from(v6);
                let special = v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()
                    || v6.is_unique_local() || v6.is_unicast_link_local();
                if special {
                    prop_assert!(check_v6(v6).is_err(), "{}", v6);
                }
            }

            #[test]
            fn an_ipv4_address_is_judged_alike_in_every_form_it_takes(v4 in a_v4()) {
                let verdict = check_v4(v4).is_ok();
                let bits = u32::from(v4);
                let forms = [
                    v4.to_ipv6_mapped(),
                    Ipv6Addr::from(0xffff_0000_0000u128 | u128::from(bits)),
                    Ipv6Addr::from((0x64_ff9bu128 << 96) | u128::from(bits)),
                    Ipv6Addr::from((0x2002u128 << 112) | (u128::from(bits) << 80) | 1),
                ];
                for form in forms {
                    prop_assert_eq!(check_v6(form).is_ok(), verdict, "{} as {}", v4, form);
                }
                // The URL parser's spellings of it (dotted, one number, hex) too.
                for host in [v4.to_string(), bits.to_string(), format!("{bits:#x}"), format!("[{}]", v4.to_ipv6_mapped())] {
                    let url = check_url(&format!("http://{host}/h"), false);
                    prop_assert_eq!(url.is_ok(), verdict, "{}", host);
                }
            }

            #[test]
            fn any_text_is_judged_without_panicking(raw in "\\PC{0,80}", host in "[a-z0-9.:\\[\\]@%-]{0,40}") {
                let _ = check_url(&raw, false);
                let _ = check_url(&format!("http://{host}/"), false);
                let _ = check_url(&format!("https://{host}"), true);
            }
        }
    }
}
