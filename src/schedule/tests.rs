//! The daylight-saving policy, pinned on real transitions: Europe/Paris (2026-03-29 spring
//! forward, 2026-10-25 fall back), America/New_York (2026-03-08, 2026-11-01) and
//! Australia/Lord_Howe (a 30-minute shift: 2026-04-05 back, 2026-10-04 forward), for fixed-time
//! and interval schedules under each policy value; then overlaps, early ends and restarts.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use super::*;

fn spec(cron: &str, timezone: &str, gap: GapPolicy, fold: FoldPolicy) -> Arc<Spec> {
    let when = When::Cron(Arc::new(CronExpr::parse(cron).unwrap()));
    let mut spec = Spec::new(when, timezone.parse().unwrap(), TimeDelta::minutes(1));
    spec.dst_gap = gap;
    spec.dst_fold = fold;
    (spec.lead_channel, spec.lead_scale, spec.post_roll) = (TimeDelta::zero(), TimeDelta::zero(), TimeDelta::zero());
    Arc::new(spec)
}

/// Local midnight of `date` in `timezone`, as an instant.
fn midnight(timezone: &str, date: &str) -> DateTime<Utc> {
    let tz: Tz = timezone.parse().unwrap();
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    tz.from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap()).unwrap().with_timezone(&Utc)
}

/// The air times that go on air from local midnight of `from` for `hours`, in local time with
/// the offset (`2026-03-29 03:00+02:00`).
fn fires(spec: &Arc<Spec>, from: &str, hours: i64) -> Vec<String> {
    let start = midnight(spec.timezone.name(), from);
    let mut airs = Vec::new();
    for occurrence in spec.occurrences(start) {
        if occurrence.air >= start + TimeDelta::hours(hours) {
            break;
        }
        if occurrence.skipped.is_none() {
            airs.push(occurrence.air);
        }
    }
    assert!(airs.windows(2).all(|pair| pair[0] < pair[1]), "in chronological order: {airs:?}");
    airs.iter().map(|air| air.with_timezone(&spec.timezone).format("%Y-%m-%d %H:%M%:z").to_string()).collect()
}

use FoldPolicy::{Both, First, Last};
use GapPolicy::{Shift, Skip as SkipGap};

#[test]
fn paris_spring_forward_fixed_time() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    let shift = spec("30 2 * * *", "Europe/Paris", Shift, First);
    assert_eq!(
        fires(&shift, "2026-03-28", 72),
        ["2026-03-28 02:30+01:00", "2026-03-29 03:00+02:00", "2026-03-30 02:30+02:00"]
    );
    let skip = spec("30 2 * * *", "Europe/Paris", SkipGap, First);
    assert_eq!(fires(&skip, "2026-03-28", 72), ["2026-03-28 02:30+01:00", "2026-03-30 02:30+02:00"]);
    let skipped: Vec<_> = skip.occurrences(midnight("Europe/Paris", "2026-03-29")).take(1).collect();
    assert_eq!(skipped[0].skipped, Some(Skip::Gap), "the skip is visible, not silent");
}

#[test]
fn paris_fall_back_fixed_time() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    let day = "2026-10-25";
    assert_eq!(fires(&spec("30 2 * * *", "Europe/Paris", Shift, First), day, 24), ["2026-10-25 02:30+02:00"]);
    assert_eq!(fires(&spec("30 2 * * *", "Europe/Paris", Shift, Last), day, 24), ["2026-10-25 02:30+01:00"]);
    assert_eq!(
        fires(&spec("30 2 * * *", "Europe/Paris", Shift, Both), day, 24),
        ["2026-10-25 02:30+02:00", "2026-10-25 02:30+01:00"]
    );
}

#[test]
fn paris_interval_schedules_fire_on_real_instants() {
    let expected_spring =
        ["2026-03-29 01:00+01:00", "2026-03-29 01:30+01:00", "2026-03-29 03:00+02:00", "2026-03-29 03:30+02:00"];
    for gap in [Shift, SkipGap] {
        let every = spec("*/30 1-3 * * *", "Europe/Paris", gap, First);
        assert_eq!(fires(&every, "2026-03-29", 24), expected_spring, "{gap:?}: no duplicate at the end of the gap");
    }
    let expected_fall = [
        "2026-10-25 01:00+02:00",
        "2026-10-25 01:30+02:00",
        "2026-10-25 02:00+02:00",
        "2026-10-25 02:30+02:00",
        "2026-10-25 02:00+01:00",
        "2026-10-25 02:30+01:00",
        "2026-10-25 03:00+01:00",
        "2026-10-25 03:30+01:00",
    ];
    for fold in [First, Last, Both] {
        let every = spec("*/30 1-3 * * *", "Europe/Paris", Shift, fold);
        assert_eq!(fires(&every, "2026-10-25", 24), expected_fall, "{fold:?}: both passes, in order");
    }
}

