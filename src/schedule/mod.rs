//! Schedules: when each broadcast goes on air, and the timed steps around each air time.
//!
//! A broadcast's `[broadcasts.<id>.schedule]` is a cron expression (`cron`: the standard
//! syntax, see `cron.rs`) in an IANA time zone, or a one-shot air time (`at`). From it come
//! *occurrences* (air times) and from each occurrence five *steps*: `warmup` at air minus
//! `lead.channel`, `scale` at air minus `lead.scale`, `air`, `end` at air plus `duration`, and
//! `cooldown` at end plus `post_roll`. The runner (`runner.rs`) publishes each step as an
//! `onair.schedule.fired` event with the id `<broadcast>/<occurrence>/<step>`.
//!
//! Wall-clock times become instants here, with an explicit daylight-saving policy per schedule:
//! - a local time that does not exist (spring forward) fires at the first instant after the gap
//!   (`dst_gap = "shift"`, the default) or not at all (`"skip"`);
//! - a local time that happens twice (fall back) fires once, in the first pass (`dst_fold =
//!   "first"`, the default), in the second (`"last"`) or in both (`"both"`);
//! - schedules that fire at intervals (a `*` leads the minute or hour field) fire at every real
//!   instant that matches, through both passes of a repeated hour, in chronological order.
//!
//! The `cron` crate only ever sees wall-clock (naive) times; the mapping to instants, and so the
//! policy, is ours. Everything here is a pure function of the schedule: where a sequence starts
//! does not change which occurrences fire, so a restart, `onair plan` and `onair check` agree.

mod cron;
pub mod plan;
mod runner;

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

pub use self::cron::CronExpr;
pub use runner::{
    Control, Error as SchedulerError, ExtendError, Extended, Extension, Progress, Scheduler, Sink, Stats,
};

/// What a local time that does not exist (spring forward) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapPolicy {
    /// Fires at the first instant after the gap.
    Shift,
    /// Does not fire.
    Skip,
}

/// What a local time that happens twice (fall back) does, for schedules that are not intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldPolicy {
    /// Fires once, in the first pass.
    First,
    /// Fires once, in the second pass.
    Last,
    /// Fires in both passes.
    Both,
}

/// What happens to steps found late (after downtime, or a wall-clock jump) by more than the
/// scheduler's `misfire_grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// For an occurrence still open, only its latest late step is published; the machine
    /// converges from there. Steps of occurrences already over are missed.
    Latest,
    /// Late steps are missed.
    None,
    /// Late steps within `catch_up_window` are all published, in order; older ones are missed.
    All,
}

/// What happens when an occurrence would go on air while the previous one is still on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The new occurrence is skipped.
    Skip,
    /// The previous occurrence ends when the new one goes on air.
    EndPrevious,
}

/// When the occurrences are.
#[derive(Debug, Clone)]
pub enum When {
    /// Recurring, by a cron expression in the schedule's time zone.
    Cron(Arc<CronExpr>),
    /// Once, at an instant (written with an offset or `Z`).
    Instant(DateTime<Utc>),
    /// Once, at a wall-clock time in the schedule's time zone.
    Local(NaiveDateTime),
}

/// One broadcast's schedule, as configured.
#[derive(Debug, Clone)]
pub struct Spec {
    pub when: When,
    pub timezone: Tz,
    /// How long each occurrence is on air.
    pub duration: TimeDelta,
    /// The first and last local dates with occurrences, inclusive.
    pub start: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
    /// Local dates without occurrences, sorted.
    pub exclude: Vec<NaiveDate>,
    pub dst_gap: GapPolicy,
    pub dst_fold: FoldPolicy,
    pub catch_up: CatchUp,
    pub catch_up_window: TimeDelta,
    pub overlap: Overlap,
    /// Warm-up (channel start) before air.
    pub lead_channel: TimeDelta,
    /// Scale-up before air.
    pub lead_scale: TimeDelta,
    /// Cooldown after the end.
    pub post_roll: TimeDelta,
}

