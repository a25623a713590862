//! Human sizes such as `16G` or `512MiB`, always binary multiples.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid size {input:?}: {why} (use a whole number with a unit, like \"512M\", \"16G\" or \"1T\")"
)]
pub struct SizeError {
    pub input: String,
    pub why: &'static str,
}

/// Parses `16G`, `16GiB`, `16GB`, `512M`, `1T`, `4096K` (all binary multiples).
/// A bare number is rejected: a disk of "16" bytes is never what anyone meant.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |why| SizeError {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return Err(err("it does not start with a number"));
    }
    let number: u64 = s[..digits_end]
        .parse()
        .map_err(|_| err("the number is too large"))?;
    let unit = s[digits_end..].trim().to_ascii_uppercase();
    let shift = match unit.as_str() {
        "" => return Err(err("it has no unit")),
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(err("the unit is not one of K, M, G, T")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| err("the size is too large"))
}

/// Formats bytes as the largest exact binary unit, falling back to MiB with
/// one decimal (`16G`, `512M`, `1.5G`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];
    for (unit, shift) in UNITS {
        let m = 1u64 << shift;
        if bytes >= m {
            return if bytes.is_multiple_of(m) {
                format!("{}{unit}", bytes / m)
            } else {
                format!("{:.1}{unit}", bytes as f64 / m as f64)
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("4096K"), Ok(4096 << 10));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(parse_size("16").unwrap_err().why, "it has no unit");
        assert_eq!(
            parse_size("G").unwrap_err().why,
            "it does not start with a number"
        );
        assert_eq!(
            parse_size("16Q").unwrap_err().why,
            "the unit is not one of K, M, G, T"
        );
        assert_eq!(
            parse_size("99999999999T").unwrap_err().why,
            "the size is too large"
        );
        assert_eq!(
            parse_size("-1G").unwrap_err().why,
            "it does not start with a number"
        );
    }

    #[test]
    fn formats_round_trip() {
        for s in ["16G", "512M", "1T", "3K"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
        assert_eq!(format_size(3 << 29), "1.5G");
        assert_eq!(format_size(332_468_224), "317.1M");
        assert_eq!(format_size(512), "512B");
    }
}
