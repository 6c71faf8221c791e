//! Reading machine definitions from disk: the IO that `machine` does not do.

use std::path::Path;

use crate::machine::{Library, Location, MachineText, Problem};

/// Every `*.toml` in `dir`, in name order, and the problems met reading them (a directory or file
/// that cannot be read). No directory: nothing.
pub fn read_machine_dir(dir: Option<&Path>) -> (Vec<MachineText>, Vec<Problem>) {
    let mut texts = Vec::new();
    let mut problems = Vec::new();
    let Some(dir) = dir else { return (texts, problems) };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            let location = Location::file(&dir.display().to_string());
            problems.push(Problem::new(location, format!("cannot read the machines directory: {error}")));
            return (texts, problems);
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let file = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let name = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
                texts.push(MachineText { file, name, text });
            }
            Err(error) => {
                problems.push(Problem::new(Location::file(&file), format!("cannot read the file: {error}")));
            }
        }
    }
    (texts, problems)
}

/// The built-in machines and those in `dir` (which replace built-ins of the same name), with
/// every problem found reading and compiling them.
pub fn load_machines(dir: Option<&Path>) -> Library {
    let (texts, unread) = read_machine_dir(dir);
    Library::load(texts, unread)
}
