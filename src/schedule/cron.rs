//! Cron expressions the standard way, on top of the `cron` crate.
//!
//! The `cron` crate parses and walks the fields; this wrapper gives it the syntax operators know:
//! - 5 fields (`min hour dom month dow`) or 6 (seconds first); a 7th field (year) is accepted.
//! - Day of week numbered like Vixie cron and POSIX: 0 and 7 are Sunday, `1-5` is Monday to
//!   Friday; names (`mon`, `Monday`) too. The crate counts 1 = Sunday (Quartz), so the field is
//!   rewritten to day names before it reaches the crate.
//! - When both day of month and day of week are restricted, a day matches if either does (Vixie
//!   cron); the crate would require both, so such an expression becomes two schedules.
//!
//! It works on wall-clock (naive local) times only; `super::Recurrence` maps them to instants with
//! the time zone and the daylight-saving policy.

use std::str::FromStr;

use chrono::{NaiveDateTime, TimeZone, Utc};

const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct CronExpr {
    source: String,
    /// One schedule, or two when day of month and day of week are both restricted.
    schedules: Vec<cron::Schedule>,
    interval: bool,
}

impl CronExpr {
    /// Parses `text`; the error says what is wrong in words an operator can act on.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.starts_with('@') {
            return Self::macro_form(trimmed);
        }
        let mut fields: Vec<String> = trimmed.split_whitespace().map(str::to_string).collect();
        match fields.len() {
            5 => fields.insert(0, "0".into()),
            6 | 7 => {}
            count => {
                return Err(format!(
                    "{count} fields; write 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
                ));
            }
        }
        if !fields[0].chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "the seconds field {:?} must be one number: a broadcast occurs at most once a minute",
                fields[0]
            ));
        }
        fields[5] = day_of_week(&fields[5])?;
        // Vixie cron marks "at intervals" jobs by a leading `*` in the minute or hour field.
        let interval = fields[1].starts_with('*') || fields[2].starts_with('*');
        let restricted = |field: &str| !matches!(field, "*" | "?");
        let mut variants = vec![fields.clone()];
        if restricted(&fields[3]) && restricted(&fields[5]) {
            let mut by_day_of_month = fields.clone();
            by_day_of_month[5] = "*".into();
            let mut by_day_of_week = fields;
            by_day_of_week[3] = "*".into();
            variants = vec![by_day_of_month, by_day_of_week];
        }
        let schedules = variants
            .into_iter()
            .map(|fields| cron::Schedule::from_str(&fields.join(" ")).map_err(|error| error.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { source: text.to_string(), schedules, interval })
    }

    fn macro_form(text: &str) -> Result<Self, String> {
        let fields = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *",
            "@monthly" => "0 0 0 1 * *",
            "@weekly" => "0 0 0 * * Sun",
            "@daily" | "@midnight" => "0 0 0 * * *",
            "@hourly" => "0 0 * * * *",
            _ => return Err(format!("unknown macro {text:?}; use @yearly, @monthly, @weekly, @daily or @hourly")),
        };
        let schedule = cron::Schedule::from_str(fields).map_err(|error| error.to_string())?;
        Ok(Self { source: text.to_string(), schedules: vec![schedule], interval: text.eq_ignore_ascii_case("@hourly") })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether it fires at intervals (a `*` leads its minute or hour field, or `@hourly`): such a
    /// schedule fires at every real matching instant, through both passes of a repeated hour.
    pub fn is_interval(&self) -> bool {
        self.interval
    }

    /// The first wall-clock match strictly after `after`.
    pub fn next_after(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = Utc.from_utc_datetime(&after);
        self.schedules.iter().filter_map(|schedule| schedule.after(&start).next()).map(|at| at.naive_utc()).min()
    }

    /// Wall-clock matches strictly after `after`, in order.
    pub fn matches_after(&self, after: NaiveDateTime) -> impl Iterator<Item = NaiveDateTime> + '_ {
        let mut cursor = after;
        std::iter::from_fn(move || {
            let next = self.next_after(cursor)?;
            cursor = next;
            Some(next)
        })
    }
}

