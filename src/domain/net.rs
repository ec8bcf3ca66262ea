//! Network values from the settings.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses `TOKEN_BROKER_TRUSTED_PROXIES`: comma-separated CIDRs (a bare address
/// is a single-host network); empty means no proxy is trusted.
pub fn parse_trusted_proxies(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("trusted_proxies: `{p}` is not a CIDR network or address"))
        })
        .collect()
}