impl Spec {
    /// The barest schedule: no lead, no post-roll, no catch-up window, the first of each choice.
    /// (What `[broadcasts.<id>.schedule]` gives when it sets nothing else is in
    /// `config/default.toml`, `[defaults.schedule]`.)
    pub fn new(when: When, timezone: Tz, duration: TimeDelta) -> Self {
        Self {
            when,
            timezone,
            duration,
            start: None,
            end: None,
            exclude: Vec::new(),
            dst_gap: GapPolicy::Shift,
            dst_fold: FoldPolicy::First,
            catch_up: CatchUp::Latest,
            catch_up_window: TimeDelta::zero(),
            overlap: Overlap::Skip,
            lead_channel: TimeDelta::zero(),
            lead_scale: TimeDelta::zero(),
            post_roll: TimeDelta::zero(),
        }
    }
}

impl PartialEq for Spec {
    fn eq(&self, other: &Self) -> bool {
        let when = match (&self.when, &other.when) {
            (When::Cron(a), When::Cron(b)) => a.source() == b.source(),
            (When::Instant(a), When::Instant(b)) => a == b,
            (When::Local(a), When::Local(b)) => a == b,
            _ => false,
        };
        when && (self.timezone, self.duration, self.start, self.end, &self.exclude)
            == (other.timezone, other.duration, other.start, other.end, &other.exclude)
            && (self.dst_gap, self.dst_fold, self.catch_up, self.catch_up_window, self.overlap)
                == (other.dst_gap, other.dst_fold, other.catch_up, other.catch_up_window, other.overlap)
            && (self.lead_channel, self.lead_scale, self.post_roll)
                == (other.lead_channel, other.lead_scale, other.post_roll)
    }
}

/// How a wall-clock time became (or did not become) an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dst {
    /// The local time exists once.
    Normal,
    /// The local time does not exist (spring forward); fired at the first instant after the gap.
    Shifted,
    /// The local time does not exist and `dst_gap = "skip"`.
    GapSkipped,
    /// The first pass of a repeated local time.
    FirstPass,
    /// The second pass of a repeated local time.
    SecondPass,
}

/// A place in the stream of wall-clock matches: entries are ordered by instant, then by the
/// local time they came from (several gap times map to the same instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Mark {
    at: DateTime<Utc>,
    local: NaiveDateTime,
}

/// One wall-clock match mapped to an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    at: DateTime<Utc>,
    local: NaiveDateTime,
    dst: Dst,
    /// Whether the daylight-saving policy lets it fire.
    fires: bool,
}

impl Entry {
    fn mark(&self) -> Mark {
        Mark { at: self.at, local: self.local }
    }
}

/// The largest shift of a time zone's offset onair plans around; no zone moves its clocks by
/// more than two hours at once.
const DST_REACH: TimeDelta = TimeDelta::hours(3);

impl Spec {
    /// The offset of the schedule's zone at `at`, in seconds east of UTC.
    fn offset(&self, at: DateTime<Utc>) -> i32 {
        self.timezone.offset_from_utc_datetime(&at.naive_utc()).fix().local_minus_utc()
    }

