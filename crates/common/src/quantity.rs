//! Kubernetes resource quantities (`500m`, `128Mi`, `1.5G`, `2e3`) as exact nano-units, for what adds and
//! compares them (admission's LimitRanger and ResourceQuota, the volume binder), and upstream's printing.

use std::fmt;

/// A quantity in billionths of a unit, with the suffix family it was written in (for printing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Quantity {
    pub nanos: i128,
    pub binary: bool,
}

const NANO: i128 = 1_000_000_000;

impl Quantity {
    pub fn zero() -> Self {
        Self::default()
    }

    /// Parses upstream's quantity grammar; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() || s.len() > 64 {
            return None;
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(s.len());
        let (num, suffix) = s.split_at(split);
        let (mantissa, exp10): (&str, i32) = match suffix {
            "" => (num, 0),
            _ if suffix.starts_with(['e', 'E']) => (num, suffix[1..].parse().ok()?),
            _ => (num, 0),
        };
        // Upstream's exponents stay within what int64 holds; refusing larger ones also bounds the work.
        if !(-40..=40).contains(&exp10) {
            return None;
        }
        let (mult_num, mult_den, binary): (i128, i128, bool) = match suffix {
            s if s.starts_with(['e', 'E']) => (1, 1, false),
            "" => (1, 1, false),
            "n" => (1, NANO, false),
            "u" => (1, 1_000_000, false),
            "m" => (1, 1000, false),
            "k" => (1000, 1, false),
            "M" => (1_000_000, 1, false),
            "G" => (1_000_000_000, 1, false),
            "T" => (1_000_000_000_000, 1, false),
            "P" => (1_000_000_000_000_000, 1, false),
            "E" => (1_000_000_000_000_000_000, 1, false),
            "Ki" => (1 << 10, 1, true),
            "Mi" => (1 << 20, 1, true),
            "Gi" => (1 << 30, 1, true),
            "Ti" => (1 << 40, 1, true),
            "Pi" => (1 << 50, 1, true),
            "Ei" => (1 << 60, 1, true),
            _ => return None,
        };
        let (neg, digits) = match mantissa.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // value = int.frac * 10^exp10 * mult, in nanos; exact while it fits.
        let mut scaled: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            scaled = scaled.checked_mul(10)?.checked_add((b - b'0') as i128)?;
        }
        if frac.len() > 40 || int.len() > 40 {
            return None;
        }
        let mut exp = exp10 - frac.len() as i32 + 9;
        let mut value = scaled.checked_mul(mult_num)?;
        while exp > 0 {
            value = value.checked_mul(10)?;
            exp -= 1;
        }
        let mut den = mult_den;
        while exp < 0 {
            den = den.checked_mul(10)?;
            exp += 1;
        }
        // Upstream rounds up to the nearest nano.
        let nanos = value.checked_add(den - 1)? / den;
        Some(Self {
            nanos: if neg { -nanos } else { nanos },
            binary,
        })
    }

    pub fn plus(self, o: Self) -> Self {
        Self {
            nanos: self.nanos.saturating_add(o.nanos),
            binary: self.binary || o.binary,
        }
    }

    pub fn times(self, n: i128) -> Self {
        Self {
            nanos: self.nanos.saturating_mul(n),
            binary: self.binary,
        }
    }
}

impl fmt::Display for Quantity {
    /// Upstream's canonical form: the largest suffix that keeps the value whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nanos;
        if n == 0 {
            return f.write_str("0");
        }
        if self.binary && n % NANO == 0 {
            let units = n / NANO;
            for (shift, suffix) in [
                (60, "Ei"),
                (50, "Pi"),
                (40, "Ti"),
                (30, "Gi"),
                (20, "Mi"),
                (10, "Ki"),
            ] {
                if units % (1i128 << shift) == 0 {
                    return write!(f, "{}{suffix}", units >> shift);
                }
            }
        }
        for (scale, suffix) in [
            (NANO * 1_000_000_000_000_000_000, "E"),
            (NANO * 1_000_000_000_000_000, "P"),
            (NANO * 1_000_000_000_000, "T"),
            (NANO * 1_000_000_000, "G"),
            (NANO * 1_000_000, "M"),
            (NANO * 1000, "k"),
            (NANO, ""),
            (1_000_000, "m"),
            (1000, "u"),
            (1, "n"),
        ] {
            if n % scale == 0 {
                return write!(f, "{}{suffix}", n / scale);
            }
        }
        write!(f, "{n}n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|| panic!("{s} does not parse"))
    }

    #[test]
    fn parses_and_prints_as_upstream() {
        assert_eq!(q("500m").nanos, 500_000_000);
        assert_eq!(q("1").nanos, NANO);
        assert_eq!(q("0.5").nanos, 500_000_000);
        assert_eq!(q("128Mi").nanos, 128 * (1 << 20) * NANO);
        assert_eq!(q("1e3").nanos, 1000 * NANO);
        assert_eq!(q("1.5G").nanos, 1_500_000_000 * NANO);
        assert!(q("1") > q("500m"));
        assert_eq!(q("500m").plus(q("500m")).to_string(), "1");
        assert_eq!(q("250m").to_string(), "250m");
        assert_eq!(q("64Mi").plus(q("64Mi")).to_string(), "128Mi");
        assert_eq!(q("2").to_string(), "2");
        assert_eq!(q("1000").to_string(), "1k");
        assert!(Quantity::parse("abc").is_none());
        assert!(Quantity::parse("1Xi").is_none());
        assert!(Quantity::parse("").is_none());
        assert!(Quantity::parse("0e2147483638").is_none());
        assert!(Quantity::parse("1.5e-2147483648").is_none());
        assert!(Quantity::parse(&"9".repeat(60)).is_none());
    }
}
