//! JavaScript's `Number.prototype.toString()` for doubles (ECMA-262
//! 7.1.12.1 `Number::toString`, radix 10), so a nonce reads exactly as the
//! Node SDK writes `Math.random()`.
//!
//! Rust's float formatting and JavaScript's agree on the digits (both the
//! shortest string that reads back as the same double, the closest one when
//! several are that short) but not on the layout: Rust writes `1.234e-6`
//! where JavaScript writes `0.000001234`, and `1e21` where JavaScript writes
//! `1e+21`. So the digits come from Rust's `{:e}` and the layout follows the
//! specification's steps.

/// `x` as JavaScript's `String(x)` writes it.
pub fn to_js_string(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x == 0.0 {
        return "0".into(); // -0 too
    }
    if x.is_infinite() {
        return if x < 0.0 { "-Infinity" } else { "Infinity" }.into();
    }
    let mut out = String::with_capacity(24);
    if x < 0.0 {
        out.push('-');
    }
    let (digits, exp) = shortest_digits(x.abs());
    let digits = digits.as_str();
    // s = digits (k of them), x = s × 10^(n−k).
    let k = digits.len() as i64;
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if n - 1 < 0 { '-' } else { '+' });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

/// The digits `s` (no trailing zero) and decimal exponent `e` of a finite
/// positive `x` ≈ s[0].s[1..] × 10^e, per the specification: as few digits as
/// reproduce `x`, and of those the closest to `x`, ties to the even one.
///
/// Rust's shortest formatting (`{:e}`) gives the fewest digits but breaks an
/// exact tie upwards (0.5 + 2^-17 = `0.50000762939453125` → `…313`, JavaScript `…312`), so
/// the count comes from it and the digits from the correctly rounded exact
/// formatting (`{:.*e}`, ties to even) when that reads back as `x`. Near a
/// power of two the closest candidate can fall outside `x`'s narrower lower
/// half-interval; then the shortest form is the only one that reproduces `x`.
fn shortest_digits(x: f64) -> (String, i64) {
    fn split(sci: &str) -> (String, i64) {
        let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let digits = digits.trim_end_matches('0');
        let digits = if digits.is_empty() { "0" } else { digits };
        (digits.to_owned(), exp.parse().unwrap_or(0))
    }
    let shortest = format!("{x:e}");
    let (digits, exp) = split(&shortest);
    let rounded = format!("{:.*e}", digits.len() - 1, x);
    if rounded != shortest && rounded.parse::<f64>().ok() == Some(x) {
        return split(&rounded);
    }
    (digits, exp)
}

/// A number serialised into JSON as JavaScript's `JSON.stringify` writes it
/// (serde_json alone would write `1.234e-6` for `0.000001234`). Finite values
/// only: JSON has no NaN or Infinity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JsNumber(pub f64);

impl serde::Serialize for JsNumber {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        if !self.0.is_finite() {
            return Err(S::Error::custom("JSON numbers are finite"));
        }
        let raw = serde_json::value::RawValue::from_string(to_js_string(self.0))
            .map_err(S::Error::custom)?;
        raw.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::{JsNumber, to_js_string};
    use proptest::prelude::*;

    /// An independent reference, straight from the specification's steps:
    /// find the smallest k whose correctly rounded k-digit value reads back as
    /// `x` (so no shortest-digits algorithm is shared with the code under
    /// test), then lay the digits out by the five cases of 7.1.12.1.
    fn reference(x: f64) -> String {
        assert!(x.is_finite() && x > 0.0);
        // Digits and exponent of `d.ddd…e<exp>` text.
        fn parts(t: &str) -> (String, i64) {
            let (m, e) = t.split_once('e').unwrap();
            (m.replace('.', ""), e.parse().unwrap())
        }
        let reads_back = |s: &str, e: i64| {
            format!("{}.{}e{e}", &s[..1], &s[1..])
                .parse::<f64>()
                .unwrap()
                == x
        };
        let (s, e) = (1..=17usize)
            .find_map(|k| {
                // The closest k-digit value (exact decimal rounding, ties to
                // even); when it does not read back as x, its neighbours one
                // unit in the last digit away are the only other candidates.
                let (r, e) = parts(&format!("{:.*e}", k - 1, x));
                if reads_back(&r, e) {
                    return Some((r, e));
                }
                let v: u64 = r.parse().unwrap();
                [v.checked_sub(1), Some(v + 1)]
                    .into_iter()
                    .flatten()
                    .find_map(|w| {
                        let w = w.to_string();
                        match w.len().cmp(&k) {
                            std::cmp::Ordering::Equal => reads_back(&w, e).then_some((w, e)),
                            // 10^k: one more digit, exponent up
                            std::cmp::Ordering::Greater => {
                                reads_back(&w[..k], e + 1).then(|| (w[..k].to_owned(), e + 1))
                            }
                            // 10^(k-1) - 1: the leading digit went away
                            std::cmp::Ordering::Less => None,
                        }
                    })
            })
            .expect("17 digits always read back");
        // Step: k as small as possible, so no trailing zero in s.
        let s = s.trim_end_matches('0').to_owned();
        let n = e + 1;
        let k = s.len() as i64;
        if k <= n && n <= 21 {
            format!("{s}{}", "0".repeat((n - k) as usize))
        } else if 0 < n && n <= 21 {
            format!("{}.{}", &s[..n as usize], &s[n as usize..])
        } else if -6 < n && n <= 0 {
            format!("0.{}{s}", "0".repeat(-n as usize))
        } else {
            let sign = if n - 1 < 0 { "-" } else { "+" };
            if k == 1 {
                format!("{s}e{sign}{}", (n - 1).abs())
            } else {
                format!("{}.{}e{sign}{}", &s[..1], &s[1..], (n - 1).abs())
            }
        }
    }