    /// Whether the clocks go back (a repeated hour) between `from` and `to`.
    fn fold_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        self.offset(from) > self.offset(to)
    }

    /// The wall-clock time of `at` in the schedule's zone.
    pub fn local(&self, at: DateTime<Utc>) -> NaiveDateTime {
        at.with_timezone(&self.timezone).naive_local()
    }

    /// The instants of one wall-clock time under the daylight-saving policy (at most two).
    fn expand(&self, local: NaiveDateTime, interval: bool) -> [Option<Entry>; 2] {
        match self.timezone.from_local_datetime(&local) {
            LocalResult::Single(at) => {
                [Some(Entry { at: at.with_timezone(&Utc), local, dst: Dst::Normal, fires: true }), None]
            }
            LocalResult::Ambiguous(first, second) => {
                let (first_fires, second_fires) = if interval {
                    (true, true)
                } else {
                    match self.dst_fold {
                        FoldPolicy::First => (true, false),
                        FoldPolicy::Last => (false, true),
                        FoldPolicy::Both => (true, true),
                    }
                };
                [
                    Some(Entry { at: first.with_timezone(&Utc), local, dst: Dst::FirstPass, fires: first_fires }),
                    Some(Entry { at: second.with_timezone(&Utc), local, dst: Dst::SecondPass, fires: second_fires }),
                ]
            }
            LocalResult::None => {
                let at = self.gap_end(local);
                let (dst, fires) = match self.dst_gap {
                    GapPolicy::Shift => (Dst::Shifted, true),
                    GapPolicy::Skip => (Dst::GapSkipped, false),
                };
                [Some(Entry { at, local, dst, fires }), None]
            }
        }
    }

    /// The first instant after the gap that swallows `local` (the moment the clocks jump).
    fn gap_end(&self, local: NaiveDateTime) -> DateTime<Utc> {
        let as_utc = Utc.from_utc_datetime(&local);
        let before = self.offset(as_utc - TimeDelta::days(1));
        let after = self.offset(as_utc + TimeDelta::days(1));
        // Read with the old offset the time is past the jump; with the new one, before it.
        let (mut low, mut high) =
            (as_utc - TimeDelta::seconds(i64::from(after)), as_utc - TimeDelta::seconds(i64::from(before)));
        if low > high {
            std::mem::swap(&mut low, &mut high);
        }
        // Binary search, to the second, for the first instant with the new offset.
        while high - low > TimeDelta::seconds(1) {
            let middle = low + (high - low) / 2;
            if self.offset(middle) == after { high = middle } else { low = middle }
        }
        if self.offset(low) == after { low } else { high }
    }

    /// The first entry after `after`, whether it fires or not.
    fn next_entry(&self, after: Mark) -> Option<Entry> {
        match &self.when {
            When::Instant(at) => {
                let entry = Entry { at: *at, local: self.local(*at), dst: Dst::Normal, fires: true };
                (entry.mark() > after).then_some(entry)
            }
            When::Local(local) => self.expand(*local, false).into_iter().flatten().find(|entry| entry.mark() > after),
            When::Cron(cron) => self.next_cron_entry(cron, after),
        }
    }

    fn next_cron_entry(&self, cron: &CronExpr, after: Mark) -> Option<Entry> {
        let local_after = self.local(after.at).min(after.local).with_nanosecond(0)?;
        // Near a repeated hour, earlier wall-clock times may map to later instants: look back.
        let near_fold = self.fold_between(after.at - DST_REACH, after.at + DST_REACH);
        let mut from = if near_fold { local_after - DST_REACH } else { local_after - TimeDelta::seconds(1) };
        if let Some(start) = self.start {
            from = from.max(start.and_time(chrono::NaiveTime::MIN) - TimeDelta::seconds(1));
        }
        let mut best: Option<Entry> = None;
        let mut until: Option<NaiveDateTime> = None;
        for local in cron.matches_after(from) {
            if until.is_some_and(|until| local > until) || self.end.is_some_and(|end| local.date() > end) {
                break;
            }
            for entry in self.expand(local, cron.is_interval()).into_iter().flatten() {
                if entry.mark() > after && best.is_none_or(|best| entry.mark() < best.mark()) {
                    best = Some(entry);
                }
            }
            if until.is_none()
                && let Some(found) = best
            {
                // Past a repeated hour, a later wall-clock time can still be an earlier instant.
                until = Some(if self.fold_between(found.at - DST_REACH, found.at + DST_REACH) {
                    local + DST_REACH
                } else {
                    local
                });
            }
        }
        best
    }

    fn excluded(&self, date: NaiveDate) -> bool {
        self.exclude.binary_search(&date).is_ok()
    }

    /// Whether the schedule recurs.
    pub fn recurs(&self) -> bool {
        matches!(self.when, When::Cron(_))
    }

    /// The occurrences whose air time is at or after `from`, in order.
    pub fn occurrences(self: &Arc<Self>, from: DateTime<Utc>) -> Occurrences {
        Occurrences::starting_at(Arc::clone(self), from)
    }
}

