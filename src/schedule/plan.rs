//! The plan (`onair plan`: the coming steps, in UTC and local time, with daylight-saving shifts,
//! skips and overlaps marked) and the schedule checks of `onair check`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::{
    Anchor, Dst, Occurrence, Skip, Spec, StepKind, When, anchor_before, format_local, occurrence_id, runner::stamp,
};
use crate::store::ScheduleHold;

/// What the plan and the checks need of one scheduled broadcast.
#[derive(Debug, Clone, Copy)]
pub struct Scheduled<'a> {
    /// The broadcast's id.
    pub id: &'a str,
    /// Its channel: two broadcasts on one channel must not be on air at once.
    pub channel: &'a str,
    /// Its schedule.
    pub spec: &'a Arc<Spec>,
}

/// One line of the plan: a step, or an occurrence that does not go on air.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub broadcast: String,
    pub occurrence: String,
    /// `None` for an occurrence that does not go on air.
    pub step: Option<&'static str>,
    /// The planned instant (for a skipped occurrence, its air time).
    #[serde(serialize_with = "serialize_stamp")]
    pub planned: DateTime<Utc>,
    /// The same instant in the broadcast's time zone.
    pub local: String,
    pub timezone: String,
    /// DST shifts, skips, overlaps and handovers, in words; empty when there is nothing to say.
    pub note: String,
}

fn serialize_stamp<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&stamp(*at))
}

