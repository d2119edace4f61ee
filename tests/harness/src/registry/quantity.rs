//! Kubernetes resource quantities (`1Gi`, `500m`, `1e3`): the grammar the API
//! server accepts, and conversion to bytes or milli-units for comparisons.

/// A parsed quantity, held as a float of base units.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Quantity(pub f64);

impl Quantity {
    /// Whole base units, rounded up (bytes for storage and memory).
    pub fn value(&self) -> i64 {
        self.0.ceil() as i64
    }

    /// Milli-units, rounded up (millicores for cpu).
    pub fn milli(&self) -> i64 {
        (self.0 * 1000.0).ceil() as i64
    }
}

pub const QUANTITY_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// Parses the canonical quantity grammar; `None` when it does not match.
pub fn parse(s: &str) -> Option<Quantity> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let (sign, digits) = match num.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, num.strip_prefix('+').unwrap_or(num)),
    };
    if digits.is_empty()
        || digits.contains(['+', '-'])
        || digits.matches('.').count() > 1
        || digits == "."
    {
        return None;
    }
    let base: f64 = digits.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(Quantity(sign * base * mult))
}

/// Formats bytes the way Kubernetes prints binary quantities (`1Gi`, `512Mi`).
pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [(&str, i64); 5] = [
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (suffix, size) in UNITS {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{}", bytes / size, suffix);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_canonical_grammar() {
        assert_eq!(parse("1Gi").unwrap().value(), 1 << 30);
        assert_eq!(parse("500m").unwrap().milli(), 500);
        assert_eq!(parse("2").unwrap().milli(), 2000);
        assert_eq!(parse("1e3").unwrap().value(), 1000);
        assert_eq!(parse("1.5Ki").unwrap().value(), 1536);
        assert_eq!(parse("128974848").unwrap().value(), 128974848);
        for bad in ["lots", "", "1Gb", "1..2", "Gi", "--1", "1 Gi"] {
            assert!(parse(bad).is_none(), "{bad} should be rejected");
        }
        assert_eq!(format_bytes(1 << 30), "1Gi");
    }
}