// === Occurrences ===

/// Why an occurrence does not go on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its local time does not exist and `dst_gap = "skip"`.
    Gap,
    /// The pass of a repeated local time that `dst_fold` does not fire.
    Fold,
    /// Its local date is excluded or outside the start and end dates.
    Excluded,
    /// Another wall-clock time of the schedule fires at the same instant (a shifted time that
    /// lands on a real one).
    Merged,
    /// It would go on air while the previous occurrence (air time given) is still on air.
    Overlap { previous: DateTime<Utc> },
}

/// One air time of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// The air instant.
    pub air: DateTime<Utc>,
    /// The wall-clock time that the schedule matched (for a shifted time, the time that did not exist).
    pub local: NaiveDateTime,
    pub dst: Dst,
    /// `None` when it goes on air.
    pub skipped: Option<Skip>,
    /// When it goes off air: air plus duration, or earlier when the next one ends it (`end-previous`).
    pub end: DateTime<Utc>,
    /// The next occurrence's air time, when that one ends this one early.
    pub ended_by: Option<DateTime<Utc>>,
    /// The previous occurrence's air time, when its cooldown comes after this one's warm-up
    /// (the channel passes from one to the other).
    pub handover_from: Option<DateTime<Utc>>,
}

/// A step of an occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepKind {
    Warmup,
    Scale,
    Air,
    End,
    Cooldown,
}

impl StepKind {
    pub const ALL: [StepKind; 5] =
        [StepKind::Warmup, StepKind::Scale, StepKind::Air, StepKind::End, StepKind::Cooldown];

    /// The name in events (`event.data.step`).
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Warmup => "warmup",
            StepKind::Scale => "scale",
            StepKind::Air => "air",
            StepKind::End => "end",
            StepKind::Cooldown => "cooldown",
        }
    }

    /// Its order among the steps of one occurrence at the same instant.
    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn from_rank(rank: u8) -> Option<Self> {
        Self::ALL.get(usize::from(rank)).copied()
    }
}

/// The occurrence id: its air instant in UTC to the minute, e.g. `20261124t1800z`. Ids sort in
/// air order, and a schedule fires at most once a minute.
pub fn occurrence_id(air: DateTime<Utc>) -> String {
    crate::machine::expr::format_occurrence(air)
}

impl Occurrence {
    pub fn id(&self) -> String {
        occurrence_id(self.air)
    }

    /// Its steps in order, with their planned instants; empty when it is skipped.
    pub fn steps(&self, spec: &Spec) -> Vec<(StepKind, DateTime<Utc>)> {
        if self.skipped.is_some() {
            return Vec::new();
        }
        vec![
            (StepKind::Warmup, self.air - spec.lead_channel),
            (StepKind::Scale, self.air - spec.lead_scale),
            (StepKind::Air, self.air),
            (StepKind::End, self.end),
            (StepKind::Cooldown, self.end + spec.post_roll),
        ]
    }

    /// The first step's instant (its air time when it is skipped).
    pub fn first_step(&self, spec: &Spec) -> DateTime<Utc> {
        if self.skipped.is_some() { self.air } else { self.air - spec.lead_channel }
    }
}

/// The occurrences of a schedule in air order, with skips, overlaps and early ends decided.
#[derive(Debug, Clone)]
pub struct Occurrences {
    spec: Arc<Spec>,
    mark: Mark,
    /// The last occurrence that goes on air: its air and planned end.
    last: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// Occurrences read ahead (to learn whether the next one ends the current one early): only
    /// with `overlap = "end-previous"`, so boxed (8 bytes per scheduler track, not 32).
    #[allow(clippy::box_collection)] // The box is what keeps the unused case small.
    ahead: Option<Box<std::collections::VecDeque<Occurrence>>>,
    exhausted: bool,
}