/// The steps of every scheduled broadcast (or only `only`) planned in `[from, from + hours)`.
pub fn plan(scheduled: &[Scheduled<'_>], only: Option<&str>, from: DateTime<Utc>, hours: u32) -> Vec<Row> {
    plan_with(scheduled, only, from, hours, &[])
}

/// The plan with the schedule holds (`store::ScheduleHold`): a held occurrence shows its own
/// step instants (an extended end, the times of a schedule since changed) in place of what its
/// schedule generates, and an occurrence that would be on air with it is shown skipped, as the
/// scheduler does. A broadcast no longer scheduled shows what it holds.
pub fn plan_with(
    scheduled: &[Scheduled<'_>],
    only: Option<&str>,
    from: DateTime<Utc>,
    hours: u32,
    holds: &[ScheduleHold],
) -> Vec<Row> {
    let to = from.checked_add_signed(TimeDelta::hours(i64::from(hours))).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let in_window = |row: &Row| row.planned >= from && row.planned < to;
    let mut rows = Vec::new();
    for &Scheduled { id, spec, .. } in scheduled {
        if only.is_some_and(|only| only != id) {
            continue;
        }
        let held: Vec<&ScheduleHold> = holds.iter().filter(|hold| hold.broadcast == id).collect();
        // Occurrences that started earlier may still have steps in the window.
        for mut occurrence in spec.occurrences(from - spec.duration - spec.post_roll) {
            if occurrence.first_step(spec) >= to {
                break;
            }
            if let Some(hold) = held.iter().find(|hold| hold.air == occurrence.air) {
                rows.extend(held_rows(id, spec, hold, Some(&occurrence)).into_iter().filter(in_window));
                continue;
            }
            if occurrence.skipped.is_none()
                && let Some(hold) = held.iter().find(|hold| {
                    let end = hold.step(StepKind::End.rank()).unwrap_or(hold.air);
                    occurrence.air < end && hold.air < occurrence.end
                })
            {
                occurrence.skipped = Some(Skip::Overlap { previous: hold.air });
                let note = format!(
                    "skipped: {} is held on air until {}",
                    occurrence_id(hold.air),
                    format_local(spec, hold.step(StepKind::End.rank()).unwrap_or(hold.air))
                );
                let mut skipped = occurrence_rows(id, spec, &occurrence);
                skipped.iter_mut().for_each(|row| row.note = note.clone());
                rows.extend(skipped.into_iter().filter(in_window));
                continue;
            }
            rows.extend(occurrence_rows(id, spec, &occurrence).into_iter().filter(in_window));
        }
        // Held occurrences the schedule does not generate (any more).
        for hold in held {
            let generated = spec.occurrences(hold.air).next().is_some_and(|occurrence| occurrence.air == hold.air);
            if !generated && hold.steps.iter().any(|step| step.at >= from) {
                rows.extend(held_rows(id, spec, hold, None).into_iter().filter(in_window));
            }
        }
    }
    // Broadcasts no longer scheduled: what they hold.
    let utc = Spec::new(When::Instant(from), chrono_tz::UTC, TimeDelta::zero());
    for hold in holds {
        let listed = scheduled.iter().any(|entry| entry.id == hold.broadcast);
        if !listed && only.is_none_or(|only| only == hold.broadcast) {
            rows.extend(held_rows(&hold.broadcast, &utc, hold, None).into_iter().filter(in_window));
        }
    }
    rows.sort_by(|a, b| (a.planned, &a.broadcast, &a.occurrence).cmp(&(b.planned, &b.broadcast, &b.occurrence)));
    rows
}

/// The next step of one broadcast's schedule at or after `now` (skipped occurrences passed over).
pub fn next_step(broadcast: &str, spec: &Arc<Spec>, now: DateTime<Utc>) -> Option<Row> {
    spec.occurrences(now - spec.duration - spec.post_roll)
        .take(1000)
        .flat_map(|occurrence| occurrence_rows(broadcast, spec, &occurrence))
        .find(|row| row.step.is_some() && row.planned >= now)
}

/// The rows of a held occurrence: its own instants, each moved one saying from where.
fn held_rows(broadcast: &str, spec: &Spec, hold: &ScheduleHold, generated: Option<&Occurrence>) -> Vec<Row> {
    let planned = generated.map(|occurrence| occurrence.steps(spec)).unwrap_or_default();
    hold.steps
        .iter()
        .filter_map(|step| {
            let kind = StepKind::from_rank(step.rank)?;
            let was = planned.iter().find(|(other, _)| *other == kind).map(|(_, at)| *at);
            let note = match was {
                Some(was) if was != step.at => format!("held: moved from {}", format_local(spec, was)),
                Some(_) => "held".to_string(),
                None => "held: kept from the schedule before a change".to_string(),
            };
            Some(Row {
                broadcast: broadcast.to_string(),
                occurrence: occurrence_id(hold.air),
                step: Some(kind.name()),
                planned: step.at,
                local: format_local(spec, step.at),
                timezone: spec.timezone.name().to_string(),
                note,
            })
        })
        .collect()
}

fn occurrence_rows(broadcast: &str, spec: &Spec, occurrence: &Occurrence) -> Vec<Row> {
    let row = |step: Option<StepKind>, planned: DateTime<Utc>, note: String| Row {
        broadcast: broadcast.to_string(),
        occurrence: occurrence.id(),
        step: step.map(StepKind::name),
        planned,
        local: format_local(spec, planned),
        timezone: spec.timezone.name().to_string(),
        note,
    };
    let wall = occurrence.local.format("%H:%M:%S").to_string();
    if let Some(skip) = occurrence.skipped {
        let note = match skip {
            Skip::Gap => format!("skipped: {wall} does not exist on that day (DST gap; dst_gap = \"skip\")"),
            Skip::Fold => {
                let pass = if occurrence.dst == Dst::FirstPass { "first" } else { "second" };
                format!("skipped: {pass} pass of the repeated {wall} (DST fold; dst_fold)")
            }
            Skip::Excluded => "skipped: excluded date".to_string(),
            Skip::Merged => format!("skipped: {wall} lands on the same instant as another occurrence"),
            Skip::Overlap { previous } => format!(
                "skipped: {} is still on air until {} (overlap = \"skip\")",
                occurrence_id(previous),
                format_local(spec, previous + spec.duration)
            ),
        };
        return vec![row(None, occurrence.air, note)];
    }
    occurrence
        .steps(spec)
        .into_iter()
        .map(|(step, planned)| {
            let note = match step {
                StepKind::Air => match occurrence.dst {
                    Dst::Shifted => format!("DST: {wall} does not exist that day; shifted to the end of the gap"),
                    Dst::FirstPass => format!("DST: {wall} happens twice; first pass"),
                    Dst::SecondPass => format!("DST: {wall} happens twice; second pass"),
                    Dst::Normal | Dst::GapSkipped => String::new(),
                },
                StepKind::Warmup => occurrence
                    .handover_from
                    .map(|previous| format!("channel handed over from {}", occurrence_id(previous)))
                    .unwrap_or_default(),
                StepKind::End => occurrence
                    .ended_by
                    .map(|next| format!("ends early: {} goes on air (overlap = \"end-previous\")", occurrence_id(next)))
                    .unwrap_or_default(),
                StepKind::Scale | StepKind::Cooldown => String::new(),
            };
            row(Some(step), planned, note)
        })
        .collect()
}

/// The plan as a table.
pub fn render(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "nothing planned in this window\n".to_string();
    }
    let headers = ["UTC", "LOCAL", "BROADCAST", "OCCURRENCE", "STEP", "NOTE"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|row| {
            [
                stamp(row.planned),
                row.local.clone(),
                row.broadcast.clone(),
                row.occurrence.clone(),
                row.step.unwrap_or("-").to_string(),
                row.note.clone(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        let text: Vec<String> = cells.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(headers);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
    out
}

// === Checks ===

/// How far ahead the checks look.
const CHECK_HORIZON: TimeDelta = TimeDelta::days(366);
/// Occurrences per schedule the checks look at, at most.
const CHECK_OCCURRENCES: usize = 1000;

/// Schedule problems that only show over time: a lead time longer than the gap between two
/// occurrences, and two broadcasts on one channel at the same time. Each names the broadcast(s).
pub fn problems(scheduled: &[Scheduled<'_>], now: DateTime<Utc>) -> Vec<String> {
    let mut problems = Vec::new();
    // Windows (warm-up to cooldown) per broadcast, for the channel check.
    let mut windows: BTreeMap<&str, Vec<Window>> = BTreeMap::new();
    // Broadcasts with the same schedule share the answer.
    let mut gaps: HashMap<String, Option<Gap>> = HashMap::new();
    // Only broadcasts sharing a channel can clash on it.
    let mut on_channel: HashMap<&str, usize> = HashMap::new();
    for &Scheduled { channel, .. } in scheduled {
        *on_channel.entry(channel).or_default() += 1;
    }
    for &Scheduled { id, channel, spec } in scheduled {
        if let When::Cron(cron) = &spec.when
            && cron.next_after(spec.local(now)).is_none()
        {
            problems.push(format!(
                "broadcasts.{id}.schedule.cron: {:?} matches no date on the calendar (such as February 30), so this \
                 broadcast can never go on air; check the day of month against the month (February has 28 or 29 \
                 days; April, June, September and November have 30)",
                cron.source(),
            ));
            continue;
        }
        let shares_channel = on_channel.get(channel).is_some_and(|count| *count > 1);
        if !shares_channel && spaced(spec, now) {
            continue;
        }
        let occurrences: Vec<Occurrence> = horizon(spec, now);
        if let When::Cron(cron) = &spec.when {
            let key =
                format!("{}|{:?}|{:?}|{:?}|{:?}", cron.source(), spec.timezone, spec.start, spec.end, spec.exclude);
            let key = format!("{key}|{:?}|{:?}|{:?}", spec.dst_gap, spec.dst_fold, spec.duration);
            let smallest = *gaps.entry(key).or_insert_with(|| smallest_gap(&occurrences));
            if let Some((gap, first, second)) = smallest
                && spec.lead_channel > gap
            {
                problems.push(format!(
                    "broadcasts.{id}.schedule.lead.channel: {} is longer than the {} between occurrences {} and {}; \
                     a warm-up would come before the previous air time",
                    humanize(spec.lead_channel),
                    humanize(gap),
                    occurrence_id(first),
                    occurrence_id(second),
                ));
            }
        }
        if let Some(overlapped) =
            occurrences.iter().find(|occurrence| matches!(occurrence.skipped, Some(Skip::Overlap { .. })))
            && matches!(anchor_before(spec, overlapped.air), Anchor::Crowded(_))
        {
            problems.push(format!(
                "broadcasts.{id}.schedule.duration: {} is longer than the time between occurrences, all the time \
                 (in the {} days before {} no occurrence starts with nothing on air); which ones go on air would \
                 depend on when onair started: shorten the duration or space the occurrences",
                humanize(spec.duration),
                super::OVERLAP_LOOKBACK.num_days(),
                occurrence_id(overlapped.air),
            ));
        }
        if !shares_channel {
            continue;
        }
        windows.insert(
            id,
            occurrences
                .iter()
                .filter(|occurrence| occurrence.skipped.is_none())
                .map(|occurrence| (occurrence.air - spec.lead_channel, occurrence.end + spec.post_roll, occurrence.air))
                .collect(),
        );
    }
    problems.extend(channel_clashes(scheduled, &windows));
    problems
}

/// Two broadcasts on one channel whose windows (warm-up to cooldown) overlap: the first clash
/// of each pair.
fn channel_clashes(scheduled: &[Scheduled<'_>], windows: &BTreeMap<&str, Vec<Window>>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_channel: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for &Scheduled { id, channel, .. } in scheduled {
        if windows.contains_key(id) {
            by_channel.entry(channel).or_default().push(id);
        }
    }
    for (channel, ids) in by_channel {
        for (index, first) in ids.iter().enumerate() {
            for second in &ids[index + 1..] {
                if let Some((a, b)) = first_clash(&windows[first], &windows[second]) {
                    problems.push(format!(
                        "broadcasts.{first} and broadcasts.{second}: both use channel {channel:?} at the same time \
                         ({first} {} from {} to {}, {second} {} from {} to {}); give one its own channel or move it",
                        occurrence_id(a.2),
                        stamp(a.0),
                        stamp(a.1),
                        occurrence_id(b.2),
                        stamp(b.0),
                        stamp(b.1),
                    ));
                }
            }
        }
    }
    problems
}

/// How much daylight saving (or any offset change in the time zone database) can shorten the
/// real time between two wall-clock times: two hours at most today (Antarctica/Troll), with room.
const OFFSET_CHANGE_MARGIN: TimeDelta = TimeDelta::hours(3);

/// Times of day a cron expression may match before `spaced` gives up and the year is walked.
const SPACED_MAX_TIMES: usize = 48;

/// Whether `spec`'s occurrences are surely far enough apart that neither year check can find
/// anything: no warm-up before the previous air time (`lead.channel` no longer than any gap), no
/// occurrence overlapping the previous one (`duration` no longer than any gap). Found from the
/// times of day the expression matches, which are the same on every day it matches, so the
/// year need not be walked; a schedule that fires through both passes of a repeated hour, or
/// matches many times a day, is walked.
pub(crate) fn spaced(spec: &Spec, now: DateTime<Utc>) -> bool {
    let When::Cron(cron) = &spec.when else { return false };
    if cron.is_interval() || spec.dst_fold == super::FoldPolicy::Both {
        return false;
    }
    let Some(least) = least_wall_gap(cron, spec.local(now)) else { return false };
    let bound = least - OFFSET_CHANGE_MARGIN;
    spec.lead_channel <= bound && spec.duration <= bound
}

/// The least wall-clock time between two matches of `cron`: between its times of day, or from
/// its last time of day to its first on the next day. `None` when it matches no date after
/// `from`, or more than `SPACED_MAX_TIMES` times a day.
fn least_wall_gap(cron: &super::CronExpr, from: chrono::NaiveDateTime) -> Option<TimeDelta> {
    let day = cron.next_after(from)?.date();
    let mut cursor = day.and_hms_opt(0, 0, 0)? - TimeDelta::seconds(1);
    let mut times = Vec::new();
    while let Some(next) = cron.next_after(cursor).filter(|next| next.date() == day) {
        if times.len() == SPACED_MAX_TIMES {
            return None;
        }
        times.push(next);
        cursor = next;
    }
    let (first, last) = (times.first()?, times.last()?);
    let across = TimeDelta::days(1) - (*last - *first);
    Some(times.windows(2).map(|pair| pair[1] - pair[0]).fold(across, TimeDelta::min))
}

fn horizon(spec: &Arc<Spec>, now: DateTime<Utc>) -> Vec<Occurrence> {
    spec.occurrences(now)
        .take_while(|occurrence| occurrence.air < now + CHECK_HORIZON)
        .take(CHECK_OCCURRENCES)
        .collect()
}

/// The smallest gap between two consecutive air times that go on air, and which.
fn smallest_gap(occurrences: &[Occurrence]) -> Option<Gap> {
    let airs: Vec<DateTime<Utc>> =
        occurrences.iter().filter(|occurrence| occurrence.skipped.is_none()).map(|occurrence| occurrence.air).collect();
    airs.windows(2).map(|pair| (pair[1] - pair[0], pair[0], pair[1])).min_by_key(|(gap, _, _)| *gap)
}

/// When an occurrence holds its channel: warm-up, cooldown, and its air time (to name it).
type Window = (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);

/// A gap between two consecutive air times: its length, and the two air times.
type Gap = (TimeDelta, DateTime<Utc>, DateTime<Utc>);

/// The first pair of windows (both sorted) that intersect.
fn first_clash(a: &[Window], b: &[Window]) -> Option<(Window, Window)> {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].0 < b[j].1 && b[j].0 < a[i].1 {
            return Some((a[i], b[j]));
        }
        if a[i].1 <= b[j].1 { i += 1 } else { j += 1 }
    }
    None
}

fn humanize(delta: TimeDelta) -> String {
    humantime::format_duration(delta.to_std().unwrap_or_default()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{CronExpr, FoldPolicy, GapPolicy};

    /// `spaced` is a shortcut: wherever it says a schedule cannot trouble the year checks, the
    /// year walked from several instants (across the 2026 transitions of three time zones)
    /// finds no gap shorter than the warm-up and no overlap; and it does not claim the
    /// schedules that do have such problems.
    #[test]
    fn a_spaced_schedule_has_no_year_problem_and_troubled_ones_are_walked() {
        let expressions = [
            "30 19 * * *",
            "0 2 * * *",
            "30 2 * * *",
            "0 1 * * *",
            "0 8,20 * * *",
            "0 0,23 * * *",
            "15 9 * * 1-5",
            "0 12 1 * *",
            "0 12 29 2 *",
            "0 12 13 * 5",
            "0 0 */2 * *",
            "0 9-17/4 * * *",
            "45 23 * * 0",
        ];
        let zones = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC"];
        let leads = [TimeDelta::minutes(10), TimeDelta::hours(10), TimeDelta::hours(21), TimeDelta::hours(23)];
        let durations = [TimeDelta::minutes(30), TimeDelta::hours(11), TimeDelta::hours(22), TimeDelta::hours(26)];
        let starts = ["2026-01-15T00:00:00Z", "2026-03-28T12:00:00Z", "2026-10-24T12:00:00Z"];
        let (mut shortcut, mut walked, mut troubled) = (0, 0, 0);
        for expression in expressions {
            let cron = Arc::new(CronExpr::parse(expression).unwrap());
            for zone in zones {
                for fold in [FoldPolicy::First, FoldPolicy::Last, FoldPolicy::Both] {
                    for (lead, duration) in leads.iter().zip(durations.iter().rev()).chain(leads.iter().zip(&durations))
                    {
                        let mut spec = Spec::new(When::Cron(Arc::clone(&cron)), zone.parse().unwrap(), *duration);
                        (spec.dst_gap, spec.dst_fold, spec.lead_channel) = (GapPolicy::Shift, fold, *lead);
                        let spec = Arc::new(spec);
                        for start in starts {
                            let now: DateTime<Utc> = start.parse().unwrap();
                            let occurrences = horizon(&spec, now);
                            let gap_problem =
                                smallest_gap(&occurrences).is_some_and(|(gap, _, _)| spec.lead_channel > gap);
                            let overlap = occurrences
                                .iter()
                                .any(|occurrence| matches!(occurrence.skipped, Some(Skip::Overlap { .. })));
                            if spaced(&spec, now) {
                                shortcut += 1;
                                assert!(
                                    !gap_problem && !overlap,
                                    "{expression} in {zone} ({fold:?}, lead {lead}, duration {duration}) from {start}"
                                );
                            } else {
                                walked += 1;
                            }
                            troubled += usize::from(gap_problem || overlap);
                        }
                    }
                }
            }
        }
        assert!(shortcut > 500 && walked > 1000 && troubled > 500, "{shortcut} {walked} {troubled}");
    }

    /// Broadcasts alone on their channel are not walked, yet each one's problems are still found,
    /// and two broadcasts on one channel are still checked against each other.
    #[test]
    fn problems_are_found_with_the_shortcut_for_three_broadcasts() {
        let now: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().unwrap();
        let daily = |expression: &str, lead: TimeDelta, duration: TimeDelta| {
            let cron = Arc::new(CronExpr::parse(expression).unwrap());
            let mut spec = Spec::new(When::Cron(cron), chrono_tz::Europe::Paris, duration);
            spec.lead_channel = lead;
            Arc::new(spec)
        };
        let spaced_alone = daily("0 19 * * *", TimeDelta::minutes(10), TimeDelta::hours(1));
        let lead_too_long = daily("0 8,20 * * *", TimeDelta::hours(13), TimeDelta::hours(1));
        let same_channel = daily("30 19 * * *", TimeDelta::minutes(10), TimeDelta::hours(1));
        let scheduled = [
            Scheduled { id: "news", channel: "news", spec: &spaced_alone },
            Scheduled { id: "sport", channel: "sport", spec: &lead_too_long },
            Scheduled { id: "late", channel: "news", spec: &same_channel },
        ];
        let found = problems(&scheduled, now);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(
            found[0].starts_with("broadcasts.sport.schedule.lead.channel: 13h is longer than the 11h"),
            "{found:#?}"
        );
        assert!(found[1].starts_with("broadcasts.news and broadcasts.late: both use channel \"news\""), "{found:#?}");
        let alone = [scheduled[0], Scheduled { id: "late", channel: "late", spec: &same_channel }];
        assert!(problems(&alone, now).is_empty());
    }
}
