//! Layered settings: built-in defaults, then the file given by `--config`, then `ONAIR__*` variables.
//!
//! The built-in defaults are `config/default.toml`, compiled in, so every setting and its default
//! is written down in one place. Layers are merged by the `config` crate, then each module parses
//! its own section through a [`Section`], which records every problem instead of stopping at the
//! first: an operator fixing a config file sees all of them at once, each with where the value came
//! from, the key path and the reason. Unknown keys are problems too, so typos do not pass silently.
//!
//! Secrets are never read from the config file: a secret comes from an environment variable
//! (`ONAIR__MEDIA__CLIENT_SECRET`) or from a file named by `<key>_file`, resolved against systemd's
//! `$CREDENTIALS_DIRECTORY` when relative. Values are wrapped in `SecretString` so that `Debug`
//! redacts them, and no problem message ever contains one.
//!
//! This is the only module that reads the process environment (STYLE G2).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Exit status for invalid settings (`EX_CONFIG` from sysexits.h); systemd units use
/// `RestartPreventExitStatus=78` so that a broken config does not loop.
pub const EXIT_CODE: i32 = 78;

/// The compiled-in defaults.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "ONAIR";

/// Where settings come from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The config file, if one was given.
    pub file: Option<PathBuf>,
    /// The environment: `ONAIR__*` variables and `CREDENTIALS_DIRECTORY` are used, the rest is ignored.
    pub env: HashMap<String, String>,
}

impl Source {
    /// The config file `file` (else `$ONAIR_CONFIG`, when set) and the environment of this
    /// process: the one place onair reads its environment.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        // The one place that reads the process environment (STYLE G2).
        #[allow(clippy::disallowed_methods)]
        let env: HashMap<String, String> = std::env::vars().collect();
        let file = file.or_else(|| env.get("ONAIR_CONFIG").filter(|path| !path.is_empty()).map(PathBuf::from));
        Self { file, env }
    }

    /// The directory for temporary files: `$TMPDIR`, else `/tmp`.
    pub fn temp_dir(&self) -> PathBuf {
        self.var("TMPDIR").filter(|path| !path.is_empty()).map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
    }

    /// The environment variable `name`, when set (the process's, for `from_process`).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more problems, all of them.
    #[error("{0}")]
    Invalid(Problems),
}

/// The problems found in one load, in the order they were found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

