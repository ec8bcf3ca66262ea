//! Rate limits as values: a sustained rate and a burst, and the four limits'
//! rates. Settings and policy files carry them; `crate::limits` enforces them.

/// A sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// Parses `"<per_second>/<burst>"` (or just `"<per_second>"`, burst = rate).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (r, b) = s.split_once('/').unwrap_or((s, s));
        let per_second: u32 = r
            .trim()
            .parse()
            .map_err(|_| format!("rate {s:?}: expected <per_second>/<burst>, e.g. \"5/20\""))?;
        let burst: u32 = b
            .trim()
            .parse()
            .map_err(|_| format!("rate {s:?}: expected <per_second>/<burst>, e.g. \"5/20\""))?;
        if per_second == 0 || burst == 0 {
            return Err(format!("rate {s:?}: both numbers must be positive"));
        }
        Ok(Rate { per_second, burst })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.per_second, self.burst)
    }
}

/// As its settings text, `"<per_second>/<burst>"`.
impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The four limits' rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rates {
    pub end_user: Rate,
    pub end_user_ip: Rate,
    pub api_key: Rate,
    pub failed_auth_ip: Rate,
}

impl Default for Rates {
    fn default() -> Rates {
        Rates {
            end_user: Rate {
                per_second: 5,
                burst: 20,
            },
            end_user_ip: Rate {
                per_second: 20,
                burst: 60,
            },
            api_key: Rate {
                per_second: 100_000,
                burst: 200_000,
            },
            failed_auth_ip: Rate {
                per_second: 1,
                burst: 10,
            },
        }
    }
}