/// How far back `starting_at` looks for a known overlap state at most.
pub(crate) const OVERLAP_LOOKBACK: TimeDelta = TimeDelta::days(35);

/// Where the overlap state before an instant can be rebuilt from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// No occurrence could be on air then.
    Nothing,
    /// An occurrence that goes on air for sure: none is on air when it starts.
    Found(DateTime<Utc>),
    /// Every occurrence of the lookback overlaps the one before (duration longer than the
    /// interval, all the time): which go on air depends on where one starts. The first one.
    Crowded(DateTime<Utc>),
}

/// The latest occurrence before `from` that nothing overlaps, for `overlap = "skip"`.
pub(crate) fn anchor_before(spec: &Arc<Spec>, from: DateTime<Utc>) -> Anchor {
    let duration = spec.duration;
    let mut span = (duration * 2).max(TimeDelta::minutes(1));
    loop {
        let since = from - span;
        // Air times that would go on air but for overlaps, in [since, from).
        let mut candidates: Vec<DateTime<Utc>> = Vec::new();
        let mut probe = Occurrences::raw(Arc::clone(spec), since);
        while let Some(entry) = probe.next_entry() {
            if entry.at >= from {
                break;
            }
            if entry.fires && !spec.excluded(entry.local.date()) && candidates.last() != Some(&entry.at) {
                candidates.push(entry.at);
            }
        }
        let Some(first) = candidates.first().copied() else { return Anchor::Nothing };
        let anchor = candidates.iter().enumerate().rev().find(|(index, air)| match index {
            0 => **air - duration >= since,
            _ => candidates[index - 1] + duration <= **air,
        });
        if let Some((_, air)) = anchor {
            return Anchor::Found(*air);
        }
        if span >= OVERLAP_LOOKBACK {
            return Anchor::Crowded(first);
        }
        span = span * 2;
    }
}

impl Occurrences {
    fn raw(spec: Arc<Spec>, from: DateTime<Utc>) -> Self {
        // Just before `from`: entries at `from` itself are included.
        let mark = Mark { at: from - TimeDelta::nanoseconds(1), local: NaiveDateTime::MAX };
        Self { spec, mark, last: None, ahead: None, exhausted: false }
    }

    /// The occurrences with an air time at or after `from`. Whether they overlap earlier ones is
    /// decided as it would be by a sequence started long before: the state is rebuilt from the
    /// latest occurrence before `from` that nothing overlaps.
    pub fn starting_at(spec: Arc<Spec>, from: DateTime<Utc>) -> Self {
        let mut occurrences = Self::raw(Arc::clone(&spec), from);
        if spec.overlap != Overlap::Skip || !spec.recurs() {
            return occurrences;
        }
        // A crowded schedule (see `Anchor::Crowded`) starts from its first candidate; `onair
        // check` refuses such schedules, so this is only a fallback.
        let anchor = match anchor_before(&spec, from) {
            Anchor::Nothing => return occurrences,
            Anchor::Found(anchor) | Anchor::Crowded(anchor) => anchor,
        };
        let mut replay = Self::raw(Arc::clone(&spec), anchor);
        loop {
            let before = replay.last;
            if replay.next_raw().is_none_or(|occurrence| occurrence.air >= from) {
                occurrences.last = before;
                return occurrences;
            }
        }
    }

    fn next_entry(&mut self) -> Option<Entry> {
        if self.exhausted {
            return None;
        }
        let entry = self.spec.next_entry(self.mark);
        match entry {
            Some(entry) => self.mark = entry.mark(),
            None => self.exhausted = true,
        }
        entry
    }

