//! Durations in policy files: whole seconds (`3600`) or a number with a unit
//! (`90s`, `15m`, `8h`, `1d`).

use serde::Deserialize;

/// A duration as written: an integer (seconds) or a string with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Secs(i64),
    Text(String),
}

/// Parses a duration to seconds.
pub fn parse(raw: &RawDuration) -> Result<i64, String> {
    match raw {
        RawDuration::Secs(n) => Ok(*n),
        RawDuration::Text(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: i64 = num.parse().map_err(|_| format!("{s:?} is not a duration: use seconds or a number with s, m, h or d (\"90s\", \"15m\", \"8h\", \"1d\")"))?;
            let mult = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => {
                    return Err(format!(
                        "{s:?} has an unknown unit {unit:?}: use s, m, h or d"
                    ));
                }
            };
            n.checked_mul(mult)
                .ok_or_else(|| format!("{s:?} is too large"))
        }
    }
}

/// Seconds as the shortest exact human form (`7200` → `2h`).
pub fn human(secs: i64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs != 0 && secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let t = |s: &str| parse(&RawDuration::Text(s.into()));
        assert_eq!(t("90s").unwrap(), 90);
        assert_eq!(t("15m").unwrap(), 900);
        assert_eq!(t("8h").unwrap(), 28_800);
        assert_eq!(t("1d").unwrap(), 86_400);
        assert_eq!(t("45").unwrap(), 45);
        assert_eq!(parse(&RawDuration::Secs(7)).unwrap(), 7);
        for bad in ["", "h", "1w", "1.5h", "-1h", "one hour"] {
            assert!(t(bad).is_err(), "{bad:?}");
        }
        assert_eq!(human(7200), "2h");
        assert_eq!(human(90), "90s");
        assert_eq!(human(2_592_000), "30d");
    }
}