#[test]
fn new_york_spring_forward() {
    // 2026-03-08: 02:00 EST becomes 03:00 EDT.
    assert_eq!(
        fires(&spec("30 2 * * *", "America/New_York", Shift, First), "2026-03-07", 72),
        ["2026-03-07 02:30-05:00", "2026-03-08 03:00-04:00", "2026-03-09 02:30-04:00"]
    );
    assert_eq!(
        fires(&spec("30 2 * * *", "America/New_York", SkipGap, First), "2026-03-07", 72),
        ["2026-03-07 02:30-05:00", "2026-03-09 02:30-04:00"]
    );
    assert_eq!(
        fires(&spec("*/30 1-3 * * *", "America/New_York", Shift, First), "2026-03-08", 24),
        ["2026-03-08 01:00-05:00", "2026-03-08 01:30-05:00", "2026-03-08 03:00-04:00", "2026-03-08 03:30-04:00"]
    );
}

#[test]
fn new_york_fall_back() {
    // 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:00-01:59 happens twice, 02:30 once.
    let day = "2026-11-01";
    assert_eq!(fires(&spec("30 1 * * *", "America/New_York", Shift, First), day, 24), ["2026-11-01 01:30-04:00"]);
    assert_eq!(fires(&spec("30 1 * * *", "America/New_York", Shift, Last), day, 24), ["2026-11-01 01:30-05:00"]);
    assert_eq!(
        fires(&spec("30 1 * * *", "America/New_York", Shift, Both), day, 24),
        ["2026-11-01 01:30-04:00", "2026-11-01 01:30-05:00"]
    );
    assert_eq!(fires(&spec("30 2 * * *", "America/New_York", Shift, Both), day, 24), ["2026-11-01 02:30-05:00"]);
    // The case the `cron` crate returns out of order.
    for fold in [First, Last, Both] {
        assert_eq!(
            fires(&spec("0 */30 0-2 * * *", "America/New_York", Shift, fold), day, 24),
            [
                "2026-11-01 00:00-04:00",
                "2026-11-01 00:30-04:00",
                "2026-11-01 01:00-04:00",
                "2026-11-01 01:30-04:00",
                "2026-11-01 01:00-05:00",
                "2026-11-01 01:30-05:00",
                "2026-11-01 02:00-05:00",
                "2026-11-01 02:30-05:00",
            ],
            "{fold:?}"
        );
    }
}

#[test]
fn lord_howe_half_hour_shifts() {
    // 2026-10-04: 02:00 (+10:30) becomes 02:30 (+11:00); 02:15 does not exist.
    let forward = "2026-10-04";
    assert_eq!(
        fires(&spec("15 2 * * *", "Australia/Lord_Howe", Shift, First), forward, 24),
        ["2026-10-04 02:30+11:00"]
    );
    assert!(fires(&spec("15 2 * * *", "Australia/Lord_Howe", SkipGap, First), forward, 24).is_empty());
    assert_eq!(
        fires(&spec("*/15 1-2 * * *", "Australia/Lord_Howe", Shift, First), forward, 24),
        [
            "2026-10-04 01:00+10:30",
            "2026-10-04 01:15+10:30",
            "2026-10-04 01:30+10:30",
            "2026-10-04 01:45+10:30",
            "2026-10-04 02:30+11:00",
            "2026-10-04 02:45+11:00",
        ]
    );
    // 2026-04-05: 02:00 (+11:00) becomes 01:30 (+10:30); 01:45 happens twice.
    let back = "2026-04-05";
    assert_eq!(fires(&spec("45 1 * * *", "Australia/Lord_Howe", Shift, First), back, 24), ["2026-04-05 01:45+11:00"]);
    assert_eq!(fires(&spec("45 1 * * *", "Australia/Lord_Howe", Shift, Last), back, 24), ["2026-04-05 01:45+10:30"]);
    assert_eq!(
        fires(&spec("45 1 * * *", "Australia/Lord_Howe", Shift, Both), back, 24),
        ["2026-04-05 01:45+11:00", "2026-04-05 01:45+10:30"]
    );
    assert_eq!(
        fires(&spec("*/15 1 * * *", "Australia/Lord_Howe", Shift, First), back, 24),
        [
            "2026-04-05 01:00+11:00",
            "2026-04-05 01:15+11:00",
            "2026-04-05 01:30+11:00",
            "2026-04-05 01:45+11:00",
            "2026-04-05 01:30+10:30",
            "2026-04-05 01:45+10:30",
        ]
    );
}