/// One problem: where the value came from, its key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file path, `environment variable ONAIR__…`, or `built-in default`.
    pub origin: String,
    /// The dotted key path, for example `media.arm_url`.
    pub key: String,
    /// What is wrong, without a trailing period.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.key, self.reason)
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(f, "invalid settings ({count} problem{})", if count == 1 { "" } else { "s" })?;
        for problem in &self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl Problems {
    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Loads and merges every layer, and hands the merged root table to `parse`, which takes what
/// it owns and records problems in the `Section`s; returns all problems at once.
///
/// The loader knows no module: the composition (which section each module parses) is the
/// caller's, `daemon::load` for the daemon's settings.
pub fn load<T>(source: &Source, parse: impl FnOnce(&mut Section<'_>) -> T) -> Result<T, Error> {
    parse_layers(Layers::read(source)?, parse)
}

/// Parses `root`, a table given as data (a broadcast's definition sent to the API) rather than read
/// from the layers: every problem is reported with `origin` as where the value came from.
pub fn parse_value<T>(origin: &str, root: Value, parse: impl FnOnce(&mut Section<'_>) -> T) -> Result<T, Error> {
    let layers = Layers {
        merged: root,
        file: None,
        env: Value::Null,
        credentials_directory: None,
        origin: Some(origin.to_string()),
    };
    parse_layers(layers, parse)
}

/// Hands the merged root of `layers` to `parse`; every problem it recorded, or what it returned.
fn parse_layers<T>(mut layers: Layers, parse: impl FnOnce(&mut Section<'_>) -> T) -> Result<T, Error> {
    // The merged root is handed over, not copied: origins are told from the layers on their own.
    let merged = std::mem::take(&mut layers.merged);
    let context = Context { layers, problems: std::sync::Mutex::new(Vec::new()) };
    let settings = {
        let mut root = context.root(merged);
        parse(&mut root)
    };
    let problems = context.problems.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    if problems.is_empty() { Ok(settings) } else { Err(Error::Invalid(Problems(problems))) }
}

// === impl Layers ===

/// Each layer on its own (to tell where a value came from) and the merge of all three.
#[derive(Debug)]
struct Layers {
    merged: Value,
    file: Option<(PathBuf, Value)>,
    env: Value,
    credentials_directory: Option<PathBuf>,
    /// Where every value came from, when the root was given as data (`parse_value`).
    origin: Option<String>,
}

impl Layers {
    fn read(source: &Source) -> Result<Self, Error> {
        let fail = |origin: String, reason: String| {
            Error::Invalid(Problems(vec![Problem { origin, key: "(file)".into(), reason }]))
        };
        let defaults = config::File::from_str(DEFAULTS, config::FileFormat::Toml);
        // The file is read and parsed once, here, straight into JSON: its `[broadcasts]` (100,000
        // tables, for some) never goes through the config crate's merge trees. The rest of it
        // is merged by the config crate between the defaults and the environment as before.
        let mut file = match &source.file {
            Some(path) => {
                let map = read_file(path).map_err(|reason| fail(path.display().to_string(), reason))?;
                Some((path.clone(), map))
            }
            None => None,
        };
        let file_broadcasts = file.as_mut().and_then(|(_, map)| map.remove(BROADCASTS));
        let env_vars: config::Map<String, String> = source
            .env
            .iter()
            .filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}__")))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let environment = || {
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(Some(env_vars.clone()))
        };

        let mut builder = config::Config::builder().add_source(defaults);
        if let Some((path, map)) = &file {
            let parsed = Parsed::of(map).map_err(|reason| fail(path.display().to_string(), reason))?;
            builder = builder.add_source(parsed);
        }
        let mut merged =
            builder.add_source(environment()).build().and_then(|config| config.try_deserialize::<Value>()).map_err(
                |error| {
                    let origin = source.file.as_ref().map_or("settings".to_string(), |path| path.display().to_string());
                    fail(origin, error.to_string())
                },
            )?;
        let env = config::Config::builder()
            .add_source(environment())
            .build()
            .and_then(|config| config.try_deserialize::<Value>())
            .map_err(|error| fail("environment".into(), error.to_string()))?;
        if let Some(broadcasts) = file_broadcasts {
            // The built-in defaults hold an empty `[broadcasts]` (a test says so): the merge of the
            // three layers is the file's table with the environment's over it, key by key as the
            // config crate merges.
            let mut written = broadcasts.clone();
            if let Some(over) = env.get(BROADCASTS) {
                overlay(&mut written, over);
            }
            if let Some(root) = merged.as_object_mut() {
                root.insert(BROADCASTS.to_string(), written);
            }
            if let Some((_, map)) = file.as_mut() {
                map.insert(BROADCASTS.to_string(), broadcasts);
            }
        }
        let file = file.map(|(path, map)| (path, Value::Object(map)));
        let credentials_directory = source.env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Ok(Self { merged, file, env, credentials_directory, origin: None })
    }

    /// Where the value at `key` (dotted) came from.
    fn origin(&self, key: &str) -> String {
        if let Some(origin) = &self.origin {
            return origin.clone();
        }
        if lookup(&self.env, key).is_some() {
            let variable = key.split('.').map(str::to_uppercase).collect::<Vec<_>>().join("__");
            return format!("environment variable {ENV_PREFIX}__{variable}");
        }
        if let Some((path, value)) = &self.file
            && lookup(value, key).is_some()
        {
            return path.display().to_string();
        }
        "built-in default".into()
    }

    fn in_file(&self, key: &str) -> Option<&Path> {
        self.file.as_ref().filter(|(_, value)| lookup(value, key).is_some()).map(|(path, _)| path.as_path())
    }
}

/// The top-level table of the broadcasts, read from the file without the config crate.
const BROADCASTS: &str = "broadcasts";

/// The config file at `path` (or, as the config crate looks for it, `path` with the extension
/// `.toml`), parsed as TOML into JSON values the way the config crate converts them (dates as
/// text; a float out of range of JSON as nothing).
fn read_file(path: &Path) -> Result<Map<String, Value>, String> {
    let found = if path.is_file() {
        Some(path.to_path_buf())
    } else {
        Some(path.with_extension("toml")).filter(|path| path.is_file())
    };
    let Some(found) = found else {
        return Err(format!("configuration file \"{}\" not found", path.display()));
    };
    let bytes = std::fs::read(&found).map_err(|error| format!("cannot read {} ({error})", found.display()))?;
    // As the config crate: a UTF-8 byte order mark is skipped, invalid UTF-8 replaced.
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    let text = String::from_utf8_lossy(bytes);
    let table = toml::de::DeTable::parse(&text).map_err(|error| format!("{error} in {}", found.display()))?;
    from_toml_table(table.into_inner()).map_err(|error| format!("{error} in {}", found.display()))
}

fn from_toml_table(table: toml::de::DeTable<'_>) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for (key, value) in table {
        map.insert(key.into_inner().into_owned(), from_toml_value(value.into_inner())?);
    }
    Ok(map)
}

fn from_toml_value(value: toml::de::DeValue<'_>) -> Result<Value, String> {
    use toml::de::DeValue;
    Ok(match value {
        DeValue::String(text) => Value::String(text.into_owned()),
        DeValue::Float(float) => {
            let parsed = float.as_str().parse::<f64>().map_err(|error| error.to_string())?;
            if parsed.is_infinite() && !float.as_str().contains("inf") {
                return Err("floating-point number overflowed".into());
            }
            serde_json::Number::from_f64(parsed).map_or(Value::Null, Value::Number)
        }
        DeValue::Integer(integer) => {
            Value::from(i64::from_str_radix(integer.as_str(), integer.radix()).map_err(|error| error.to_string())?)
        }
        DeValue::Boolean(boolean) => Value::Bool(boolean),
        DeValue::Table(table) => Value::Object(from_toml_table(table)?),
        DeValue::Array(array) => {
            Value::Array(array.into_iter().map(|value| from_toml_value(value.into_inner())).collect::<Result<_, _>>()?)
        }
        DeValue::Datetime(datetime) => Value::String(datetime.to_string()),
    })
}

/// Sets `over` onto `base` as the config crate merges a later layer: a table key by key (over
/// whatever `base` was when it was not a table), anything else replacing.
fn overlay(base: &mut Value, over: &Value) {
    match over {
        Value::Object(keys) => {
            if !base.is_object() {
                *base = Value::Object(Map::new());
            }
            if let Value::Object(map) = base {
                for (key, value) in keys {
                    overlay(map.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *base = over.clone(),
    }
}

/// The file's tables but `[broadcasts]`, already parsed, as a layer of the config crate.
#[derive(Debug, Clone)]
struct Parsed(config::Map<String, config::Value>);

impl Parsed {
    fn of(map: &Map<String, Value>) -> Result<Self, String> {
        map.iter()
            .map(|(key, value)| {
                let value = config::Value::deserialize(value.clone()).map_err(|error| error.to_string())?;
                Ok((key.clone(), value))
            })
            .collect::<Result<_, String>>()
            .map(Self)
    }
}

impl config::Source for Parsed {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

fn lookup<'v>(value: &'v Value, dotted: &str) -> Option<&'v Value> {
    dotted.split('.').try_fold(value, |value, key| value.get(key))
}

// === impl Section ===

#[derive(Debug)]
struct Context {
    layers: Layers,
    /// Behind a lock: the tables of `Section::tables_over` are parsed on several threads.
    problems: std::sync::Mutex<Vec<Problem>>,
}

impl Context {
    fn root(&self, merged: Value) -> Section<'_> {
        let map = match merged {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Section { context: self, path: String::new(), map, inherited: BTreeMap::new() }
    }
}

/// A table other tables fall back on, such as `[defaults.broadcast]` for every
/// `[broadcasts.<id>]`: the built-in defaults of repeated tables live in `config/default.toml`
/// like every other default, and an operator can change them for all tables at once.
#[derive(Debug, Clone, Default)]
pub struct Fallback {
    path: String,
    map: Map<String, Value>,
}

/// One table of the merged settings, handed to the module that owns it.
///
/// Reading a key removes it; whatever is left when the section is dropped is reported as unknown.
/// A value that cannot be used is reported and replaced by `T::default()`, so parsing goes on and
/// finds the other problems too; `load` then discards the settings.
#[derive(Debug)]
pub struct Section<'a> {
    context: &'a Context,
    path: String,
    map: Map<String, Value>,
    /// Keys (dotted, relative to this table) whose values came from a `Fallback`, with the
    /// fallback's own key path: a problem with such a value names where it was written.
    inherited: BTreeMap<String, String>,
}

impl<'a> Section<'a> {
    /// The nested table `key`.
    pub fn section(&mut self, key: &str) -> Section<'a> {
        let value = self.map.remove(key);
        self.nested(key, value)
    }

    /// `value`, found at `key` in this table, as a nested section (empty, with a problem
    /// recorded, when it is not a table), with the fallback keys recorded under it.
    fn nested(&self, key: &str, value: Option<Value>) -> Section<'a> {
        let (path, map) = self.table_at(key, value);
        let prefix = format!("{key}.");
        let inherited = self
            .inherited
            .iter()
            .filter_map(|(relative, from)| Some((relative.strip_prefix(&prefix)?.to_string(), from.clone())))
            .collect();
        Section { context: self.context, path, map, inherited }
    }

    /// The nested table `key` taken whole, for other tables to fall back on (`section_over`).
    /// `known` lists the keys it may hold (dotted for nested tables); others are problems.
    pub fn fallback(&mut self, key: &str, known: &[&str]) -> Fallback {
        let (path, map) = self.take_table(key);
        let mut keys = BTreeMap::new();
        inherit(&Value::Object(map.clone()), "", &path, &mut keys);
        for (relative, from) in keys {
            // A known key covers what is below it (a free-form table such as `settings`); a
            // table above a known key is only a way to it.
            let covered = known.iter().any(|known| relative == *known || relative.starts_with(&format!("{known}.")));
            let on_the_way =
                relative.is_empty() || known.iter().any(|known| known.starts_with(&format!("{relative}.")));
            if !covered && !on_the_way {
                self.problem_at(&from, "unknown setting (see docs/configuration.md for the list)");
            }
        }
        Fallback { path, map }
    }

    /// The nested table `key`, with every key it does not set taken from `fallback` (nested
    /// tables merged key by key).
    pub fn section_over(&mut self, key: &str, fallback: &Fallback) -> Section<'a> {
        let mut section = self.section(key);
        fill(&mut section.map, &fallback.map, &fallback.path, "", &mut section.inherited);
        section
    }

    /// Every nested table of this one, taken out and filled from `fallback` as `section_over`
    /// does, handed to `each` with its key and the table as written (`None` when the value is not
    /// a table, a problem already recorded); the results in key order. A large table (100,000
    /// broadcasts) is shared among the machine's cores, each worker with its own `W` (a cache);
    /// problems are recorded in the order one thread would have recorded them.
    pub fn tables_over<T, W>(
        &mut self,
        fallback: &Fallback,
        each: impl Fn(&mut W, String, Option<Map<String, Value>>, Section<'_>) -> T + Sync,
    ) -> Vec<T>
    where
        T: Send,
        W: Default,
    {
        let tables: Vec<(String, Value)> = std::mem::take(&mut self.map).into_iter().collect();
        let workers = match tables.len() {
            0..PARALLEL_TABLES => 1,
            _ => std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 8),
        };
        let this = &*self;
        let work = |chunk: Vec<(String, Value)>| {
            let mut own = W::default();
            chunk
                .into_iter()
                .map(|(key, value)| {
                    let written = value.as_object().cloned();
                    let mut section = this.nested(&key, Some(value));
                    fill(&mut section.map, &fallback.map, &fallback.path, "", &mut section.inherited);
                    each(&mut own, key, written, section)
                })
                .collect::<Vec<T>>()
        };
        if workers == 1 {
            return work(tables);
        }
        let size = tables.len().div_ceil(workers);
        let mut chunks = Vec::with_capacity(workers);
        let mut rest = tables;
        while rest.len() > size {
            let tail = rest.split_off(size);
            chunks.push(std::mem::replace(&mut rest, tail));
        }
        chunks.push(rest);
        let done: Vec<(Vec<T>, Vec<Problem>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    scope.spawn(|| {
                        DEFERRED.set(Some(Vec::new()));
                        let results = work(chunk);
                        (results, DEFERRED.take().unwrap_or_default())
                    })
                })
                .collect();
            handles
                .into_iter()
                // A worker that panicked takes the parse down as it would have on one thread.
                .map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        let mut results = Vec::new();
        let mut problems = lock(&self.context.problems);
        for (part, deferred) in done {
            results.extend(part);
            for problem in deferred {
                add_problem(&mut problems, problem);
            }
        }
        results
    }

    /// Leaves the key `key` to another reader: it is taken out without a problem.
    pub fn ignore(&mut self, key: &str) {
        self.map.remove(key);
    }

    /// Leaves every key not read yet to other readers.
    pub fn ignore_rest(&mut self) {
        self.map.clear();
    }

    /// The value at `key` as written (fallback values included), without taking it.
    pub fn peek(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// The keys of this table, in order.
    pub fn keys(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// The value at `key`, which the built-in defaults always provide.
    pub fn value<T: DeserializeOwned + Default>(&mut self, key: &str) -> T {
        match self.optional(key) {
            Some(value) => value,
            None => {
                if !self.has_problem(key) {
                    self.problem(key, "missing");
                }
                T::default()
            }
        }
    }

    /// The value at `key`, or `None` when it is absent or an empty string.
    pub fn optional<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let value = self.map.remove(key)?;
        if value.as_str().is_some_and(str::is_empty) {
            return None;
        }
        match decode::<T>(&value) {
            Ok(decoded) => Some(decoded),
            Err(reason) => {
                self.problem(key, reason);
                None
            }
        }
    }

    /// A duration written the humantime way: `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
    pub fn duration(&mut self, key: &str) -> Duration {
        let text: String = self.value(key);
        if text.is_empty() {
            return Duration::ZERO;
        }
        match humantime::parse_duration(&text) {
            Ok(duration) => duration,
            Err(error) => {
                self.problem(
                    key,
                    format!("invalid duration {text:?} ({error}); write it like \"30s\", \"5m\" or \"250ms\""),
                );
                Duration::ZERO
            }
        }
    }

    /// An absolute `http` or `https` URL, or `None` when absent.
    pub fn url(&mut self, key: &str) -> Option<url::Url> {
        self.url_with(key, &["http", "https"])
    }

    /// An absolute URL with one of `schemes`, or `None` when absent.
    pub fn url_with(&mut self, key: &str, schemes: &[&str]) -> Option<url::Url> {
        let text: String = self.optional(key)?;
        match url::Url::parse(&text) {
            Ok(url) if schemes.contains(&url.scheme()) => Some(url),
            Ok(url) => {
                self.problem(key, format!("unsupported URL scheme {:?}; use {}", url.scheme(), schemes.join(" or ")));
                None
            }
            Err(error) => {
                self.problem(key, format!("invalid URL {text:?} ({error})"));
                None
            }
        }
    }

    /// A secret: from the environment variable for `key`, or from the file named by `<key>_file`.
    ///
    /// A secret written into the config file itself is refused, and so is setting both.
    pub fn secret(&mut self, key: &str) -> Option<SecretString> {
        let file_key = format!("{key}_file");
        let path = self.key_path(key);
        let inline = self.map.remove(key);
        let file: Option<PathBuf> = self.optional(&file_key);
        if let Some(config_file) = self.context.layers.in_file(&path) {
            let variable = path.split('.').map(str::to_uppercase).collect::<Vec<_>>().join("__");
            self.problem_from(
                config_file.display().to_string(),
                &path,
                format!("secrets are not read from config files; set {file_key} or the environment variable {ENV_PREFIX}__{variable}"),
            );
            return None;
        }
        let inline = match inline {
            Some(Value::String(text)) if !text.is_empty() => Some(text),
            Some(Value::String(_)) | None => None,
            Some(other) => {
                self.problem(key, format!("expected a string, found {}", kind(&other)));
                None
            }
        };
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(key, format!("set either {key} or {file_key}, not both"));
                None
            }
            (Some(text), None) => Some(SecretString::from(text)),
            (None, Some(file)) => {
                let resolved = match &self.context.layers.credentials_directory {
                    Some(directory) if file.is_relative() => directory.join(&file),
                    _ => file,
                };
                match std::fs::read_to_string(&resolved) {
                    Ok(text) => {
                        let trimmed = text.trim_end_matches(['\n', '\r']);
                        if trimmed.is_empty() {
                            self.problem(&file_key, format!("{} is empty", resolved.display()));
                            None
                        } else {
                            Some(SecretString::from(trimmed.to_string()))
                        }
                    }
                    Err(error) => {
                        self.problem(&file_key, format!("cannot read {} ({error})", resolved.display()));
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }

    /// Records `reason` against `key` unless `ok`, or unless the value was already found unusable.
    pub fn check(&mut self, key: &str, ok: bool, reason: &str) {
        if !ok && !self.has_problem(key) {
            self.problem(key, reason);
        }
    }

    /// Records a problem with `key` of this section.
    pub fn problem(&self, key: &str, reason: impl Into<String>) {
        let path = self.path_of(key);
        self.problem_at(&path, reason);
    }

    fn problem_at(&self, path: &str, reason: impl Into<String>) {
        let origin = self.context.layers.origin(path);
        self.problem_from(origin, path, reason);
    }

    fn problem_from(&self, origin: String, path: &str, reason: impl Into<String>) {
        let problem = Problem { origin, key: path.to_string(), reason: reason.into() };
        // On a worker of `tables_over`, kept apart until the workers are done.
        let problem = DEFERRED.with_borrow_mut(|deferred| match deferred {
            Some(deferred) => {
                add_problem(deferred, problem);
                None
            }
            None => Some(problem),
        });
        if let Some(problem) = problem {
            add_problem(&mut lock(&self.context.problems), problem);
        }
    }

    fn has_problem(&self, key: &str) -> bool {
        let path = self.path_of(key);
        let found = |problems: &[Problem]| problems.iter().any(|problem| problem.key == path);
        DEFERRED.with_borrow(|deferred| deferred.as_deref().is_some_and(found)) || found(&lock(&self.context.problems))
    }

    /// Takes the nested table `key` out (empty when absent; a problem when it is not a table).
    fn take_table(&mut self, key: &str) -> (String, Map<String, Value>) {
        let value = self.map.remove(key);
        self.table_at(key, value)
    }

    /// `value`, found at `key` in this table, as a table with its key path (empty, with a
    /// problem recorded, when it is not a table).
    fn table_at(&self, key: &str, value: Option<Value>) -> (String, Map<String, Value>) {
        let path = self.key_path(key);
        let map = match value {
            Some(Value::Object(map)) => map,
            Some(other) => {
                self.problem_at(&path, format!("expected a table, found {}", kind(&other)));
                Map::new()
            }
            None => Map::new(),
        };
        (path, map)
    }

    /// Where the value at `key` was written: here, or in the fallback it came from.
    fn path_of(&self, key: &str) -> String {
        self.inherited.get(key).cloned().unwrap_or_else(|| self.key_path(key))
    }

    fn key_path(&self, key: &str) -> String {
        match (self.path.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.path.clone(),
            (false, false) => format!("{}.{key}", self.path),
        }
    }
}

impl Drop for Section<'_> {
    fn drop(&mut self) {
        // A fallback key this table did not need is not a typo in it (`fallback` checks those).
        let unknown: Vec<String> = self.map.keys().filter(|key| !self.inherited.contains_key(*key)).cloned().collect();
        for key in unknown {
            self.problem(&key, "unknown setting (see docs/configuration.md for the list)");
        }
    }
}

/// The problems, even if a thread panicked while it held them (`config` imports no other module,
/// so not `sync::lock`).
fn lock(problems: &std::sync::Mutex<Vec<Problem>>) -> std::sync::MutexGuard<'_, Vec<Problem>> {
    problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tables of more entries than this are parsed by `Section::tables_over` on several threads.
const PARALLEL_TABLES: usize = 4096;

thread_local! {
    /// The problems recorded on a worker of `Section::tables_over`, added to the others once the
    /// workers are done, in the order of their tables.
    static DEFERRED: RefCell<Option<Vec<Problem>>> = const { RefCell::new(None) };
}

/// Adds `problem` to `problems`: a fallback value read by many tables is one problem, not one
/// per table.
fn add_problem(problems: &mut Vec<Problem>, problem: Problem) {
    if !problems.contains(&problem) {
        problems.push(problem);
    }
}

/// Fills `own` with the keys of `fallback` it lacks, recording each filled key (relative to the
/// table, dotted) with the fallback key it came from.
fn fill(
    own: &mut Map<String, Value>,
    fallback: &Map<String, Value>,
    fallback_path: &str,
    relative: &str,
    inherited: &mut BTreeMap<String, String>,
) {
    for (key, value) in fallback {
        let (relative, from) = (join(relative, key), join(fallback_path, key));
        match (own.get_mut(key), value) {
            (None, _) => {
                own.insert(key.clone(), value.clone());
                inherit(value, &relative, &from, inherited);
            }
            (Some(Value::Object(own)), Value::Object(fallback)) => fill(own, fallback, &from, &relative, inherited),
            (Some(_), _) => {}
        }
    }
}

fn inherit(value: &Value, relative: &str, from: &str, inherited: &mut BTreeMap<String, String>) {
    inherited.insert(relative.to_string(), from.to_string());
    if let Value::Object(map) = value {
        for (key, value) in map {
            inherit(value, &join(relative, key), &join(from, key), inherited);
        }
    }
}

/// `base.key`, or `key` at the top.
fn join(base: &str, key: &str) -> String {
    if base.is_empty() { key.to_string() } else { format!("{base}.{key}") }
}

/// Decodes a settings value, accepting the strings that environment variables produce
/// (`"5"` for a number, `"true"` for a boolean) and numbers where strings are expected.
fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    // Read in place (`&Value` is a deserializer): no copy of the value per key read.
    match T::deserialize(value) {
        Ok(decoded) => Ok(decoded),
        Err(first) => {
            let retry = match value {
                Value::String(text) => serde_json::from_str::<Value>(text).ok(),
                Value::Number(_) | Value::Bool(_) => Some(Value::String(value.to_string())),
                _ => None,
            };
            retry
                .and_then(|retry| serde_json::from_value::<T>(retry).ok())
                .ok_or_else(|| format!("invalid value {}: {first}", preview(value)))
        }
    }
}

