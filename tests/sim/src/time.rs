//! Asterisk-format timestamps (`2026-11-28T15:34:40.287+0000`).
//!
//! Written by hand instead of pulling in a date crate: the simulator only ever needs "now, in
//! UTC, with milliseconds", and this is on the hot path of every event.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time formatted the way Asterisk formats `timestamp` and `creationtime`.
pub fn now_ts() -> String {
    format_ts(SystemTime::now())
}

/// Seconds since the Unix epoch (used in channel ids: `<prefix>-<epoch>.<n>`).
pub fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Format a point in time as `YYYY-MM-DDTHH:MM:SS.mmm+0000`.
pub fn format_ts(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let ms = d.subsec_millis();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}+0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_like_asterisk() {
        // 2026-11-28T15:34:40.287Z
        let t = UNIX_EPOCH + Duration::from_millis(1_795_880_080_287);
        assert_eq!(format_ts(t), "2026-11-28T15:34:40.287+0000");
        assert_eq!(format_ts(UNIX_EPOCH), "1970-01-01T00:00:00.000+0000");
    }
}
