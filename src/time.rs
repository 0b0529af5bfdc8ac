//! Calendar arithmetic for the formats the API speaks: `yyyy-mm-dd` dates and
//! `yyyy-mm-dd HH:MM:SS` times (UTC). Pure functions over Unix seconds; the only clock read is
//! `now`, which handlers receive through their context rather than call.

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
}