#[test]
fn weekdays_through_a_time_zone() {
    // 1-5 is Monday to Friday; 0 and 7 are Sunday (2026-11-23 is a Monday).
    let weekdays = spec("0 19 * * 1-5", "Europe/Paris", Shift, First);
    assert_eq!(
        fires(&weekdays, "2026-11-22", 24 * 7),
        [
            "2026-11-23 19:00+01:00",
            "2026-11-24 19:00+01:00",
            "2026-11-25 19:00+01:00",
            "2026-11-26 19:00+01:00",
            "2026-11-27 19:00+01:00",
        ]
    );
    for sunday in ["0 19 * * 0", "0 19 * * 7", "0 19 * * sun"] {
        assert_eq!(
            fires(&spec(sunday, "Europe/Paris", Shift, First), "2026-11-23", 24 * 7),
            ["2026-11-29 19:00+01:00"]
        );
    }
}

fn with(spec: &Arc<Spec>, change: impl FnOnce(&mut Spec)) -> Arc<Spec> {
    let mut copy = Spec::clone(spec);
    change(&mut copy);
    Arc::new(copy)
}

#[test]
fn start_end_and_excluded_dates() {
    let daily = with(&spec("0 19 * * *", "Europe/Paris", Shift, First), |spec| {
        spec.start = NaiveDate::from_ymd_opt(2026, 12, 1);
        spec.end = NaiveDate::from_ymd_opt(2026, 12, 4);
        spec.exclude = vec![NaiveDate::from_ymd_opt(2026, 12, 2).unwrap()];
    });
    let all: Vec<_> = daily.occurrences(midnight("Europe/Paris", "2026-11-24")).collect();
    let days: Vec<(String, Option<Skip>)> =
        all.iter().map(|occurrence| (occurrence.local.date().to_string(), occurrence.skipped)).collect();
    assert_eq!(
        days,
        [
            ("2026-12-01".to_string(), None),
            ("2026-12-02".to_string(), Some(Skip::Excluded)),
            ("2026-12-03".to_string(), None),
            ("2026-12-04".to_string(), None)
        ],
        "nothing before start, nothing after end, the excluded date marked"
    );
}

#[test]
fn one_shot_air_times() {
    let base = spec("0 19 * * *", "Europe/Paris", Shift, First);
    let instant = with(&base, |spec| spec.when = When::Instant(Utc.with_ymd_and_hms(2026, 12, 24, 18, 0, 0).unwrap()));
    let local = with(&base, |spec| {
        spec.when = When::Local(NaiveDate::from_ymd_opt(2026, 12, 24).unwrap().and_hms_opt(19, 0, 0).unwrap())
    });
    for once in [instant, local] {
        let airs: Vec<_> =
            once.occurrences(midnight("Europe/Paris", "2026-11-24")).map(|occurrence| occurrence.air).collect();
        assert_eq!(airs, [Utc.with_ymd_and_hms(2026, 12, 24, 18, 0, 0).unwrap()]);
        assert_eq!(once.occurrences(midnight("Europe/Paris", "2026-12-25")).count(), 0, "past: nothing");
    }
    // A one-shot local time in the gap follows the gap policy too.
    let gap = with(&base, |spec| {
        spec.when = When::Local(NaiveDate::from_ymd_opt(2026, 3, 29).unwrap().and_hms_opt(2, 30, 0).unwrap())
    });
    let airs: Vec<_> =
        gap.occurrences(midnight("Europe/Paris", "2026-03-01")).map(|occurrence| occurrence.air).collect();
    assert_eq!(airs, [Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap()]);
}

