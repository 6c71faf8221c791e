//! Cron expressions the standard way, on top of the `cron` crate.
//!
//! The `cron` crate parses and validates the fields; this wrapper gives it the syntax operators
//! know:
//! - 5 fields (`min hour dom month dow`) or 6 (seconds first); a 7th field (year) is accepted.
//! - Day of week numbered like Vixie cron and POSIX: 0 and 7 are Sunday, `1-5` is Monday to
//!   Friday; names (`mon`, `Monday`) too. The crate counts 1 = Sunday (Quartz), so the field is
//!   rewritten to day names before it reaches the crate.
//! - When both day of month and day of week are restricted, a day matches if either does (Vixie
//!   cron); the crate would require both.
//!
//! The parsed expression is kept as bit sets of its fields (about 80 bytes), not as the crate's
//! structure (a `BTreeSet` per field and the source, a few hundred bytes to over a kilobyte): a
//! daemon holds one per broadcast with a schedule. Matches are walked on the bit sets.
//!
//! It works on wall-clock (naive local) times only; `super::Recurrence` maps them to instants with
//! the time zone and the daylight-saving policy.

use std::str::FromStr;

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike};
use cron::TimeUnitSpec;

const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// The years a cron expression can name (the `cron` crate's range).
const FIRST_YEAR: i32 = 1970;
const LAST_YEAR: i32 = 2100;

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct CronExpr {
    source: Box<str>,
    fields: Fields,
    interval: bool,
}

/// The values each field allows, one bit per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    /// Bit n: second n (0-59).
    seconds: u64,
    /// Bit n: minute n (0-59).
    minutes: u64,
    /// Bit n: hour n (0-23).
    hours: u32,
    /// Bit n: day of month n (1-31).
    days_of_month: u32,
    /// Bit n: month n (1-12).
    months: u16,
    /// Bit n: n days from Sunday (0-6).
    days_of_week: u8,
    /// Both day fields restricted: a day matches if either does (otherwise if both do).
    either_day: bool,
    /// Bit n: year 1970 + n (1970-2100).
    years: [u64; 3],
}

impl Fields {
    /// The bit sets of a schedule the `cron` crate parsed.
    fn of(schedule: &cron::Schedule, either_day: bool) -> Self {
        fn bits(spec: &impl TimeUnitSpec, offset: u32) -> u64 {
            // Every ordinal of these fields is below 64 + offset (seconds and minutes 0-59, hours
            // 0-23, days 1-31, months 1-12, days of week 1-7).
            spec.iter()
                .filter(|value| value.wrapping_sub(offset) < 64)
                .fold(0, |bits, value| bits | 1 << (value - offset))
        }
        let mut years = [0u64; 3];
        for year in schedule.years().iter() {
            if let Some(index) = year.checked_sub(FIRST_YEAR as u32).map(|index| index as usize)
                && index < 64 * years.len()
            {
                years[index / 64] |= 1 << (index % 64);
            }
        }
        // The narrowing casts keep every bit: hours < 24, days < 32, months < 13, days of week
        // (Quartz 1-7, shifted to 0-6) < 7.
        Self {
            seconds: bits(schedule.seconds(), 0),
            minutes: bits(schedule.minutes(), 0),
            hours: bits(schedule.hours(), 0) as u32,
            days_of_month: bits(schedule.days_of_month(), 0) as u32,
            months: bits(schedule.months(), 0) as u16,
            days_of_week: bits(schedule.days_of_week(), 1) as u8,
            either_day,
            years,
        }
    }

    fn year(&self, year: i32) -> bool {
        let Some(index) = year.checked_sub(FIRST_YEAR).and_then(|index| usize::try_from(index).ok()) else {
            return false;
        };
        self.years.get(index / 64).is_some_and(|word| word >> (index % 64) & 1 == 1)
    }

    fn day(&self, date: NaiveDate) -> bool {
        let by_month = self.days_of_month >> date.day() & 1 == 1;
        let by_week = self.days_of_week >> date.weekday().num_days_from_sunday() & 1 == 1;
        if self.either_day { by_month || by_week } else { by_month && by_week }
    }

