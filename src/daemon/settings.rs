//! The composition of the daemon's settings: which section each module parses. The loader
//! (`config`) knows no module; this is the one place that names them all.
//!
//! `[emulator]` belongs to the emulator, which the daemon does not run: it is left to
//! `emulator::Settings::load` (the `emulator` and `demo` commands, and `onair check`).

use crate::config::{self, Error, Section, Source};

/// Every setting the daemon has, typed per module.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[shutdown]`
    pub shutdown: crate::shutdown::Settings,
    /// `[media]`
    pub media: crate::media::Settings,
    /// `[engine]`, `[broadcasts.<id>]` and `[content_key_policies.<name>]`
    pub engine: crate::engine::Settings,
    /// `[broker]`
    pub broker: crate::broker::Settings,
    /// `[scheduler]` (the schedules themselves are `[broadcasts.<id>.schedule]`)
    pub scheduler: crate::schedule::Settings,
    /// `[ingress]`: the webhook listener
    pub ingress: crate::ingress::Settings,
    /// `[http]`: the operations listener (probes, metrics, API, dashboard)
    pub http: crate::http::Settings,
    /// `[health]`: readiness and progress checks
    pub health: crate::health::Settings,
    /// The systemd watchdog interval, when the service manager asks for one (`$WATCHDOG_USEC`).
    pub watchdog: Option<std::time::Duration>,
    /// Every setting as written (defaults, file and environment merged) by dotted key, but those
    /// a reload applies: what a reload compares to tell which settings need a restart, read in
    /// the same pass (the file is not read twice at start).
    pub written: super::reload::Baseline,
}

/// Loads, merges and validates every layer; returns all problems at once.
pub fn load(source: &Source) -> Result<Settings, Error> {
    config::load(source, |root| {
        root.ignore("emulator");
        Settings::parse(root, source)
    })
}

impl Settings {
    /// Each module parses its own section of `root`; sections nobody reads are problems. The
    /// service manager's variables come from `source`'s environment.
    pub fn parse(root: &mut Section<'_>, source: &Source) -> Self {
        let written = super::reload::Baseline::of(root);
        let shutdown = crate::shutdown::Settings::parse(&mut root.section("shutdown"));
        let media = crate::media::Settings::parse(&mut root.section("media"));
        let mut defaults = root.section("defaults");
        let broadcast_defaults = crate::broadcast::Defaults::parse(&mut defaults);
        let policy_defaults = crate::protection::parse_policy_defaults(&mut defaults);
        drop(defaults);
        let policies = crate::protection::parse_policies(&mut root.section("content_key_policies"), &policy_defaults);
        let engine = crate::engine::Settings::parse(
            &mut root.section("engine"),
            &mut root.section("broadcasts"),
            &broadcast_defaults,
            policies,
        );
        let broker = crate::broker::Settings::parse(&mut root.section("broker"));
        let scheduler = crate::schedule::Settings::parse(&mut root.section("scheduler"));
        let ingress = crate::ingress::Settings::parse(&mut root.section("ingress"));
        let http = crate::http::Settings::parse(&mut root.section("http"));
        let health = crate::health::Settings::parse(&mut root.section("health"));
        let watchdog = crate::systemd::watchdog_interval(
            source.var("WATCHDOG_USEC"),
            source.var("WATCHDOG_PID"),
            std::process::id(),
        );
        Settings { shutdown, media, engine, broker, scheduler, ingress, http, health, watchdog, written }
    }

    /// These settings without the config file's broadcasts, for what runs after start: the
    /// running set (`catalog`) holds them then, and a reload reads the file again.
    pub fn without_broadcasts(mut self) -> Settings {
        self.engine.broadcasts = Default::default();
        self.engine.sources = Default::default();
        self
    }

