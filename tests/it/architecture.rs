//! The architecture, checked (docs/ARCHITECTURE.md): which module may use what, and no import
//! cycle between top-level modules.
//!
//! In the manner of rust-analyzer's tidy tests, the sources of `src/` are read as text and lexed
//! just enough to skip comments, string and char literals and test code (`#[cfg(test)]` items and
//! `tests.rs` files); every rule of `RULES` is then held against the paths that remain, and the
//! `crate::`/`super::` references between top-level modules must not form a cycle. A failure names
//! every offending `file:line` with its rule.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use Needle::{AttrKey, Path as P};

/// What a rule looks for.
#[derive(Debug, Clone, Copy)]
enum Needle {
    /// Path segments, contiguous within one path: `"env::var"` finds `std::env::var(..)`,
    /// `env::var(..)` and `use std::env::{var, ..}`, but not `env::var_os`. A trailing `::`
    /// wants more segments after them: `"emulator::"` finds `emulator::Settings`, not a
    /// variable called `emulator`.
    Path(&'static str),
    /// An argument of an attribute, as in clap's `#[arg(env = "..")]` or `#[arg(long, env)]`.
    AttrKey(&'static str),
}

/// One rule: `needles` may not appear in the files `within` (all of `src/` when empty), except
/// in those `allowed`. Both are prefixes of paths such as `src/broker/` or `src/config.rs`.
struct Rule {
    name: &'static str,
    needles: &'static [Needle],
    within: &'static [&'static str],
    allowed: &'static [&'static str],
    why: &'static str,
}

/// The rules. A boundary that moves is moved here, in `allowed`, in the same commit.
const RULES: &[Rule] = &[
    Rule {
        name: "lapin",
        needles: &[P("lapin")],
        within: &[],
        allowed: &["src/broker/"],
        why: "RabbitMQ is reached only through src/broker/",
    },
    Rule {
        name: "rusqlite",
        needles: &[P("rusqlite")],
        within: &[],
        allowed: &["src/store/"],
        why: "SQLite is reached only through the store (src/store/)",
    },
    Rule {
        name: "env",
        needles: &[
            P("env::var"),
            P("env::var_os"),
            P("env::vars"),
            P("env::vars_os"),
            P("env::temp_dir"),
            AttrKey("env"),
        ],
        within: &[],
        allowed: &["src/config.rs"],
        why: "the process environment is read only in src/config.rs; pass settings in",
    },
    Rule {
        name: "args",
        needles: &[P("env::args"), P("env::args_os")],
        within: &[],
        allowed: &["src/config.rs", "src/main.rs"],
        why: "the command line is read only in src/main.rs (clap) and src/config.rs",
    },
    Rule {
        name: "machine-io",
        needles: &[P("fs"), P("File"), P("OpenOptions"), P("read_to_string"), P("read_dir")],
        within: &["src/machine/"],
        allowed: &[],
        why: "src/machine/ is pure: it does no file IO, its callers read the files and pass text in",
    },
    Rule {
        name: "machine-clock",
        needles: &[P("Utc::now"), P("Local::now"), P("SystemTime"), P("Instant::now")],
        within: &["src/machine/"],
        allowed: &[],
        why: "src/machine/ is pure: the time comes in as an argument, never from the clock",
    },
    Rule {
        name: "machine-random",
        needles: &[P("rand"), P("getrandom"), P("fastrand"), P("thread_rng"), P("new_v4")],
        within: &["src/machine/"],
        allowed: &[],
        why: "src/machine/ is pure and deterministic: no randomness",
    },
    Rule {
        name: "emulator",
        needles: &[P("crate::emulator"), P("emulator::")],
        within: &[],
        allowed: &["src/emulator/", "src/cli", "src/demo/", "src/main.rs"],
        why: "the emulator is a tool for tests, demos and rehearsals; the daemon does not depend on it",
    },
    Rule {
        name: "reqwest",
        needles: &[P("reqwest")],
        within: &[],
        allowed: &["src/media/", "src/emulator/", "src/demo/", "src/engine/executor/http.rs", "src/cli/"],
        why: "HTTP clients live in src/media/, src/emulator/, src/demo/, the executor's http.rs and the CLI's \
              API client (src/cli/client.rs and the commands that use it)",
    },
    Rule {
        name: "anyhow",
        needles: &[P("anyhow")],
        within: &[],
        allowed: &["src/main.rs"],
        why: "modules return their own thiserror enums; anyhow only in src/main.rs",
    },
];