/// Rewrites a standard day-of-week field (0 or 7 = Sunday, names, ranges, steps, lists) into day
/// names, which the `cron` crate reads without its Quartz numbering getting in the way.
fn day_of_week(field: &str) -> Result<String, String> {
    if matches!(field, "*" | "?") {
        return Ok(field.to_string());
    }
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: usize =
                    step.parse().ok().filter(|step| *step >= 1).ok_or_else(|| format!("invalid step in {part:?}"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (first, last) = match range {
            "*" | "?" => (0, 6),
            _ => match range.split_once('-') {
                Some((first, last)) => (day(first)?, day(last)?),
                None if step > 1 => (day(range)?, 6),
                None => {
                    let single = day(range)?;
                    (single, single)
                }
            },
        };
        // 7 is Sunday: alone it is day 0; as the end of a range (`5-7`) it means "through Sunday".
        let (first, last) = if first == 7 && last == 7 { (0, 0) } else { (first, last) };
        if first > last {
            return Err(format!("day-of-week range {range:?} runs backwards; write it as two ranges"));
        }
        for value in (first..=last).step_by(step) {
            days[value % 7] = true;
        }
    }
    let names: Vec<&str> = (0..7).filter(|index| days[*index]).map(|index| DAY_NAMES[index]).collect();
    Ok(names.join(","))
}

/// One day of the week: 0 to 7 (0 and 7 are Sunday) or a name.
fn day(text: &str) -> Result<usize, String> {
    if let Ok(number) = text.parse::<usize>() {
        return if number <= 7 { Ok(number) } else { Err(format!("day of week {number} is not between 0 and 7")) };
    }
    let lower = text.to_ascii_lowercase();
    let names = [
        ["sun", "sunday"],
        ["mon", "monday"],
        ["tue", "tuesday"],
        ["wed", "wednesday"],
        ["thu", "thursday"],
        ["fri", "friday"],
        ["sat", "saturday"],
    ];
    names
        .iter()
        .position(|[short, long]| lower == *short || lower == *long)
        .ok_or_else(|| format!("{text:?} is not a day of the week (0-7 or a name such as mon)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate, Weekday};

    fn days_fired(expression: &str) -> Vec<Weekday> {
        let cron = CronExpr::parse(expression).unwrap();
        // 2026-11-23 is a Monday; one week of matches.
        let start = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap().and_hms_opt(23, 59, 59).unwrap();
        let end = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        cron.matches_after(start).take_while(|at| at.date() < end).map(|at| at.weekday()).collect()
    }

    #[test]
    fn weekdays_are_numbered_the_standard_way() {
        use Weekday::*;
        assert_eq!(days_fired("0 12 * * 1-5"), [Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(days_fired("0 12 * * 0"), [Sun]);
        assert_eq!(days_fired("0 12 * * 7"), [Sun]);
        assert_eq!(days_fired("0 12 * * 6,0"), [Sat, Sun]);
        assert_eq!(days_fired("0 12 * * 5-7"), [Fri, Sat, Sun]);
        assert_eq!(days_fired("0 12 * * mon-fri"), [Mon, Tue, Wed, Thu, Fri]);
        assert_eq!(days_fired("0 12 * * Sunday"), [Sun]);
        assert_eq!(days_fired("0 12 * * */2"), [Tue, Thu, Sat, Sun]);
        assert_eq!(days_fired("0 12 * * 1/3"), [Mon, Thu]);
        assert_eq!(days_fired("30 0 12 * * 1"), [Mon], "six fields: seconds first");
    }

    #[test]
    fn day_of_month_or_day_of_week_like_vixie_cron() {
        let cron = CronExpr::parse("0 12 1 * mon").unwrap();
        let start = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap().and_hms_opt(0, 0, 0).unwrap();
        let next: Vec<_> = cron.matches_after(start).take(3).map(|at| at.date().to_string()).collect();
        // Monday 30 November, Tuesday 1 December (day of month), Monday 7 December.
        assert_eq!(next, ["2026-11-30", "2026-12-01", "2026-12-07"]);
    }

    #[test]
    fn interval_schedules_are_recognised() {
        assert!(CronExpr::parse("*/15 * * * *").unwrap().is_interval());
        assert!(CronExpr::parse("0 * * * *").unwrap().is_interval());
        assert!(CronExpr::parse("@hourly").unwrap().is_interval());
        assert!(!CronExpr::parse("30 2 * * *").unwrap().is_interval());
        assert!(!CronExpr::parse("0,30 9-17 * * 1-5").unwrap().is_interval());
        assert!(!CronExpr::parse("@daily").unwrap().is_interval());
    }

    #[test]
    fn bad_expressions_say_why() {
        for (text, reason) in [
            ("0 12 * *", "4 fields"),
            ("*/10 0 12 * * *", "seconds field"),
            ("0 12 * * 8", "not between 0 and 7"),
            ("0 12 * * funday", "not a day of the week"),
            ("0 12 * * 5-1", "runs backwards"),
            ("0 25 * * *", "Hours"),
            ("@fortnightly", "unknown macro"),
        ] {
            let error = CronExpr::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
