//! Sizes on the command line: `4096`, `4K`, `512M`, `20G`, `1T` (binary
//! units, optional `iB`/`B` suffix), as `truncate -s` reads them.

/// Parses a size in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (num, shift) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 10),
        Some('M') => (&body[..body.len() - 1], 20),
        Some('G') => (&body[..body.len() - 1], 30),
        Some('T') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        format!("invalid size {s:?}: use a number with an optional K, M, G or T suffix (e.g. 20G)")
    })?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses a duration: `500ms`, `2s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let bad = || format!("invalid duration {s:?}: use a number with ms, s, m or h (e.g. 30s)");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(bad()),
    }
    .ok_or_else(|| format!("duration {s:?} is too long"))?;
    if ms == 0 {
        return Err(format!("duration {s:?} must be more than zero"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// Parses a tracking block size: a power of two from 4K to 64K.
pub fn parse_block_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if !n.is_power_of_two() || !(4096..=65536).contains(&n) {
        return Err(format!(
            "invalid block size {s:?}: use a power of two from 4K to 64K"
        ));
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        use std::time::Duration;
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2d").unwrap_err().contains("30s"));
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert!(parse_size("").is_err());
        assert!(parse_size("12Q").unwrap_err().contains("invalid size"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn block_sizes_are_powers_of_two_in_range() {
        assert_eq!(parse_block_size("4K").unwrap(), 4096);
        assert_eq!(parse_block_size("64K").unwrap(), 65536);
        assert!(parse_block_size("2K").is_err());
        assert!(parse_block_size("12K").is_err());
        assert!(parse_block_size("128K").is_err());
    }
}