    /// The first time of a matching day at or after `from`.
    fn time_from(&self, from: NaiveTime) -> Option<NaiveTime> {
        let (hour, minute, second) = (from.hour(), from.minute(), from.second());
        for h in at_or_after(u64::from(self.hours), hour) {
            let minute_from = if h == hour { minute } else { 0 };
            for m in at_or_after(self.minutes, minute_from) {
                let second_from = if h == hour && m == minute { second } else { 0 };
                if let Some(s) = at_or_after(self.seconds, second_from).next() {
                    return NaiveTime::from_hms_opt(h, m, s);
                }
            }
        }
        None
    }

    /// The first match at or after `from` (whole seconds).
    fn first_from(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut date = from.date();
        let mut time = from.time();
        if date.year() < FIRST_YEAR {
            date = NaiveDate::from_ymd_opt(FIRST_YEAR, 1, 1)?;
            time = NaiveTime::MIN;
        }
        loop {
            if date.year() > LAST_YEAR {
                return None;
            }
            if !self.year(date.year()) {
                date = NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)?;
                time = NaiveTime::MIN;
                continue;
            }
            if self.months >> date.month() & 1 == 0 {
                date = first_of_next_month(date)?;
                time = NaiveTime::MIN;
                continue;
            }
            if self.day(date)
                && let Some(at) = self.time_from(time)
            {
                return Some(date.and_time(at));
            }
            date = date.succ_opt()?;
            time = NaiveTime::MIN;
        }
    }
}

/// The set bits of `bits` at `from` and above, in order.
fn at_or_after(bits: u64, from: u32) -> impl Iterator<Item = u32> {
    let mut rest = if from >= 64 { 0 } else { bits & (u64::MAX << from) };
    std::iter::from_fn(move || {
        (rest != 0).then(|| {
            let bit = rest.trailing_zeros();
            rest &= rest - 1;
            bit
        })
    })
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    match date.month() {
        12 => NaiveDate::from_ymd_opt(date.year() + 1, 1, 1),
        month => NaiveDate::from_ymd_opt(date.year(), month + 1, 1),
    }
}

/// The fields given to the `cron` crate (6 or 7, day of week as names), whether both day fields
/// are restricted, and whether the expression fires at intervals.
fn crate_fields(text: &str) -> Result<(Vec<String>, bool, bool), String> {
    let trimmed = text.trim();
    if trimmed.starts_with('@') {
        let fields = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *",
            "@monthly" => "0 0 0 1 * *",
            "@weekly" => "0 0 0 * * Sun",
            "@daily" | "@midnight" => "0 0 0 * * *",
            "@hourly" => "0 0 * * * *",
            _ => {
                return Err(format!("unknown macro {trimmed:?}; use @yearly, @monthly, @weekly, @daily or @hourly"));
            }
        };
        let interval = trimmed.eq_ignore_ascii_case("@hourly");
        return Ok((fields.split(' ').map(str::to_string).collect(), false, interval));
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
    let either_day = restricted(&fields[3]) && restricted(&fields[5]);
    Ok((fields, either_day, interval))
}

impl CronExpr {
    /// Parses `text`; the error says what is wrong in words an operator can act on.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (fields, either_day, interval) = crate_fields(text)?;
        // The crate reads the day fields together (both must match); `either_day` says how they
        // combine here. Parsed once to validate and read the fields, then dropped.
        let schedule = cron::Schedule::from_str(&fields.join(" ")).map_err(|error| error.to_string())?;
        Ok(Self { source: text.into(), fields: Fields::of(&schedule, either_day), interval })
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
        let from = after.with_nanosecond(0)?.checked_add_signed(TimeDelta::seconds(1))?;
        self.fields.first_from(from)
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
    use chrono::Weekday;

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

