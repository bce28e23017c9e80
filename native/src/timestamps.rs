//! RFC 3339 UTC instants <-> epoch microseconds, as `schemas/timestamps.py`.
//!
//! Only the canonical shape `YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z` is read here;
//! anything else is left to the Python parser (which words the errors), so a
//! `None` from this module is never a verdict, only "not the fast case".

use crate::digits::push_padded;

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of `days_from_civil`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

fn number(text: &[u8]) -> Option<i64> {
    let mut value: i64 = 0;
    for &c in text {
        if !c.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(c - b'0');
    }
    Some(value)
}

/// Epoch microseconds of a canonical-shape timestamp naming a real instant.
pub fn parse_canonical(text: &[u8]) -> Option<i64> {
    let n = text.len();
    if !(n == 20 || ((22..=27).contains(&n) && text[19] == b'.')) {
        return None;
    }
    if text[n - 1] != b'Z'
        || text[10] != b'T'
        || text[4] != b'-'
        || text[7] != b'-'
        || text[13] != b':'
        || text[16] != b':'
    {
        return None;
    }
    let year = number(&text[0..4])?;
    let month = number(&text[5..7])? as u32;
    let day = number(&text[8..10])? as u32;
    let hour = number(&text[11..13])?;
    let minute = number(&text[14..16])?;
    let second = number(&text[17..19])?;
    let mut fraction = 0;
    if n > 20 {
        let digits = &text[20..n - 1];
        fraction = number(digits)?;
        for _ in digits.len()..6 {
            fraction *= 10;
        }
    }
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * SECONDS_PER_DAY + hour * 3_600 + minute * 60 + second) * MICROS_PER_SECOND + fraction)
}

/// The canonical text of an instant (fraction only when non-zero); None
/// outside years 1..=9999, where Python's `date` raises instead.
pub fn format_canonical(micros: i64) -> Option<String> {
    let mut out = Vec::with_capacity(27);
    push_canonical(&mut out, micros)?;
    // Only ASCII digits and separators were written.
    String::from_utf8(out).ok()
}

/// `format_canonical`'s text appended to `out` (nothing written on None).
pub fn push_canonical(out: &mut Vec<u8>, micros: i64) -> Option<()> {
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let fraction = micros.rem_euclid(MICROS_PER_SECOND) as u64;
    let days = seconds.div_euclid(SECONDS_PER_DAY);
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY) as u64;
    let (year, month, day) = civil_from_days(days);
    if !(1..=9999).contains(&year) {
        return None;
    }
    let (hour, rest) = (second_of_day / 3_600, second_of_day % 3_600);
    let (minute, second) = (rest / 60, rest % 60);
    push_padded(out, year as u64, 4);
    out.push(b'-');
    push_padded(out, u64::from(month), 2);
    out.push(b'-');
    push_padded(out, u64::from(day), 2);
    out.push(b'T');
    push_padded(out, hour, 2);
    out.push(b':');
    push_padded(out, minute, 2);
    out.push(b':');
    push_padded(out, second, 2);
    if fraction != 0 {
        out.push(b'.');
        let at = out.len();
        push_padded(out, fraction, 6);
        while out.len() > at && out[out.len() - 1] == b'0' {
            out.pop();
        }
    }
    out.push(b'Z');
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_epoch_and_a_fraction() {
        assert_eq!(parse_canonical(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_canonical(b"1970-01-01T00:00:00.5Z"), Some(500_000));
        assert_eq!(format_canonical(1_500_000).as_deref(), Some("1970-01-01T00:00:01.5Z"));
        assert_eq!(format_canonical(-1).as_deref(), Some("1969-12-31T23:59:59.999999Z"));
    }

    #[test]
    fn refuses_impossible_dates() {
        assert_eq!(parse_canonical(b"2023-02-29T00:00:00Z"), None);
        assert!(parse_canonical(b"2024-02-29T00:00:00Z").is_some());
        assert_eq!(parse_canonical(b"2024-01-01T24:00:00Z"), None);
        assert_eq!(parse_canonical(b"0000-01-01T00:00:00Z"), None);
    }

    #[test]
    fn days_round_trip() {
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