#[test]
fn steps_come_from_the_air_time_and_the_leads() {
    let show = with(&spec("0 19 * * *", "Europe/Paris", Shift, First), |spec| {
        spec.duration = TimeDelta::minutes(30);
        spec.lead_channel = TimeDelta::minutes(10);
        spec.lead_scale = TimeDelta::minutes(2);
        spec.post_roll = TimeDelta::minutes(5);
    });
    let occurrence = show.occurrences(midnight("Europe/Paris", "2026-11-24")).next().unwrap();
    assert_eq!(occurrence.id(), "20261124t1800z");
    let steps: Vec<(&str, String)> =
        occurrence.steps(&show).into_iter().map(|(step, at)| (step.name(), at.format("%H:%M").to_string())).collect();
    let expected = [("warmup", "17:50"), ("scale", "17:58"), ("air", "18:00"), ("end", "18:30"), ("cooldown", "18:35")];
    assert_eq!(steps, expected.map(|(step, at)| (step, at.to_string())));
}

/// Every 10 minutes from 00:00 to 02:50, 25 minutes on air: each occurrence overlaps the next two.
fn crowded(overlap: Overlap) -> Arc<Spec> {
    with(&spec("*/10 0-2 * * *", "UTC", Shift, First), |spec| {
        spec.duration = TimeDelta::minutes(25);
        spec.overlap = overlap;
    })
}

#[test]
fn overlapping_occurrences_are_skipped_the_same_way_from_any_start() {
    let schedule = crowded(Overlap::Skip);
    let origin = Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap();
    let reference: Vec<Occurrence> = schedule.occurrences(origin).take(60).collect();
    let on_air: Vec<String> = reference
        .iter()
        .filter(|occurrence| occurrence.skipped.is_none())
        .take(3)
        .map(|occurrence| occurrence.air.format("%H:%M").to_string())
        .collect();
    assert_eq!(on_air, ["00:00", "00:30", "01:00"], "one in three goes on air");
    assert!(matches!(reference[1].skipped, Some(Skip::Overlap { .. })));
    // Started anywhere later (a restart, `onair plan`), the decisions are the same.
    for (index, expected) in reference.iter().enumerate().skip(1).take(50) {
        let resumed: Vec<Occurrence> = schedule.occurrences(expected.air).take(5).collect();
        assert_eq!(&resumed[..], &reference[index..index + 5], "started at occurrence {index}");
    }
}

#[test]
fn end_previous_cuts_the_previous_occurrence_short() {
    let schedule = crowded(Overlap::EndPrevious);
    let origin = Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap();
    let first: Vec<Occurrence> = schedule.occurrences(origin).take(3).collect();
    assert!(first.iter().all(|occurrence| occurrence.skipped.is_none()));
    assert_eq!(first[0].end, first[1].air, "ends when the next goes on air");
    assert_eq!(first[0].ended_by, Some(first[1].air));
    let steps = first[0].steps(&schedule);
    let next_air = first[1].steps(&schedule)[2];
    assert!(steps[3].1 <= next_air.1, "the previous end comes no later than the next air");
}

#[test]
fn a_schedule_that_always_overlaps_itself_is_crowded() {
    let always = with(&spec("*/10 * * * *", "UTC", Shift, First), |spec| spec.duration = TimeDelta::minutes(25));
    let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    assert!(matches!(anchor_before(&always, now), Anchor::Crowded(_)));
    let early = Utc.with_ymd_and_hms(2026, 11, 24, 1, 15, 0).unwrap();
    assert_eq!(
        anchor_before(&crowded(Overlap::Skip), early),
        Anchor::Found(Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap())
    );
    let daily = spec("0 19 * * *", "UTC", Shift, First);
    assert_eq!(anchor_before(&daily, now), Anchor::Nothing);
}

#[test]
fn gap_end_is_the_instant_the_clocks_jump() {
    let paris = spec("30 2 * * *", "Europe/Paris", Shift, First);
    let local = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap().and_hms_opt(2, 30, 0).unwrap();
    assert_eq!(paris.gap_end(local), Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap());
    let lord_howe = spec("15 2 * * *", "Australia/Lord_Howe", Shift, First);
    let local = NaiveDate::from_ymd_opt(2026, 10, 4).unwrap().and_hms_opt(2, 15, 0).unwrap();
    assert_eq!(lord_howe.gap_end(local), Utc.with_ymd_and_hms(2026, 10, 3, 15, 30, 0).unwrap());
}
