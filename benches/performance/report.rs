//! What one run of the performance benchmark measured: a row per figure of the design's table
//! (measured, bar, goal, the reference measured in the same run), and the series the charts draw.
//! Printed as a table, written as JSON.

use serde::Serialize;

/// A target a figure is held to.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The figure must be at least this.
    AtLeast(f64),
    /// The figure must be at most this.
    AtMost(f64),
}

impl Target {
    pub fn met(self, measured: f64) -> bool {
        match self {
            Target::AtLeast(bound) => measured >= bound,
            Target::AtMost(bound) => measured <= bound,
        }
    }

    fn label(self, unit: &str) -> String {
        match self {
            Target::AtLeast(bound) => format!(">= {} {unit}", trim(bound)),
            Target::AtMost(bound) => format!("< {} {unit}", trim(bound)),
        }
    }
}

/// One figure.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// A stable key for the JSON (`throughput_ratio_10`, `rss_configured_100k`, ...).
    pub key: String,
    /// What is measured, as the table says it.
    pub figure: String,
    pub measured: f64,
    pub unit: String,
    pub bar: Option<Target>,
    pub goal: Option<Target>,
    /// The reference measured in the same run, or how the figure was obtained ("bare loop
    /// 67,512 ev/s").
    pub reference: String,
}

impl Row {
    pub fn new(key: &str, figure: &str, measured: f64, unit: &str) -> Self {
        Self {
            key: key.into(),
            figure: figure.into(),
            measured,
            unit: unit.into(),
            bar: None,
            goal: None,
            reference: String::new(),
        }
    }

    pub fn bar(mut self, bar: Target) -> Self {
        self.bar = Some(bar);
        self
    }

    pub fn goal(mut self, goal: Target) -> Self {
        self.goal = Some(goal);
        self
    }

    pub fn reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = reference.into();
        self
    }

    /// Against the bar, then the goal: `goal met`, `bar met`, `MISSED` (the bar), `goal missed`
    /// (a figure with a goal only), or `-` (neither).
    pub fn verdict(&self) -> &'static str {
        let goal_met = self.goal.map(|goal| goal.met(self.measured));
        match (self.bar.map(|bar| bar.met(self.measured)), goal_met) {
            (Some(false), _) => "MISSED",
            (_, Some(true)) => "goal met",
            (Some(true), _) => "bar met",
            (None, Some(false)) => "goal missed",
            (None, None) => "-",
        }
    }
}

/// One point of the throughput chart.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// `onair` or `bare loop`.
    pub side: String,
    pub broadcasts: usize,
    pub prefetch: u16,
    pub events_per_second: f64,
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// When the run started (UTC).
    pub date: String,
    /// CPU model, cores, memory.
    pub machine: String,
    /// `ONAIR_BENCH_SCALE` (1 for the docs' figures).
    pub scale: f64,
    pub rows: Vec<Row>,
    pub throughput: Vec<Throughput>,
    /// Schedule lateness of every fired step (ms), with 100,000 armed schedules.
    pub lateness_ms: Vec<f64>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        println!(
            "  {}: {} {}  (bar {})",
            row.figure,
            trim(row.measured),
            row.unit,
            row.bar.map_or("-".into(), |bar| bar.label(&row.unit))
        );
        self.rows.push(row);
    }

    /// The table, as printed at the end of a run (and pasted into docs/performance.md).
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| figure | measured | bar | goal | met | reference (same run) |\n|---|---|---|---|---|---|\n",
        );
        for row in &self.rows {
            out.push_str(&format!(
                "| {} | {} {} | {} | {} | {} | {} |\n",
                row.figure,
                trim(row.measured),
                row.unit,
                row.bar.map_or("-".into(), |bar| bar.label(&row.unit)),
                row.goal.map_or("-".into(), |goal| goal.label(&row.unit)),
                row.verdict(),
                row.reference
            ));
        }
        out
    }
}

/// A figure as people write it: no trailing zeros, at most two decimals below 100.
pub fn trim(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}
