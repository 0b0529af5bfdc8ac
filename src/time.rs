//! Calendar arithmetic for the formats the API speaks: `yyyy-mm-dd` dates and
//! `yyyy-mm-dd HH:MM:SS` times (UTC), and reading those times back, or ISO 8601's as Django
//! writes them (`users import`). Pure functions over Unix seconds; the only clock read is `now`,
//! which handlers receive through their context rather than call.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

/// `yyyy-mm-dd HH:MM:SS` in UTC.
pub(crate) fn format_datetime(seconds: i64) -> String {
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Checks that `text` is exactly `yyyy-mm-dd` and names a day that exists (so `2023-02-30` and
/// `2023-2-3` are refused), with a year from 1900 to 2100.
pub(crate) fn is_valid_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return false;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = &text[range];
        part.bytes().all(|byte| byte.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (Some(year), Some(month), Some(day)) = (number(0..4), number(5..7), number(8..10)) else {
        return false;
    };
    (1900..=2100).contains(&year)
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
}

/// Reads a time as `format_datetime` writes it, or in ISO 8601 as Django's `dumpdata` writes one
/// (`2023-05-01T12:34:56.789`, with `Z` or `+08:00` when it kept time zones): a date
/// `is_valid_date` accepts, `T` or a space, `HH:MM:SS`, optional fractions of a second (dropped),
/// and an optional `Z` or `±HH:MM` offset; without one the time is UTC, as Django writes naive
/// times. Unix seconds, or `None` for anything else.
pub(crate) fn parse_datetime(text: &str) -> Option<i64> {
    let (date, rest) = (text.get(..10)?, text.get(10..)?);
    if !is_valid_date(date) {
        return None;
    }
    let rest = rest.strip_prefix(['T', ' '])?;
    let number = |part: &str| -> Option<i64> {
        let plain = part.len() == 2 && part.bytes().all(|byte| byte.is_ascii_digit());
        plain.then(|| part.parse().ok())?
    };
    let (clock, mut rest) = (rest.get(..8)?, rest.get(8..)?);
    let (hour, minute, second) = match clock.as_bytes() {
        [_, _, b':', _, _, b':', _, _] => {
            (number(&clock[..2])?, number(&clock[3..5])?, number(&clock[6..])?)
        }
        _ => return None,
    };
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest.as_bytes() {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (number(&rest[1..3])?, number(&rest[4..])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let year: i64 = date[..4].parse().ok()?;
    let month: u32 = date[5..7].parse().ok()?;
    let day: u32 = date[8..].parse().ok()?;
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Howard Hinnant's civil-to-days algorithm, the inverse of `civil_from_days`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * month_index + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_datetime(0), "1970-01-01 00:00:00");
        assert_eq!(format_datetime(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_datetime(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_datetime(1_709_251_199), "2024-02-29 23:59:59");
        assert_eq!(format_datetime(253_402_300_800), "10000-01-01 00:00:00");
        assert_eq!(format_datetime(-62_167_219_201), "-001-12-31 23:59:59");
    }

    #[test]
    fn dates_must_exist() {
        assert!(is_valid_date("2000-02-29"));
        assert!(is_valid_date("1990-12-31"));
        assert!(!is_valid_date("2023-02-29"));
        assert!(!is_valid_date("2023-02-30"));
        assert!(!is_valid_date("1900-02-29"));
        assert!(!is_valid_date("2023-13-01"));
        assert!(!is_valid_date("2023-00-10"));
        assert!(!is_valid_date("2023-2-3"));
        assert!(!is_valid_date("2023/02/03"));
        assert!(!is_valid_date("+023-02-03"));
        assert!(!is_valid_date("1899-12-31"));
        assert!(!is_valid_date(""));
    }

    #[test]
    fn reads_back_what_it_writes_and_what_django_writes() {
        for seconds in [0, 951_782_400, 1_700_000_000, 1_709_251_199, 4_102_444_799] {
            assert_eq!(parse_datetime(&format_datetime(seconds)), Some(seconds), "{seconds}");
        }
        // dumpdata: naive (UTC), milliseconds, `Z`, an offset.
        assert_eq!(parse_datetime("2023-11-14T22:13:20"), Some(1_700_000_000));
        assert_eq!(parse_datetime("2023-11-14T22:13:20.789"), Some(1_700_000_000));
        assert_eq!(parse_datetime("2023-11-14T22:13:20.123456Z"), Some(1_700_000_000));
        assert_eq!(parse_datetime("2023-11-15T06:13:20+08:00"), Some(1_700_000_000));
        assert_eq!(parse_datetime("2023-11-14T17:13:20.5-05:00"), Some(1_700_000_000));
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13",
            "2023-02-30T00:00:00",
            "2023-11-14T24:00:00",
            "2023-11-14T22:60:00",
            "2023-11-14X22:13:20",
            "2023-11-14T22:13:20.",
            "2023-11-14T22:13:20+8:00",
            "2023-11-14T22:13:20 ",
            "2023-11-14T22:13:20z",
            "１２３４-11-14T22:13:20",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad:?}");
        }
    }
}