    /// The next occurrence with its skip decided, before early ends.
    fn next_raw(&mut self) -> Option<Occurrence> {
        if let Some(ahead) = self.ahead.as_mut().and_then(|ahead| ahead.pop_front()) {
            if self.ahead.as_ref().is_some_and(|ahead| ahead.is_empty()) {
                self.ahead = None;
            }
            return Some(ahead);
        }
        let entry = self.next_entry()?;
        let spec = &self.spec;
        let planned_end = entry.at + spec.duration;
        let skipped = if !entry.fires {
            Some(if entry.dst == Dst::GapSkipped { Skip::Gap } else { Skip::Fold })
        } else if spec.excluded(entry.local.date()) {
            Some(Skip::Excluded)
        } else if self.last.is_some_and(|(air, _)| air == entry.at) {
            Some(Skip::Merged)
        } else if spec.overlap == Overlap::Skip
            && let Some((previous, _)) = self.last.filter(|(_, end)| entry.at < *end)
        {
            Some(Skip::Overlap { previous })
        } else {
            None
        };
        let handover_from = match (skipped, self.last) {
            (None, Some((previous, end))) if entry.at - spec.lead_channel < end + spec.post_roll => Some(previous),
            _ => None,
        };
        if skipped.is_none() {
            self.last = Some((entry.at, planned_end));
        }
        Some(Occurrence {
            air: entry.at,
            local: entry.local,
            dst: entry.dst,
            skipped,
            end: planned_end,
            ended_by: None,
            handover_from,
        })
    }
}

impl Iterator for Occurrences {
    type Item = Occurrence;

    fn next(&mut self) -> Option<Occurrence> {
        let mut current = self.next_raw()?;
        if self.spec.overlap == Overlap::EndPrevious && current.skipped.is_none() {
            // Read ahead to the next occurrence that goes on air.
            let mut index = 0;
            loop {
                if index == self.ahead.as_ref().map_or(0, |ahead| ahead.len()) {
                    let Some(next) = self.next_raw_uncached() else { break };
                    self.ahead.get_or_insert_with(Default::default).push_back(next);
                }
                let Some(next) = self.ahead.as_ref().and_then(|ahead| ahead.get(index)) else { break };
                if next.skipped.is_none() {
                    if next.air < current.end {
                        current.end = next.air;
                        current.ended_by = Some(next.air);
                    }
                    break;
                }
                index += 1;
            }
        }
        Some(current)
    }
}

impl Occurrences {
    /// `next_raw` without taking from the read-ahead buffer.
    fn next_raw_uncached(&mut self) -> Option<Occurrence> {
        let ahead = std::mem::take(&mut self.ahead);
        let next = self.next_raw();
        self.ahead = ahead;
        next
    }
}

// === Settings ===

/// `[scheduler]`: how the runner fires steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Whether `onair run` fires schedules at all.
    pub enabled: bool,
    /// How late a step may fire and still count as on time; later ones follow the schedule's
    /// catch-up policy.
    pub misfire_grace: std::time::Duration,
    /// The longest the runner sleeps before it looks at the wall clock again.
    pub max_sleep: std::time::Duration,
    /// Missed steps audited one by one per broadcast and pass; the rest are summed up in one row.
    pub audit_missed_limit: usize,
}

impl Settings {
    pub(crate) fn parse(section: &mut crate::config::Section<'_>) -> Self {
        let settings = Self {
            enabled: section.value("enabled"),
            misfire_grace: section.duration("misfire_grace"),
            max_sleep: section.duration("max_sleep"),
            audit_missed_limit: section.value("audit_missed_limit"),
        };
        section.check(
            "max_sleep",
            (std::time::Duration::from_millis(1)..=std::time::Duration::from_secs(1)).contains(&settings.max_sleep),
            "must be between 1ms and 1s (a wall-clock jump is noticed within it)",
        );
        settings
    }
}

/// Parsed cron expressions by their text, so that broadcasts with the same expression share one
/// (a parsed expression takes about 1.3 KB).
pub(crate) type Interned = std::collections::HashMap<String, Arc<CronExpr>>;