#[test]
fn the_sources_keep_the_architecture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    read_sources(root, &root.join("src"), &mut sources);
    assert!(sources.len() > 40, "only {} source files found under src/", sources.len());
    let borrowed: Vec<(&str, &str)> = sources.iter().map(|(path, text)| (path.as_str(), text.as_str())).collect();
    let findings = check(&borrowed);
    assert!(
        findings.is_empty(),
        "{} architecture violation(s); the rules are RULES in tests/it/architecture.rs, the reasons in \
         docs/ARCHITECTURE.md:\n{}\n",
        findings.len(),
        findings.join("\n")
    );
}

/// Every `.rs` file under `dir` but test files, as (path relative to `root` with `/`, text).
fn read_sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_sources(root, &path, out);
            continue;
        }
        let relative = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        if relative.ends_with(".rs") && !is_test_file(&relative) {
            out.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// `tests.rs` files hold a module's `#[cfg(test)] mod tests;`.
fn is_test_file(path: &str) -> bool {
    path.rsplit('/').next() == Some("tests.rs")
}

/// Every violation in `sources` ((path, text) pairs), one line each: those of `RULES` by file and
/// line, then the import cycles.
fn check(sources: &[(&str, &str)]) -> Vec<String> {
    let lexed: Vec<(&str, Vec<Token>)> =
        sources.iter().filter(|(path, _)| !is_test_file(path)).map(|(path, text)| (*path, lex(text))).collect();
    // (file, line, rule) -> what was found there
    let mut found: BTreeMap<(&str, usize, usize), BTreeSet<String>> = BTreeMap::new();
    for (path, tokens) in &lexed {
        let paths = paths(tokens);
        for (index, rule) in RULES.iter().enumerate().filter(|(_, rule)| applies(rule, path)) {
            for needle in rule.needles {
                for line in find(needle, tokens, &paths) {
                    found.entry((*path, line, index)).or_default().insert(describe(needle));
                }
            }
        }
    }
    let mut findings: Vec<String> = found
        .into_iter()
        .map(|((path, line, index), what)| {
            let rule = &RULES[index];
            let what: Vec<String> = what.into_iter().collect();
            format!("{path}:{line}: [{}] {}: {}", rule.name, what.join(", "), rule.why)
        })
        .collect();
    findings.extend(cycles(&lexed));
    findings
}

fn applies(rule: &Rule, path: &str) -> bool {
    (rule.within.is_empty() || rule.within.iter().any(|prefix| path.starts_with(prefix)))
        && !rule.allowed.iter().any(|prefix| path.starts_with(prefix))
}

fn describe(needle: &Needle) -> String {
    match needle {
        Needle::Path(path) => format!("`{}`", path.trim_end_matches("::")),
        Needle::AttrKey(key) => format!("`{key}` attribute argument"),
    }
}

/// The lines where `needle` is found.
fn find(needle: &Needle, tokens: &[Token], paths: &[PathRef]) -> Vec<usize> {
    match needle {
        Needle::Path(text) => {
            let wants_more = text.ends_with("::");
            let wanted: Vec<&str> = text.trim_end_matches("::").split("::").collect();
            paths.iter().filter(|path| contains(&path.segments, &wanted, wants_more)).map(|path| path.line).collect()
        }
        Needle::AttrKey(key) => attribute_keys(tokens, key),
    }
}

/// Whether `wanted` is a contiguous run of `segments` (followed by another segment if `wants_more`).
fn contains(segments: &[String], wanted: &[&str], wants_more: bool) -> bool {
    (0..segments.len()).any(|start| {
        let end = start + wanted.len();
        end <= segments.len()
            && segments[start..end].iter().zip(wanted).all(|(have, want)| have == want)
            && (!wants_more || end < segments.len())
    })
}

// ---------------------------------------------------------------------------------------------
// The lexer: identifiers and punctuation with their lines; comments, literals and test code gone.

#[derive(Debug, Clone, PartialEq)]
struct Token {
    text: String,
    line: usize,
}

impl Token {
    fn is_ident(&self) -> bool {
        self.text.starts_with(|c: char| c.is_alphabetic() || c == '_')
    }

    fn is(&self, text: &str) -> bool {
        self.text == text
    }
}

/// The tokens of `text` outside comments, string/char literals and `#[cfg(test)]` items.
fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut lexer = Lexer { chars: &chars, at: 0, line: 1, tokens: Vec::new() };
    lexer.run();
    strip_test_code(lexer.tokens)
}

