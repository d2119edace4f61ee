//! Kubernetes resource quantities (`10Gi`, `500M`, `1.5Gi`, `1e9`) to bytes and back.
//! Parsing rounds fractional bytes up, as the API server's `Value()` does.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::error::{Error, Result};

/// Parses a quantity into whole bytes, rounding up. Negative values are rejected.
pub fn to_bytes(q: &Quantity) -> Result<u64> {
    parse(q.0.trim()).ok_or_else(|| Error::Invalid(format!("bad quantity {:?}", q.0)))
}

fn parse(s: &str) -> Option<u64> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.is_empty() {
        return None;
    }
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) || frac.len() > 18 {
        return None;
    }
    // value = digits / 10^frac_len
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let denom_pow = frac.len() as u32;
    let (mul, div_pow10): (u128, i32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "n" => (1, 9),
        "u" => (1, 6),
        "m" => (1, 3),
        "k" => (1, -3),
        "M" => (1, -6),
        "G" => (1, -9),
        "T" => (1, -12),
        "P" => (1, -15),
        "E" => (1, -18),
        other => {
            let exp = other.strip_prefix(['e', 'E'])?;
            let e: i32 = exp.parse().ok()?;
            if !(-30..=30).contains(&e) {
                return None;
            }
            (1, -e)
        }
    };
    let total_div = denom_pow as i32 + div_pow10;
    let mut numer = digits.checked_mul(mul)?;
    let mut denom: u128 = 1;
    if total_div >= 0 {
        denom = 10u128.checked_pow(total_div as u32)?;
    } else {
        numer = numer.checked_mul(10u128.checked_pow((-total_div) as u32)?)?;
    }
    let v = numer.div_ceil(denom);
    u64::try_from(v).ok()
}

/// Formats bytes the way `resource.NewQuantity(n, BinarySI)` does for whole units.
pub fn from_bytes(bytes: u64) -> Quantity {
    const UNITS: [(&str, u64); 5] = [
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    if bytes == 0 {
        return Quantity("0".into());
    }
    for (suffix, unit) in UNITS {
        if bytes.is_multiple_of(unit) {
            return Quantity(format!("{}{suffix}", bytes / unit));
        }
    }
    Quantity(bytes.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Option<u64> {
        to_bytes(&Quantity(s.into())).ok()
    }

    #[test]
    fn parses_binary_decimal_and_fractions() {
        assert_eq!(b("1Gi"), Some(1 << 30));
        assert_eq!(b("500Mi"), Some(500 << 20));
        assert_eq!(b("1G"), Some(1_000_000_000));
        assert_eq!(b("1.5Gi"), Some(3 << 29));
        assert_eq!(b("1e3"), Some(1000));
        assert_eq!(b("100m"), Some(1));
        assert_eq!(b("12345"), Some(12345));
        assert_eq!(b("-1Gi"), None);
        assert_eq!(b("Gi"), None);
        assert_eq!(b("1Xi"), None);
        assert_eq!(b("99999999999Ei"), None);
    }

    #[test]
    fn formats_whole_binary_units() {
        assert_eq!(from_bytes(1 << 30).0, "1Gi");
        assert_eq!(from_bytes(3 << 29).0, "1536Mi");
        assert_eq!(from_bytes(1000).0, "1000");
        assert_eq!(from_bytes(0).0, "0");
    }
}