/// Parses `[broadcasts.<id>.schedule]`; problems go to the section.
pub(crate) fn parse_spec(section: &mut crate::config::Section<'_>, interned: &mut Interned) -> Option<Spec> {
    let timezone = parse_timezone(section);
    let when = parse_when(section, interned);
    let duration = optional_delta(section, "duration");
    let post_roll = delta(section, "post_roll");
    let (lead_channel, lead_scale) = parse_lead(&mut section.section("lead"));
    let catch_up_window = delta(section, "catch_up_window");
    let dst_gap = choice(section, "dst_gap", &[("shift", GapPolicy::Shift), ("skip", GapPolicy::Skip)]);
    let dst_fold = choice(
        section,
        "dst_fold",
        &[("first", FoldPolicy::First), ("last", FoldPolicy::Last), ("both", FoldPolicy::Both)],
    );
    let catch_up =
        choice(section, "catch_up", &[("latest", CatchUp::Latest), ("none", CatchUp::None), ("all", CatchUp::All)]);
    let overlap = choice(section, "overlap", &[("skip", Overlap::Skip), ("end-previous", Overlap::EndPrevious)]);
    let (start, end, exclude) = parse_dates(section, when.as_ref());
    let Some(duration) = duration else {
        section.problem("duration", "missing: how long each occurrence is on air, like \"30m\"");
        return None;
    };
    if duration < TimeDelta::seconds(1) {
        section.problem("duration", "must be at least 1s");
    }
    Some(Spec {
        when: when?,
        timezone: timezone?,
        duration,
        start,
        end,
        exclude,
        dst_gap: dst_gap?,
        dst_fold: dst_fold?,
        catch_up: catch_up?,
        catch_up_window: catch_up_window?,
        overlap: overlap?,
        lead_channel: lead_channel?,
        lead_scale: lead_scale?,
        post_roll: post_roll?,
    })
}

/// `timezone`: an IANA name.
fn parse_timezone(section: &mut crate::config::Section<'_>) -> Option<Tz> {
    let timezone_name: String = section.value("timezone");
    match Tz::from_str(&timezone_name) {
        Ok(timezone) => Some(timezone),
        Err(_) => {
            section.problem(
                "timezone",
                format!(
                    "unknown time zone {timezone_name:?}; use an IANA name such as Europe/Paris or America/New_York"
                ),
            );
            None
        }
    }
}

/// `cron` (recurring; parsed expressions shared through `interned`) or `at` (one-shot).
fn parse_when(section: &mut crate::config::Section<'_>, interned: &mut Interned) -> Option<When> {
    let cron: Option<String> = section.optional("cron");
    let at: Option<String> = section.optional("at");
    match (cron, at) {
        (Some(_), Some(_)) => {
            section.problem("at", "give either cron (recurring) or at (one-shot), not both");
            None
        }
        (None, None) => {
            section.problem("cron", "missing: a schedule needs cron (recurring) or at (one-shot)");
            None
        }
        (Some(text), None) => match interned.get(&text) {
            Some(cron) => Some(When::Cron(Arc::clone(cron))),
            None => match CronExpr::parse(&text) {
                Ok(cron) => {
                    let cron = Arc::new(cron);
                    interned.insert(text, Arc::clone(&cron));
                    Some(When::Cron(cron))
                }
                Err(reason) => {
                    section.problem("cron", format!("invalid cron expression {text:?}: {reason}"));
                    None
                }
            },
        },
        (None, Some(text)) => parse_at(&text).or_else(|| {
            section.problem(
                "at",
                format!("invalid air time {text:?}; write 2026-12-24T19:00:00 (local) or 2026-12-24T18:00:00Z"),
            );
            None
        }),
    }
}