    /// A copy of these settings without the config file's broadcasts, for what runs after start
    /// (the running set holds them): 100,000 broadcasts are not copied to be dropped.
    pub fn clone_without_broadcasts(&self) -> Settings {
        Settings {
            shutdown: self.shutdown.clone(),
            media: self.media.clone(),
            engine: self.engine.clone_without_broadcasts(),
            broker: self.broker.clone(),
            scheduler: self.scheduler.clone(),
            ingress: self.ingress.clone(),
            http: self.http.clone(),
            health: self.health.clone(),
            watchdog: self.watchdog,
            written: self.written.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Problem, Source};
    use secrecy::ExposeSecret;
    use std::collections::HashMap;
    use std::io::Write;
    use std::time::Duration;

    fn source(file: Option<&str>, env: &[(&str, &str)]) -> (Source, Option<tempfile::NamedTempFile>) {
        let temp = file.map(|text| {
            let mut temp = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
            temp.write_all(text.as_bytes()).unwrap();
            temp
        });
        let source = Source {
            file: temp.as_ref().map(|temp| temp.path().to_path_buf()),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        (source, temp)
    }

    #[test]
    fn the_emulator_section_is_left_to_the_emulator() {
        let (source, _file) = source(None, &[("ONAIR__EMULATOR__LISTEN", "nowhere")]);
        assert!(load(&source).is_ok(), "the daemon does not read [emulator]");
        let (source, _file) = source_with_env(&[("ONAIR__EMULATOR__LISTEN", "nowhere"), ("ONAIR__EMULATR__X", "1")]);
        let found = problems(load(&source));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "emulatr");
    }

    #[test]
    fn defaults_tables_apply_to_every_broadcast_and_their_problems_name_them_once() {
        let (first, _file) = source(
            Some(
                "[defaults.broadcast]\nprotocol = \"FragmentedMP4\"\nunits = { on_air = 3 }\n\
                 settings = { reset_after = \"90s\" }\n\
                 [defaults.schedule]\ntimezone = \"Europe/Paris\"\n\
                 [broadcasts.news]\n[broadcasts.sport]\nprotocol = \"RTMP\"\n\
                 [broadcasts.sport.schedule]\ncron = \"0 19 * * *\"\nduration = \"30m\"\n\
                 [broadcasts.weather.units]\noff_air = 1\n",
            ),
            &[],
        );
        let broadcasts = load(&first).unwrap().engine.broadcasts;
        let news = &broadcasts["news"];
        assert_eq!((news.protocol.as_str(), news.on_air_units, news.off_air_units), ("FragmentedMP4", 3, 0));
        assert_eq!((news.machine.as_str(), news.archive_window.as_str()), ("live", "PT1H"));
        assert_eq!(news.settings["reset_after"], "90s", "a free-form table in the defaults is taken whole");
        let sport = &broadcasts["sport"];
        assert_eq!((sport.protocol.as_str(), sport.on_air_units), ("RTMP", 3));
        let schedule = sport.schedule.as_ref().unwrap();
        assert_eq!(schedule.timezone, chrono_tz::Europe::Paris);
        assert_eq!(schedule.lead_channel, chrono::TimeDelta::minutes(10));
        assert_eq!(schedule.post_roll, chrono::TimeDelta::minutes(5));
        let weather = &broadcasts["weather"];
        assert_eq!((weather.on_air_units, weather.off_air_units), (3, 1));

        let (source, file) = source(
            Some(
                "[defaults.broadcast]\nprotocol = \"SRT\"\nprotocl = \"RTMP\"\n\
                 [broadcasts.news]\n[broadcasts.sport]\n[broadcasts.weather]\nprotocol = \"RTMP\"\n",
            ),
            &[],
        );
        let path = file.as_ref().unwrap().path().display().to_string();
        let rendered: Vec<String> = problems(load(&source)).iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                format!("{path}: defaults.broadcast.protocl: unknown setting (see docs/configuration.md for the list)"),
                format!("{path}: defaults.broadcast.protocol: must be RTMP or FragmentedMP4"),
            ]
        );
    }

    #[test]
    fn broadcasts_read_from_the_file_keep_their_settings_and_take_the_environment_over_them() {
        let (source, _file) = source(
            Some(
                "[defaults.broadcast]\nunits = { on_air = 2 }\n\
                 [broadcasts.news]\nprotocol = \"RTMP\"\nsettings = { since = 1979-05-27T07:32:00Z, ratio = 0.5, count = 0x10 }\n\
                 [broadcasts.sport]\nchannel = \"sport-hd\"\nprotocol = \"FragmentedMP4\"\nunits = { off_air = 1 }\n\
                 [broadcasts.sport.schedule]\ncron = \"0 19 * * *\"\nduration = \"30m\"\n\
                 [broadcasts.weather]\nmachine = \"live\"\n[broadcasts.weather.units]\non_air = 4\n",
            ),
            &[
                ("ONAIR__BROADCASTS__WEATHER__PROTOCOL", "FragmentedMP4"),
                ("ONAIR__BROADCASTS__RADIO__CHANNEL", "radio-1"),
            ],
        );
        let settings = load(&source).unwrap();
        let broadcasts = &settings.engine.broadcasts;
        assert_eq!(broadcasts.keys().collect::<Vec<_>>(), ["news", "radio", "sport", "weather"]);
        let news = &broadcasts["news"];
        assert_eq!((news.channel.as_str(), news.protocol.as_str(), news.on_air_units), ("news", "RTMP", 2));
        assert_eq!(
            news.settings["since"], "1979-05-27T07:32:00Z",
            "a TOML date is its text, as the config crate has it"
        );
        assert_eq!((news.settings["ratio"].as_f64(), news.settings["count"].as_i64()), (Some(0.5), Some(16)));
        assert!(news.schedule.is_none());
        let sport = &broadcasts["sport"];
        assert_eq!((sport.channel.as_str(), sport.protocol.as_str()), ("sport-hd", "FragmentedMP4"));
        assert_eq!((sport.on_air_units, sport.off_air_units), (2, 1));
        assert_eq!(sport.schedule.as_ref().unwrap().duration, chrono::TimeDelta::minutes(30));
        let weather = &broadcasts["weather"];
        assert_eq!((weather.protocol.as_str(), weather.on_air_units), ("FragmentedMP4", 4), "the environment wins");
        assert_eq!(broadcasts["radio"].channel, "radio-1", "a broadcast from the environment alone");
        assert_eq!(settings.engine.sources["weather"]["protocol"], "FragmentedMP4");
        assert_eq!(settings.engine.sources["sport"]["units"], serde_json::json!({ "off_air": 1 }));
    }

    #[test]
    fn a_broadcast_value_of_the_wrong_type_names_its_key_path_and_where_it_was_written() {
        let (source, file) = source(
            Some(
                "[broadcasts.news]\nunits = { on_air = \"many\" }\n[broadcasts.sport]\nschedule = 3\n\
                 [broadcasts.weather]\nsettings = \"none\"\n[broadcasts.radio]\n",
            ),
            &[("ONAIR__BROADCASTS__RADIO__UNITS__OFF_AIR", "eleven")],
        );
        let path = file.as_ref().unwrap().path().display().to_string();
        let found = problems(load(&source));
        let keys: Vec<(&str, &str)> = found.iter().map(|p| (p.key.as_str(), p.origin.as_str())).collect();
        assert_eq!(
            keys,
            [
                ("broadcasts.news.units.on_air", path.as_str()),
                ("broadcasts.radio.units.off_air", "environment variable ONAIR__BROADCASTS__RADIO__UNITS__OFF_AIR"),
                ("broadcasts.sport.schedule", path.as_str()),
                // Parsed as an empty schedule table then: what it lacks is missing.
                ("broadcasts.sport.schedule.cron", "built-in default"),
                ("broadcasts.sport.schedule.duration", "built-in default"),
                ("broadcasts.weather.settings", path.as_str()),
            ],
            "{found:#?}"
        );
        assert!(found[0].reason.starts_with("invalid value \"many\""), "{found:#?}");
        assert_eq!(found[2].reason, "expected a table, found a number");
    }

    #[test]
    fn a_copy_without_broadcasts_is_the_settings_with_their_broadcasts_dropped() {
        let (source, _file) = source(
            Some(
                "[engine]\nlanes = 3\nlane_batch = 7\n[defaults.broadcast]\nunits = { on_air = 2 }\n\
                 [broadcasts.news]\n[broadcasts.sport]\nchannel = \"sport-hd\"\n[broadcasts.weather]\nmachine = \"live\"\n",
            ),
            &[("ONAIR__SCHEDULER__MAX_SLEEP", "700ms")],
        );
        let settings = load(&source).unwrap();
        assert_eq!(settings.engine.broadcasts.len(), 3);
        let copy = settings.clone_without_broadcasts();
        assert!(copy.engine.broadcasts.is_empty() && copy.engine.sources.is_empty());
        // Field by field, everything else is kept (secrets are redacted alike on both sides).
        assert_eq!(format!("{copy:?}"), format!("{:?}", settings.clone().without_broadcasts()));
        assert_eq!((copy.engine.lanes, copy.engine.lane_batch), (3, 7));
    }

    fn problems(result: Result<Settings, Error>) -> Vec<Problem> {
        match result {
            Ok(_) => panic!("expected problems"),
            Err(Error::Invalid(problems)) => problems.0,
        }
    }

    #[test]
    fn built_in_defaults_are_valid() {
        let settings = load(&Source::default()).expect("defaults load");
        assert_eq!(settings.shutdown.grace, Duration::from_secs(10));
        assert_eq!(settings.media.arm_url.as_str(), "https://management.azure.com/");
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let (source, _file) = source(
            Some("[shutdown]\ngrace = \"3s\"\n[media]\naccount = \"from-file\"\nmax_attempts = 4\n"),
            &[("ONAIR__MEDIA__ACCOUNT", "from-env"), ("ONAIR__MEDIA__MAX_ATTEMPTS", "7"), ("UNRELATED", "x")],
        );
        let settings = load(&source).unwrap();
        assert_eq!(settings.shutdown.grace, Duration::from_secs(3));
        assert_eq!(settings.media.account.as_deref(), Some("from-env"));
        assert_eq!(settings.media.retry.max_attempts, 7);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_origin_key_and_reason() {
        let (source, file) = source(
            Some("[shutdown]\ngrace = \"soon\"\n[media]\narm_url = \"not a url\"\narm_ulr = \"typo\"\n"),
            &[("ONAIR__HTTP__LISTEN", "nowhere")],
        );
        let path = file.as_ref().unwrap().path().display().to_string();
        let found = problems(load(&source));
        let rendered: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 4, "{rendered:#?}");
        assert!(
            rendered.iter().any(|p| p.starts_with(&format!("{path}: shutdown.grace: invalid duration"))),
            "{rendered:#?}"
        );
        assert!(
            rendered.iter().any(|p| p.starts_with(&format!("{path}: media.arm_url: invalid URL"))),
            "{rendered:#?}"
        );
        assert!(
            rendered.iter().any(|p| p.starts_with(&format!("{path}: media.arm_ulr: unknown setting"))),
            "{rendered:#?}"
        );
        assert!(
            rendered.iter().any(|p| p.starts_with("environment variable ONAIR__HTTP__LISTEN: http.listen:")),
            "{rendered:#?}"
        );
    }

    #[test]
    fn secrets_in_the_config_file_are_refused_and_not_echoed() {
        let (source, _file) = source(Some("[media]\nclient_secret = \"hunter2\"\n"), &[]);
        let found = problems(load(&source));
        assert_eq!(found.len(), 1);
        assert!(found[0].reason.contains("secrets are not read from config files"));
        assert!(!found.iter().any(|p| p.to_string().contains("hunter2")));
    }

    #[test]
    fn secrets_come_from_the_environment_or_a_credentials_file() {
        let (source, _file) = source(None, &[("ONAIR__MEDIA__CLIENT_SECRET", "s3cret")]);
        let settings = load(&source).unwrap();
        assert_eq!(settings.media.client_secret.as_ref().unwrap().expose_secret(), "s3cret");
        assert!(!format!("{settings:?}").contains("s3cret"));

        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("media-secret"), "from-credential\n").unwrap();
        let credentials = directory.path().display().to_string();
        let (source, _file) = source_with_env(&[
            ("CREDENTIALS_DIRECTORY", credentials.as_str()),
            ("ONAIR__MEDIA__CLIENT_SECRET_FILE", "media-secret"),
        ]);
        let settings = load(&source).unwrap();
        assert_eq!(settings.media.client_secret.as_ref().unwrap().expose_secret(), "from-credential");
    }

    fn source_with_env(env: &[(&str, &str)]) -> (Source, Option<tempfile::NamedTempFile>) {
        source(None, env)
    }

    #[test]
    fn an_unreadable_secret_file_is_a_problem() {
        let (source, _file) = source(None, &[("ONAIR__MEDIA__CLIENT_SECRET_FILE", "/nonexistent/secret")]);
        let found = problems(load(&source));
        assert_eq!(found[0].key, "media.client_secret_file");
        assert!(found[0].reason.starts_with("cannot read /nonexistent/secret"));
    }

    #[test]
    fn a_missing_or_malformed_file_is_a_problem_not_a_panic() {
        let missing = Source { file: Some("/nonexistent/onair.toml".into()), env: HashMap::new() };
        assert_eq!(problems(load(&missing)).len(), 1);
        let (malformed, _file) = source(Some("[media\narm_url = 1"), &[]);
        assert_eq!(problems(load(&malformed)).len(), 1);
    }
}
