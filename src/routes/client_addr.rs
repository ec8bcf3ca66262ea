//! The client address of a request: what per-address limits are keyed by and
//! what audit rows record as `client_addr`.
//!
//! By default it is the TCP peer. Only when the peer is inside one of the
//! operator's `trusted_proxies` networks are forwarding headers read, and then
//! from the right: each hop a trusted proxy appended is skipped, and the first
//! hop that is not itself a trusted proxy is the client (anything to its left
//! was written by that client and proves nothing). A header from an untrusted
//! peer is ignored whole, so a client cannot pick the address it is limited and
//! audited under.
//!
//! `X-Forwarded-For` is read when present, `Forwarded: for=` (RFC 7239)
//! otherwise. The operator's proxy must therefore append to `X-Forwarded-For`,
//! or, if it only writes `Forwarded`, strip any `X-Forwarded-For` it receives.
//! A hop that does not parse as an address (`unknown`, an obfuscated `_name`,
//! garbage) stops the walk: the nearest trusted hop is used instead.

use std::net::IpAddr;

use actix_web::{HttpRequest, web};
use ipnet::IpNet;

use crate::state::AppState;

pub use crate::domain::parse_trusted_proxies;

fn trusted(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) compares and records as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// One hop: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`,
/// optionally quoted (Forwarded).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let h = hop.trim().trim_matches('"');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = h.strip_prefix('[') {
        let inner = rest.split(']').next()?;
        return inner.parse::<IpAddr>().ok().map(canonical);
    }
    if let Ok(sa) = h.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

/// The `for=` values of `Forwarded` header lines, in order.
fn forwarded_for<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out = Vec::new();
    for line in lines {
        for element in line.split(',') {
            // An element without `for=` is still a hop whose client is unknown.
            let f = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            });
            out.push(f.unwrap_or(""));
        }
    }
    out
}

/// The client address given the TCP peer, the trusted networks and the
/// forwarding headers' lines (each in arrival order).
pub fn resolve<'a>(
    peer: IpAddr,
    nets: &[IpNet],
    xff: impl Iterator<Item = &'a str>,
    forwarded: impl Iterator<Item = &'a str>,
) -> IpAddr {
    let peer = canonical(peer);
    if !trusted(peer, nets) {
        return peer;
    }
    let mut hops: Vec<&str> = xff.flat_map(|l| l.split(',')).collect();
    if hops.iter().all(|h| h.trim().is_empty()) {
        hops = forwarded_for(forwarded);
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        if hop.trim().is_empty() {
            continue;
        }
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !trusted(ip, nets) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// Whether the request's TCP peer is inside `trusted_proxies`: only then may
/// its forwarding headers (addresses, and the scheme the client used) be
/// believed.
pub fn peer_is_trusted_proxy(req: &HttpRequest) -> bool {
    let Some(peer) = req.peer_addr() else {
        return false;
    };
    req.app_data::<web::Data<AppState>>()
        .is_some_and(|s| trusted(peer.ip(), &s.settings.trusted_proxies))
}

/// The request's client address (see the module doc); `None` without a peer.
pub fn client_addr(req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let nets = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.settings.trusted_proxies.as_slice())
        .unwrap_or(&[]);
    if nets.is_empty() {
        return Some(canonical(peer));
    }
    let h = req.headers();
    let lines = |name: &str| {
        h.get_all(name)
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
    };
    let xff = lines("x-forwarded-for");
    let fwd = lines("forwarded");
    Some(resolve(
        peer,
        nets,
        xff.iter().copied(),
        fwd.iter().copied(),
    ))
}

/// The `User-Agent` as audit rows record it: its first 256 characters,
/// without control characters (HTTP lets a tab through; no row keeps one).
pub fn user_agent_string(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().filter(|c| !c.is_control()).take(256).collect())
}

/// `client_addr` as the text audit rows and limit buckets use.
pub fn client_addr_string(req: &HttpRequest) -> Option<String> {
    client_addr(req).map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn r(peer: &str, nets: &str, xff: &[&str], fwd: &[&str]) -> String {
        let nets = parse_trusted_proxies(nets).unwrap();
        resolve(ip(peer), &nets, xff.iter().copied(), fwd.iter().copied()).to_string()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        assert_eq!(r("203.0.113.9", "", &["1.1.1.1"], &[]), "203.0.113.9");
        assert_eq!(
            r("203.0.113.9", "10.0.0.0/8", &["1.1.1.1"], &["for=2.2.2.2"]),
            "203.0.113.9"
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let nets = "10.0.0.0/8, 127.0.0.1";
        // The client forged 6.6.6.6 on the left; the proxies appended the rest.
        assert_eq!(
            r(
                "127.0.0.1",
                nets,
                &["6.6.6.6, 198.51.100.7", "10.1.2.3"],
                &[]
            ),
            "198.51.100.7"
        );
        // All hops trusted: the leftmost one.
        assert_eq!(r("127.0.0.1", nets, &["10.0.0.5"], &[]), "10.0.0.5");
        // No header: the peer.
        assert_eq!(r("127.0.0.1", nets, &[], &[]), "127.0.0.1");
        // Garbage stops the walk at the nearest trusted hop.
        assert_eq!(
            r("127.0.0.1", nets, &["6.6.6.6, bogus, 10.0.0.9"], &[]),
            "10.0.0.9"
        );
        assert_eq!(r("127.0.0.1", nets, &["1.2.3.4:5678"], &[]), "1.2.3.4");
    }

    #[test]
    fn forwarded_for_is_read_when_there_is_no_x_forwarded_for() {
        let nets = "127.0.0.1/32";
        assert_eq!(
            r(
                "127.0.0.1",
                nets,
                &[],
                &["for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https"]
            ),
            "2001:db8::7"
        );
        assert_eq!(
            r("127.0.0.1", nets, &[], &["for=unknown"]),
            "127.0.0.1",
            "an unknown hop is not an address"
        );
        assert_eq!(
            r("127.0.0.1", nets, &["198.51.100.1"], &["for=6.6.6.6"]),
            "198.51.100.1",
            "X-Forwarded-For wins"
        );
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_networks() {
        assert_eq!(
            r("::ffff:127.0.0.1", "127.0.0.0/8", &["192.0.2.1"], &[]),
            "192.0.2.1"
        );
    }

    #[test]
    fn bad_networks_are_refused() {
        assert!(parse_trusted_proxies("10.0.0.0/33").is_err());
        assert!(parse_trusted_proxies("proxy.local").is_err());
        assert_eq!(parse_trusted_proxies(" , ").unwrap(), vec![]);
        assert_eq!(
            parse_trusted_proxies("10.1.2.3/8").unwrap()[0].to_string(),
            "10.0.0.0/8"
        );
    }
}