/// `lead = { channel, scale }`: the warm-up and the scale-up before air.
fn parse_lead(lead: &mut crate::config::Section<'_>) -> (Option<TimeDelta>, Option<TimeDelta>) {
    let channel = delta(lead, "channel");
    let scale = delta(lead, "scale");
    if let (Some(channel), Some(scale)) = (channel, scale)
        && scale > channel
    {
        lead.problem("scale", "must not be longer than lead.channel (the channel starts first)");
    }
    (channel, scale)
}

/// `start`, `end` and `exclude`: the local dates a recurring schedule runs on.
fn parse_dates(
    section: &mut crate::config::Section<'_>,
    when: Option<&When>,
) -> (Option<NaiveDate>, Option<NaiveDate>, Vec<NaiveDate>) {
    let start = date(section, "start");
    let end = date(section, "end");
    if let (Some(start), Some(end)) = (start, end)
        && end < start
    {
        section.problem("end", format!("{end} is before start ({start})"));
    }
    let mut exclude = Vec::new();
    for text in section.optional::<Vec<String>>("exclude").unwrap_or_default() {
        match NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
            Ok(date) => exclude.push(date),
            Err(_) => section.problem("exclude", format!("{text:?} is not a date like 2026-12-25")),
        }
    }
    exclude.sort_unstable();
    exclude.dedup();
    if !matches!(when, Some(When::Cron(_)) | None) && (start.is_some() || end.is_some() || !exclude.is_empty()) {
        section.problem("at", "start, end and exclude apply to recurring (cron) schedules only");
    }
    (start, end, exclude)
}

fn parse_at(text: &str) -> Option<When> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(When::Instant(truncate_ms(at.with_timezone(&Utc))));
    }
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(When::Local)
}

fn truncate_ms(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// A duration setting, to the millisecond, which `[defaults.schedule]` always provides.
fn delta(section: &mut crate::config::Section<'_>, key: &str) -> Option<TimeDelta> {
    let delta = optional_delta(section, key);
    section.check(key, delta.is_some(), "missing");
    delta
}

/// A duration setting, to the millisecond, or `None` when absent (or unusable: a problem then).
fn optional_delta(section: &mut crate::config::Section<'_>, key: &str) -> Option<TimeDelta> {
    let text = section.optional::<String>(key)?;
    match humantime::parse_duration(&text) {
        Ok(duration) => TimeDelta::from_std(duration)
            .ok()
            .and_then(|delta| TimeDelta::try_milliseconds(delta.num_milliseconds()))
            .filter(|delta| *delta <= TimeDelta::days(366)),
        Err(_) => None,
    }
    .or_else(|| {
        section.problem(key, format!("invalid duration {text:?}; write it like \"30m\", \"90s\" or \"1h 30m\""));
        None
    })
}

fn choice<T: Copy>(section: &mut crate::config::Section<'_>, key: &str, options: &[(&str, T)]) -> Option<T> {
    let text: String = section.value(key);
    options.iter().find(|(name, _)| *name == text).map(|(_, value)| *value).or_else(|| {
        let names: Vec<String> = options.iter().map(|(name, _)| format!("{name:?}")).collect();
        section.problem(key, format!("{text:?} is not one of {}", names.join(", ")));
        None
    })
}

fn date(section: &mut crate::config::Section<'_>, key: &str) -> Option<NaiveDate> {
    let text: String = section.optional(key)?;
    NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok().or_else(|| {
        section.problem(key, format!("{text:?} is not a date like 2026-12-01"));
        None
    })
}

/// A local time written the way `onair plan` prints it, with the zone's abbreviation.
pub fn format_local(spec: &Spec, at: DateTime<Utc>) -> String {
    let local = at.with_timezone(&spec.timezone);
    let millis = local.timestamp_subsec_millis();
    let base = local.format("%Y-%m-%d %H:%M:%S");
    if millis == 0 {
        format!("{base} {}", local.format("%Z"))
    } else {
        format!("{base}.{millis:03} {}", local.format("%Z"))
    }
}

#[cfg(test)]
mod tests;