    /// The crate's own walk, as onair used it before the bit sets: one schedule, or two (day of
    /// month, day of week) when both are restricted; the earliest match of either.
    fn crate_next(text: &str, after: NaiveDateTime) -> Result<Option<NaiveDateTime>, String> {
        use chrono::{TimeZone, Utc};
        let (fields, either_day, _) = crate_fields(text)?;
        let mut variants = vec![fields.clone()];
        if either_day {
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
        let start = Utc.from_utc_datetime(&after);
        Ok(schedules.iter().filter_map(|schedule| schedule.after(&start).next()).map(|at| at.naive_utc()).min())
    }

    /// One cron field over `low..=high`: `*`, a value, a range, steps, or a list of those.
    fn field(low: u32, high: u32) -> impl Strategy<Value = String> {
        let part = prop_oneof![
            Just("*".to_string()),
            (low..=high).prop_map(|value| value.to_string()),
            (low..=high, low..=high).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (1..=high.max(2) - low + 1).prop_map(|step| format!("*/{step}")),
            (low..=high, 1u32..=12).prop_map(|(first, step)| format!("{first}/{step}")),
            (low..=high, low..=high, 1u32..=6).prop_map(|(a, b, step)| format!("{}-{}/{step}", a.min(b), a.max(b))),
        ];
        proptest::collection::vec(part, 1..=3).prop_map(|parts| parts.join(","))
    }

    fn expression() -> impl Strategy<Value = String> {
        let day_of_week =
            prop_oneof![field(0, 7), Just("mon-fri".to_string()), Just("sat,sun".to_string()), Just("?".to_string())];
        let day_of_month =
            prop_oneof![field(1, 31), Just("29".to_string()), Just("31".to_string()), Just("30,31".to_string())];
        let month = prop_oneof![field(1, 12), Just("2".to_string())];
        let year = prop_oneof![Just(None), field(2024, 2040).prop_map(Some)];
        (proptest::option::of(0u32..60), field(0, 59), field(0, 23), day_of_month, month, day_of_week, year).prop_map(
            |(second, minute, hour, day_of_month, month, day_of_week, year)| {
                let mut text = second.map(|second| format!("{second} ")).unwrap_or_default();
                text.push_str(&format!("{minute} {hour} {day_of_month} {month} {day_of_week}"));
                if let Some(year) = year {
                    text.push_str(&format!(" {year}"));
                }
                text
            },
        )
    }

    fn instant() -> impl Strategy<Value = NaiveDateTime> {
        (0i64..(12 * 366 * 86_400), 0u32..1_000_000_000).prop_map(|(seconds, nanos)| {
            let base = NaiveDate::from_ymd_opt(2023, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
            (base + TimeDelta::seconds(seconds)).with_nanosecond(if nanos % 2 == 0 { 0 } else { nanos }).unwrap()
        })
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The bit sets find the same matches as the `cron` crate did.
        #[test]
        fn bit_sets_match_the_crate(text in expression(), after in instant()) {
            let ours = CronExpr::parse(&text);
            let theirs = crate_next(&text, after);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{}: {:?} / {:?}", text, ours.as_ref().err(), theirs.as_ref().err());
            let Ok(ours) = ours else { return Ok(()) };
            let mut cursor = after;
            for _ in 0..4 {
                let expected = crate_next(&text, cursor).unwrap();
                let found = ours.next_after(cursor);
                prop_assert_eq!(found, expected, "{} after {}", text, cursor);
                let Some(next) = found else { break };
                cursor = next;
            }
        }
    }

    #[test]
    fn leap_days_and_short_months() {
        let after = NaiveDate::from_ymd_opt(2025, 3, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
        for text in [
            "0 12 29 2 *",
            "0 12 31 * *",
            "0 12 30 2 *",
            "0 12 29 2 mon",
            "0 0 12 31 12 * 2030-2031",
            "0 0 0 1 1 * 1999",
        ] {
            for _ in 0..3 {
                let ours = CronExpr::parse(text).unwrap();
                let mut cursor = after;
                for _ in 0..5 {
                    let expected = crate_next(text, cursor).unwrap();
                    assert_eq!(ours.next_after(cursor), expected, "{text} after {cursor}");
                    let Some(next) = expected else { break };
                    cursor = next;
                }
            }
        }
        let feb29 = CronExpr::parse("0 12 29 2 *").unwrap();
        assert_eq!(feb29.next_after(after).unwrap().to_string(), "2028-02-29 12:00:00");
        assert_eq!(CronExpr::parse("0 12 30 2 *").unwrap().next_after(after), None);
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