struct Lexer<'a> {
    chars: &'a [char],
    at: usize,
    line: usize,
    tokens: Vec<Token>,
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    /// Moves on by one character, counting lines.
    fn bump(&mut self) {
        if self.peek(0) == Some('\n') {
            self.line += 1;
        }
        self.at += 1;
    }

    fn push(&mut self, text: String, line: usize) {
        self.tokens.push(Token { text, line });
    }

    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            let line = self.line;
            match c {
                '/' if self.peek(1) == Some('/') => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                '/' if self.peek(1) == Some('*') => self.block_comment(),
                '"' => self.string(),
                '\'' => self.quote(),
                ':' if self.peek(1) == Some(':') => {
                    self.at += 2;
                    self.push("::".into(), line);
                }
                c if c.is_alphanumeric() || c == '_' => self.word(),
                c if c.is_whitespace() => self.bump(),
                c => {
                    self.bump();
                    self.push(c.to_string(), line);
                }
            }
        }
    }

    /// `/* .. */`, nested.
    fn block_comment(&mut self) {
        let mut depth = 0;
        while let Some(c) = self.peek(0) {
            if c == '/' && self.peek(1) == Some('*') {
                depth += 1;
                self.at += 2;
            } else if c == '*' && self.peek(1) == Some('/') {
                depth -= 1;
                self.at += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.bump();
            }
        }
    }

    /// A `".."` literal, escapes included.
    fn string(&mut self) {
        self.bump();
        while let Some(c) = self.peek(0) {
            self.bump();
            match c {
                '\\' => self.bump(),
                '"' => return,
                _ => {}
            }
        }
    }

    /// A raw string from its opening quote: `".."#` with `hashes` hashes.
    fn raw_string(&mut self, hashes: usize) {
        self.bump();
        while self.peek(0).is_some() {
            if self.peek(0) == Some('"') && (1..=hashes).all(|ahead| self.peek(ahead) == Some('#')) {
                self.at += 1 + hashes;
                return;
            }
            self.bump();
        }
    }

    /// A char literal (`'x'`, `'\n'`, `'\u{..}'`) or a lifetime (`'a`).
    fn quote(&mut self) {
        let line = self.line;
        if self.peek(1) == Some('\\') {
            self.at += 3;
            while self.peek(0).is_some_and(|c| c != '\'') {
                self.bump();
            }
            self.bump();
        } else if self.peek(2) == Some('\'') {
            self.at += 1;
            self.bump();
            self.at += 1;
        } else {
            self.at += 1;
            let name = self.take_word();
            self.push(format!("'{name}"), line);
        }
    }

    fn take_word(&mut self) -> String {
        let start = self.at;
        while self.peek(0).is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    /// An identifier, keyword or number; or the prefix of a literal (`b".."`, `r#".."#`,
    /// `b'x'`, ..) or of a raw identifier (`r#type`).
    fn word(&mut self) {
        let line = self.line;
        let word = self.take_word();
        let prefix = matches!(word.as_str(), "b" | "c" | "r" | "br" | "cr");
        let raw = word.ends_with('r');
        match self.peek(0) {
            Some('"') if prefix && raw => self.raw_string(0),
            Some('"') if prefix => self.string(),
            Some('\'') if word == "b" => self.quote(),
            Some('#') if prefix && raw => {
                let hashes = (0..).take_while(|ahead| self.peek(*ahead) == Some('#')).count();
                if self.peek(hashes) == Some('"') {
                    self.at += hashes;
                    self.raw_string(hashes);
                } else if word == "r" {
                    self.at += 1;
                    let name = self.take_word();
                    self.push(name, line);
                } else {
                    self.push(word, line);
                }
            }
            _ => self.push(word, line),
        }
    }
}

/// `tokens` without the items marked `#[cfg(test)]` (the whole file after `#![cfg(test)]`).
fn strip_test_code(tokens: Vec<Token>) -> Vec<Token> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut at = 0;
    while at < tokens.len() {
        let Some(after) = cfg_test(&tokens, at) else {
            kept.push(tokens[at].clone());
            at += 1;
            continue;
        };
        if tokens[at + 1].is("!") {
            break;
        }
        at = skip_item(&tokens, after);
    }
    kept
}