    #[test]
    fn fixed_vectors_match_javascript() {
        for (x, js) in [
            (0.0, "0"),
            (0.5, "0.5"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (1.5e-6, "0.0000015"),
            (0.000001234, "0.000001234"),
            (9.999999999999999e-6, "0.000009999999999999999"),
            // exact ties between two shortest candidates go to the even one
            // (Rust's `{:e}` writes …313 and …341.3)
            (0.5 + 1.0 / 131_072.0, "0.5000076293945312"), // exactly …453125
            (979_762_548_894_341.0 + 0.25, "979762548894341.2"),
            (0.00001, "0.00001"),
            (0.1 + 0.2, "0.30000000000000004"),
            (5e-324, "5e-324"),
            (1.2345e-7, "1.2345e-7"),
            (0.3942609881050885, "0.3942609881050885"),
            (0.9999999999999999, "0.9999999999999999"),
            (123.0, "123"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1.5e300, "1.5e+300"),
            (-0.25, "-0.25"),
        ] {
            assert_eq!(to_js_string(x), js, "{x:e}");
        }
    }

    #[test]
    fn json_numbers_are_written_as_javascript_writes_them() {
        assert_eq!(
            serde_json::to_string(&[JsNumber(0.000001234), JsNumber(0.5)]).unwrap(),
            "[0.000001234,0.5]"
        );
        assert!(serde_json::to_string(&JsNumber(f64::NAN)).is_err());
    }

    /// Both token formats carry a nonce in [1e-6, 1e-5) as the Node SDK
    /// would: `0.000001234`, never `1.234e-6`.
    #[test]
    fn tokens_carry_small_nonces_in_decimal() {
        use crate::domain::{OpenTokFormat, Role};
        use crate::tokens::{Entropy, Signer, TokenParams};
        use base64::Engine;
        let sid = "1_MX4xMjM0NTZ-flNhdCBNYXIgMTUgMTQ6NDI6MjMgUERUIDIwMTR-MC40OTAxMzAyNX4";
        let p = TokenParams {
            session_id: sid,
            role: Role::Publisher,
            expire_time: 2000,
            connection_data: None,
            initial_layout_class_list: &[],
        };
        let e = Entropy {
            nonce: 0.000001234,
            jti: uuid::Uuid::nil(),
        };
        let secret = "1234567890abcdef1234567890abcdef1234567890";
        let t1 = Signer::opentok("123456", secret, OpenTokFormat::T1)
            .unwrap()
            .sign(&p, 1000, &e)
            .unwrap();
        assert_eq!(t1.token_id, "0.000001234");
        let jwt = Signer::opentok("123456", secret, OpenTokFormat::Jwt)
            .unwrap()
            .sign(&p, 1000, &e)
            .unwrap();
        let payload = jwt.token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let json = String::from_utf8(json).unwrap();
        assert!(json.contains("\"nonce\":0.000001234,"), "{json}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Nonces as the signer makes them: 53 random bits over 2^53.
        #[test]
        fn nonces_match_the_reference(n in 1u64..(1u64 << 53)) {
            let x = n as f64 / (1u64 << 53) as f64;
            prop_assert_eq!(to_js_string(x), reference(x));
        }

        /// Small nonces (the [1e-7, 1e-5) band where the layouts differ).
        #[test]
        fn small_values_match_the_reference(n in 1u64..(1u64 << 40)) {
            let x = n as f64 / (1u64 << 53) as f64;
            prop_assert_eq!(to_js_string(x), reference(x));
        }

        /// Any positive finite double, subnormals included.
        #[test]
        fn any_positive_double_matches_the_reference(bits in 1u64..0x7ff0_0000_0000_0000u64) {
            let x = f64::from_bits(bits);
            prop_assert_eq!(to_js_string(x), reference(x));
        }
    }
}