fn preview(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 { format!("{}…", text.chars().take(60).collect::<String>()) } else { text }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the config crate makes of `text` as a file layer: the reference for `read_file`.
    fn by_the_config_crate(text: &str) -> Value {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|config| config.try_deserialize::<Value>())
            .unwrap()
    }

    #[test]
    fn the_file_is_read_into_the_values_the_config_crate_would_give() {
        let text = "title = \"x\"\n[broadcasts.news]\nprotocol = \"RTMP\"\nunits = { on_air = 2 }\n\
                    settings = { when = 1979-05-27T07:32:00Z, day = 1979-05-27, ratio = 0.5, big = 1e300, hex = 0xff, \
                    octal = 0o17, yes = true, list = [1, \"two\", { three = 3 }], nested = { a = { b = [] } } }\n\
                    [broadcasts.sport.schedule]\ncron = \"0 19 * * *\"\n[[arrays]]\nname = \"one\"\n[[arrays]]\nname = \"two\"\n";
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        let ours = Value::Object(read_file(file.path()).unwrap());
        assert_eq!(ours, by_the_config_crate(text));
        assert_eq!(ours["broadcasts"]["news"]["settings"]["hex"], 255);
    }

    #[test]
    fn a_file_is_found_with_the_toml_extension_and_a_malformed_one_is_one_problem() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("onair.toml"), "[broadcasts.news]\n").unwrap();
        let found = read_file(&directory.path().join("onair")).unwrap();
        assert!(found["broadcasts"]["news"].is_object());
        let missing = read_file(&directory.path().join("absent")).unwrap_err();
        assert!(missing.contains("not found"), "{missing}");
        std::fs::write(directory.path().join("bad.toml"), "[broadcasts.news\nprotocol = 1").unwrap();
        let malformed = read_file(&directory.path().join("bad.toml")).unwrap_err();
        assert!(malformed.contains("bad.toml"), "{malformed}");
    }

    #[test]
    fn the_built_in_broadcasts_table_is_empty() {
        // `Layers::read` merges the file's `[broadcasts]` with the environment's only: the
        // defaults must have nothing under it.
        assert_eq!(by_the_config_crate(DEFAULTS)["broadcasts"], serde_json::json!({}));
    }

    /// A table with more entries than `PARALLEL_TABLES`, some with problems spread over what
    /// the workers get: read on several threads as on one, problems in the same order.
    #[test]
    fn tables_parsed_on_several_threads_read_and_report_as_on_one() {
        let count = PARALLEL_TABLES * 2 + 10;
        let mut tables = Map::new();
        for index in 0..count {
            let table = match index {
                7 => serde_json::json!({"size": "big"}),
                index if index == count / 2 => serde_json::json!({"size": 3, "typo": true}),
                index if index == count - 3 => serde_json::json!(42),
                index => serde_json::json!({"size": index % 5}),
            };
            tables.insert(format!("t{index:05}"), table);
        }
        let root = serde_json::json!({"defaults": {"size": 1, "colour": "red"}, "tables": tables});
        let read = |section: &mut Section<'_>, id: String, written: Option<Map<String, Value>>| {
            (id, written.is_some(), section.value::<u32>("size"), section.value::<String>("colour"))
        };
        let parallel = parse_value("test", root.clone(), |root| {
            let fallback = root.fallback("defaults", &["size", "colour"]);
            let mut tables = root.section("tables");
            tables.tables_over(&fallback, |_: &mut (), id, written, mut section| read(&mut section, id, written))
        });
        let sequential = parse_value("test", root, |root| {
            let fallback = root.fallback("defaults", &["size", "colour"]);
            let mut tables = root.section("tables");
            let mut read_all = Vec::new();
            for id in tables.keys() {
                let written = tables.peek(&id).and_then(Value::as_object).cloned();
                let mut section = tables.section_over(&id, &fallback);
                read_all.push(read(&mut section, id, written));
            }
            read_all
        });
        let (parallel, sequential) = (parallel.unwrap_err().to_string(), sequential.unwrap_err().to_string());
        assert_eq!(parallel, sequential);
        let lines: Vec<&str> = parallel.lines().collect();
        assert_eq!(lines.len(), 4, "a header and three problems: {parallel}");
        assert!(lines[1].contains("tables.t00007.size: invalid value"), "{parallel}");
        assert!(lines[2].contains(&format!("tables.t{:05}.typo: unknown setting", count / 2)), "{parallel}");
        assert!(lines[3].contains(&format!("tables.t{:05}: expected a table", count - 3)), "{parallel}");
        // And the values read, when nothing is wrong.
        let mut fine = Map::new();
        for index in 0..count {
            fine.insert(format!("t{index:05}"), serde_json::json!({"size": index % 5}));
        }
        let root = serde_json::json!({"defaults": {"size": 1, "colour": "red"}, "tables": fine});
        let values = parse_value("test", root, |root| {
            let fallback = root.fallback("defaults", &["size", "colour"]);
            root.section("tables").tables_over(&fallback, |seen: &mut usize, id, written, mut section| {
                *seen += 1;
                (read(&mut section, id, written), *seen)
            })
        })
        .unwrap();
        assert_eq!(values.len(), count);
        for (index, ((id, written, size, colour), _)) in values.iter().enumerate() {
            assert_eq!(
                (id.as_str(), *written, *size, colour.as_str()),
                (format!("t{index:05}").as_str(), true, index as u32 % 5, "red")
            );
        }
        // Each worker had its own state: more than one started counting again.
        assert!(values.iter().filter(|(_, seen)| *seen == 1).count() > 1);
    }

    #[test]
    fn overlay_merges_tables_key_by_key_and_replaces_the_rest() {
        let mut base = serde_json::json!({ "a": { "x": 1, "y": 2 }, "b": 3, "c": [1] });
        overlay(&mut base, &serde_json::json!({ "a": { "y": "9", "z": {} }, "b": { "q": "1" }, "c": "2" }));
        assert_eq!(base, serde_json::json!({ "a": { "x": 1, "y": "9", "z": {} }, "b": { "q": "1" }, "c": "2" }));
    }
}