/// When `#[cfg(test)]` (or `#![cfg(test)]`) starts at `at`: the index after it.
fn cfg_test(tokens: &[Token], at: usize) -> Option<usize> {
    let inner = tokens.get(at + 1).is_some_and(|token| token.is("!"));
    let start = at + usize::from(inner);
    let wanted = ["#", "[", "cfg", "(", "test", ")", "]"];
    let text =
        |offset: usize| tokens.get(if offset == 0 { at } else { start + offset }).map(|token| token.text.as_str());
    wanted.iter().enumerate().all(|(offset, want)| text(offset) == Some(want)).then_some(start + wanted.len())
}

/// The index after the item starting at `at` (its further attributes included): after the `;`
/// or the block that ends it.
fn skip_item(tokens: &[Token], mut at: usize) -> usize {
    while tokens.get(at).is_some_and(|token| token.is("#")) {
        at = matching(tokens, at + 1, "[", "]");
    }
    let mut depth = 0usize;
    while let Some(token) = tokens.get(at) {
        at += 1;
        match token.text.as_str() {
            ";" if depth == 0 => break,
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    at
}

/// The index after the `close` matching the `open` at `at` (at `at` when there is none).
fn matching(tokens: &[Token], at: usize, open: &str, close: &str) -> usize {
    if !tokens.get(at).is_some_and(|token| token.is(open)) {
        return at;
    }
    let mut depth = 0;
    for (index, token) in tokens.iter().enumerate().skip(at) {
        if token.is(open) {
            depth += 1;
        } else if token.is(close) {
            depth -= 1;
            if depth == 0 {
                return index + 1;
            }
        }
    }
    tokens.len()
}

/// The lines where `key` is an argument of an attribute: `#[x(key = ..)]`, `#[x(a, key)]`.
fn attribute_keys(tokens: &[Token], key: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        let bracket = if tokens.get(at + 1).is_some_and(|token| token.is("!")) { at + 2 } else { at + 1 };
        if !(tokens[at].is("#") && tokens.get(bracket).is_some_and(|token| token.is("["))) {
            at += 1;
            continue;
        }
        let end = matching(tokens, bracket, "[", "]");
        for index in bracket + 1..end.saturating_sub(1) {
            let before = &tokens[index - 1];
            let after = tokens.get(index + 1);
            if tokens[index].is(key)
                && (before.is("(") || before.is(","))
                && after.is_some_and(|token| token.is("=") || token.is(",") || token.is(")"))
            {
                lines.push(tokens[index].line);
            }
        }
        at = end;
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Paths: `a::b::c` in code, and each leaf of a `use` tree spelled out.

#[derive(Debug, Clone, PartialEq)]
struct PathRef {
    segments: Vec<String>,
    line: usize,
    /// The inline modules (`mod name { .. }`) it sits in, outermost first.
    inline: Vec<String>,
}

/// Every path of `tokens`, `use` trees expanded (`use a::{b, c::d}` gives `a::b` and `a::c::d`).
fn paths(tokens: &[Token]) -> Vec<PathRef> {
    let mut out = Vec::new();
    // (module name, brace depth inside it)
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut at = 0;
    while let Some(token) = tokens.get(at) {
        let names = || inline.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>();
        match token.text.as_str() {
            "{" => {
                depth += 1;
                at += 1;
            }
            "}" => {
                if inline.last().is_some_and(|(_, inside)| *inside == depth) {
                    inline.pop();
                }
                depth -= 1;
                at += 1;
            }
            "mod" if tokens.get(at + 2).is_some_and(|token| token.is("{")) => {
                inline.push((tokens[at + 1].text.clone(), depth + 1));
                at += 2;
            }
            "use" => {
                at += 1;
                let mut leaves = Vec::new();
                use_tree(tokens, &mut at, &[], &mut leaves);
                out.extend(leaves.into_iter().map(|(segments, line)| PathRef { segments, line, inline: names() }));
            }
            _ if token.is_ident() => {
                let mut segments = vec![token.text.clone()];
                at += 1;
                while tokens.get(at).is_some_and(|token| token.is("::"))
                    && tokens.get(at + 1).is_some_and(Token::is_ident)
                {
                    segments.push(tokens[at + 1].text.clone());
                    at += 2;
                }
                out.push(PathRef { segments, line: token.line, inline: names() });
            }
            _ => at += 1,
        }
    }
    out
}

/// Parses the `use` tree at `at` under `prefix`, pushing each leaf with the line it is on; leaves
/// `at` after the tree.
fn use_tree(tokens: &[Token], at: &mut usize, prefix: &[String], leaves: &mut Vec<(Vec<String>, usize)>) {
    let mut path = prefix.to_vec();
    while let Some(token) = tokens.get(*at) {
        match token.text.as_str() {
            "::" => *at += 1,
            "{" => {
                *at += 1;
                while let Some(token) = tokens.get(*at) {
                    match token.text.as_str() {
                        "}" => {
                            *at += 1;
                            return;
                        }
                        "," => *at += 1,
                        _ => {
                            let before = *at;
                            use_tree(tokens, at, &path, leaves);
                            if *at == before {
                                *at += 1;
                            }
                        }
                    }
                }
                return;
            }
            "*" => {
                *at += 1;
                leaves.push((path, token.line));
                return;
            }
            _ if token.is_ident() => {
                // `a::{self, b}`: `self` names `a` itself.
                if !token.is("self") || path.is_empty() {
                    path.push(token.text.clone());
                }
                *at += 1;
                if tokens.get(*at).is_some_and(|token| token.is("as")) {
                    *at += 2;
                }
                if !tokens.get(*at).is_some_and(|token| token.is("::")) {
                    leaves.push((path, token.line));
                    return;
                }
            }
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Import cycles between top-level modules.

/// The module path of a source file (`src/engine/executor.rs` is `engine::executor`); `None` for
/// the crate roots.
fn module_path(path: &str) -> Option<Vec<String>> {
    let inner = path.strip_prefix("src/")?.strip_suffix(".rs")?;
    if inner == "lib" || inner == "main" {
        return None;
    }
    let mut segments: Vec<String> = inner.split('/').map(str::to_string).collect();
    if segments.last().is_some_and(|last| last == "mod") {
        segments.pop();
    }
    Some(segments)
}

/// The top-level module a path in `module` refers to, if it leaves the crate root by `crate::`
/// or enough `super::`s.
fn target(module: &[String], segments: &[String]) -> Option<String> {
    match segments.first()?.as_str() {
        "crate" => segments.get(1).cloned(),
        "super" => {
            let ups = segments.iter().take_while(|segment| *segment == "super").count();
            let kept = module.len().checked_sub(ups)?;
            module[..kept].iter().chain(&segments[ups..]).next().cloned()
        }
        _ => None,
    }
}

/// The references between top-level modules: (from, to) with the first `file:line` of each.
fn edges(lexed: &[(&str, Vec<Token>)]) -> BTreeMap<(String, String), String> {
    let modules: BTreeSet<String> = lexed.iter().filter_map(|(path, _)| module_path(path)?.first().cloned()).collect();
    let mut edges = BTreeMap::new();
    for (path, tokens) in lexed {
        let Some(module) = module_path(path) else { continue };
        let Some(top) = module.first() else { continue };
        for reference in paths(tokens) {
            let mut within = module.clone();
            within.extend(reference.inline.iter().cloned());
            let Some(to) = target(&within, &reference.segments) else { continue };
            if modules.contains(&to) && to != *top {
                edges.entry((top.clone(), to)).or_insert_with(|| format!("{path}:{}", reference.line));
            }
        }
    }
    edges
}

/// One line per import cycle: the shortest cycle of each strongly connected component, with the
/// `file:line` of each edge.
fn cycles(lexed: &[(&str, Vec<Token>)]) -> Vec<String> {
    let edges = edges(lexed);
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from.as_str()).or_default().push(to.as_str());
    }
    let reach = |from: &str| -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([from]);
        while let Some(node) = queue.pop_front() {
            for &to in next.get(node).into_iter().flatten() {
                if seen.insert(to) {
                    queue.push_back(to);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&str, BTreeSet<&str>> = next.keys().map(|&node| (node, reach(node))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for (&node, reached) in &reachable {
        if done.contains(node) || !reached.contains(node) {
            continue;
        }
        let component: BTreeSet<&str> = reached
            .iter()
            .copied()
            .filter(|other| reachable.get(other).is_some_and(|back| back.contains(node)))
            .collect();
        done.extend(component.iter().copied());
        let Some(cycle) =
            component.iter().filter_map(|&start| shortest_cycle(start, &next, &component)).min_by_key(Vec::len)
        else {
            continue;
        };
        let names: Vec<&str> = component.iter().copied().collect();
        let mut text = format!(
            "import cycle among top-level modules {{{}}}; a shortest one: {} -> {}",
            names.join(", "),
            cycle.join(" -> "),
            cycle[0]
        );
        for (index, from) in cycle.iter().enumerate() {
            let to = cycle[(index + 1) % cycle.len()];
            let at = edges.get(&(from.to_string(), to.to_string())).map_or("?", String::as_str);
            text.push_str(&format!("\n    {at}: [cycle] {from} -> {to}"));
        }
        out.push(text);
    }
    out
}

/// The shortest path from `start` back to itself within `component`, as its nodes.
fn shortest_cycle<'a>(
    start: &'a str,
    next: &BTreeMap<&'a str, Vec<&'a str>>,
    component: &BTreeSet<&'a str>,
) -> Option<Vec<&'a str>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &to in next.get(node).into_iter().flatten() {
            if !component.contains(to) {
                continue;
            }
            if to == start {
                let mut cycle = vec![node];
                while let Some(&back) = parent.get(cycle[cycle.len() - 1]) {
                    cycle.push(back);
                }
                cycle.reverse();
                return Some(cycle);
            }
            if !parent.contains_key(to) {
                parent.insert(to, node);
                queue.push_back(to);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The checker, checked: each rule fails on a deliberate violation, in sources held in memory.

mod checker {
    use super::*;

    /// A violation of each rule, by name: (file, source).
    const VIOLATIONS: &[(&str, &str, &str)] = &[
        ("lapin", "src/engine/mod.rs", "use lapin::Channel;"),
        ("rusqlite", "src/daemon.rs", "fn open() { let _ = rusqlite::Connection::open_in_memory(); }"),
        ("env", "src/daemon.rs", "fn f() { let _ = std::env::var(\"HOME\"); }"),
        ("args", "src/cli.rs", "fn f() { let _ = std::env::args().count(); }"),
        ("machine-io", "src/machine/load.rs", "fn f(p: &str) { let _ = std::fs::read_to_string(p); }"),
        ("machine-clock", "src/machine/mod.rs", "fn f() { let _ = chrono::Utc::now(); }"),
        ("machine-random", "src/machine/expr.rs", "fn f() -> u8 { rand::random() }"),
        ("emulator", "src/engine/mod.rs", "use crate::emulator::Emulator;"),
        ("reqwest", "src/engine/executor.rs", "fn f() { let _ = reqwest::Client::new(); }"),
        ("anyhow", "src/daemon.rs", "fn f() -> anyhow::Result<()> { Ok(()) }"),
    ];

    fn run(sources: &[(&str, &str)]) -> Vec<String> {
        check(sources)
    }

    #[test]
    fn every_rule_fails_on_a_violation_and_names_its_file_and_line() {
        for rule in RULES {
            let Some((_, path, source)) = VIOLATIONS.iter().find(|(name, _, _)| *name == rule.name) else {
                panic!("rule {} has no deliberate violation in VIOLATIONS", rule.name);
            };
            let source = format!("//! A module.\n\n{source}\n");
            let findings = run(&[(*path, source.as_str())]);
            let wanted = format!("{path}:3: [{}]", rule.name);
            assert!(findings.iter().any(|finding| finding.starts_with(&wanted)), "{wanted} not in {findings:#?}");
        }
    }

    #[test]
    fn allowed_files_may_do_what_the_rules_forbid_elsewhere() {
        let allowed = [
            ("src/broker/mod.rs", "use lapin::Channel;"),
            ("src/store/sqlite.rs", "use rusqlite::Connection;"),
            ("src/config.rs", "use std::env::{self, var, vars_os};\nfn f() { env::var_os(\"X\"); env::args(); }"),
            (
                "src/main.rs",
                "fn main() -> anyhow::Result<()> { let _ = std::env::args(); onair::emulator::run(); Ok(()) }",
            ),
            ("src/cli.rs", "use crate::emulator::Settings;"),
            ("src/demo/client.rs", "use crate::emulator; fn f(c: reqwest::Client) {}"),
            ("src/engine/executor/http.rs", "use reqwest::Client;"),
            ("src/media/client.rs", "use reqwest::Client;"),
            (
                "src/daemon.rs",
                "fn f() { let _ = std::fs::read_to_string(\"x\"); chrono::Utc::now(); rand::random::<u8>(); }",
            ),
        ];
        assert_eq!(run(&allowed), Vec::<String>::new());
    }

    #[test]
    fn the_environment_is_found_however_it_is_named() {
        let source = "use std::env::{self, vars_os};\n\
                      use std::env::var as read;\n\
                      fn f() { let _ = env::var_os(\"A\"); }\n\
                      #[derive(clap::Parser)]\n\
                      struct Cli {\n\
                          #[arg(long, env = \"ONAIR_CONFIG\")]\n\
                          config: String,\n\
                          #[arg(long, env)]\n\
                          other: String,\n\
                      }\n\
                      fn g(env: u8) { let env = 3; let _ = env == 3; }\n";
        let findings = run(&[("src/cli.rs", source)]);
        let lines: Vec<&str> = findings.iter().map(|finding| finding.split(": ").next().unwrap()).collect();
        assert_eq!(
            lines,
            ["src/cli.rs:1", "src/cli.rs:2", "src/cli.rs:3", "src/cli.rs:6", "src/cli.rs:8"],
            "{findings:#?}"
        );
    }

    #[test]
    fn comments_literals_and_test_code_are_not_code() {
        let source = r###"// use lapin::Channel;
/// lapin in a doc comment
/* rusqlite /* nested */ lapin */
fn f<'a>(x: &'a str) -> usize {
    let s = "lapin \" rusqlite";
    let r = r#"lapin " rusqlite"#;
    let b = br##"anyhow"#"##;
    let c = '"';
    let d = b'\'';
    let e = '\u{1F600}';
    s.len() + r.len() + b.len() + x.len()
}
#[cfg(test)]
mod tests {
    use lapin::Channel;
    fn g() { let _ = '}'; }
}
#[cfg(test)]
use rusqlite::Connection;
fn after() { let _ = lapin::Channel::default(); }
"###;
        let findings = run(&[("src/engine/mod.rs", source), ("src/engine/tests.rs", "use lapin::Channel;")]);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert!(findings[0].starts_with("src/engine/mod.rs:20: [lapin]"), "{findings:#?}");
    }

    #[test]
    fn use_trees_are_spelled_out() {
        let tokens = lex("use crate::{broker::Publisher, store::{self, Store as S}, clock::*};");
        let leaves: Vec<String> = paths(&tokens).iter().map(|path| path.segments.join("::")).collect();
        assert_eq!(leaves, ["crate::broker::Publisher", "crate::store", "crate::store::Store", "crate::clock"]);
    }

    #[test]
    fn an_import_cycle_fails_with_its_shortest_cycle_and_each_edge() {
        let sources = [
            ("src/lib.rs", "pub mod a; pub mod b; pub mod c;"),
            ("src/a.rs", "//! A.\nuse crate::b::Thing;"),
            ("src/b/mod.rs", "mod inner;\nuse crate::{a, c};"),
            ("src/b/inner.rs", "fn f() { super::super::c::g(); }"),
            ("src/c.rs", "fn g() {}\n\nfn h() { crate::a::f(); }"),
            ("src/d.rs", "use crate::a::Thing;"),
        ];
        let findings = run(&sources);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        let cycle = &findings[0];
        assert!(
            cycle.starts_with("import cycle among top-level modules {a, b, c}; a shortest one: a -> b -> a"),
            "{cycle}"
        );
        assert!(cycle.contains("\n    src/a.rs:2: [cycle] a -> b"), "{cycle}");
        assert!(cycle.contains("\n    src/b/mod.rs:2: [cycle] b -> a"), "{cycle}");
    }

    #[test]
    fn super_paths_and_inline_modules_resolve_to_their_top_level_module() {
        let sources = [
            ("src/x/y.rs", "use super::super::z::Q;\nmod inner { use super::super::super::w::R; }"),
            ("src/z.rs", "use super::w;"),
            ("src/w.rs", "use self::helper::H;"),
        ];
        let lexed: Vec<(&str, Vec<Token>)> = sources.iter().map(|(path, text)| (*path, lex(text))).collect();
        let found: Vec<(String, String)> = edges(&lexed).into_keys().collect();
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        assert_eq!(found, pairs(&[("x", "w"), ("x", "z"), ("z", "w")]));
        assert!(run(&sources).is_empty());
    }
}
