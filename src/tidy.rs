//! Tidy: the house style (`STYLE.md` of the project's design notes, summed up in
//! `ARCHITECTURE.md`) checked by `cargo test`, so a reviewer does not have to. It reads every
//! source file under `src/` and reports every breach with its file and line: lines over 100
//! columns, a file that does not open with a `//!` paragraph, a function over 70 lines, `unsafe`
//! outside `src/io` or without a `// SAFETY:` line, a test that does not state its goal in its
//! first comment, leftover debugging macros and markers, and imports or calls a layer
//! must not make (no clock, OS randomness, `HashMap`, `Box::new` or driver in the deterministic
//! core; no simulator in the driver). It also checks that `docs/data-file.md` carries the
//! command table the typed header views render. The scan is line-based: it relies on rustfmt's
//! layout (a function's closing brace at the indentation of its `fn`).

use std::fs;
use std::path::Path;

const LINE_COLUMNS_MAX: usize = 100;
const FUNCTION_LINES_MAX: usize = 70;

/// What the deterministic core must not name outside its tests: no clock, no OS randomness or
/// environment, no unordered or boxed allocation, no driver or CLI.
const CORE_BANNED: &[&str] = &[
    "Instant",
    "SystemTime",
    "std::time",
    "std::env",
    "std::fs",
    "std::net",
    "std::thread",
    "getrandom",
    "HashMap",
    "HashSet",
    "Box::new",
    "crate::io",
    "crate::sim",
    "crate::cli",
    "crate::benchmark",
    "crate::client",
];

/// What a layer (a directory under `src/`) must not name outside its tests, and why.
const BANNED: &[(&str, &[&str], &str)] = &[
    ("src/vsr/", CORE_BANNED, "the protocol core is deterministic and allocates only at startup"),
    (
        "src/state_machine/",
        CORE_BANNED,
        "the state machine is deterministic and allocates only at startup",
    ),
    (
        "src/state_machine/",
        &["crate::vsr::superblock"],
        "the superblock copies the event store's checkpoint state in and out, not the reverse",
    ),
    ("src/cli_client.rs", &["crate::cli::"], "both CLI modules stand on `arguments`"),
    ("src/io/", &["crate::sim", "crate::cli"], "the driver stands below the simulator and CLI"),
    ("src/sim/", &["crate::io", "crate::cli"], "the simulator drives the core, not the driver"),
];

struct SourceFile {
    /// Relative to the crate root, with `/` separators: `src/vsr/replica.rs`.
    path: String,
    lines: Vec<String>,
}

impl SourceFile {
    fn is_test_file(&self) -> bool {
        self.path.ends_with("/tests.rs") || self.path.starts_with("src/tests/")
    }

    /// The index of the first line of test code (`#[cfg(test)]` before a `mod` at the end of
    /// the file), or the line count.
    fn test_code_start(&self) -> usize {
        if self.is_test_file() {
            return 0;
        }
        let lines = &self.lines;
        (0..lines.len())
            .find(|&index| {
                lines[index].trim() == "#[cfg(test)]"
                    && lines.get(index + 1).is_some_and(|next| next.starts_with("mod "))
            })
            .unwrap_or(lines.len())
    }
}

fn source_files() -> Vec<SourceFile> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    collect(&root.join("src"), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path).expect("source file is UTF-8");
            let relative = path.strip_prefix(root).expect("under the root");
            let path = relative.to_str().expect("UTF-8 path").replace('\\', "/");
            SourceFile { path, lines: text.lines().map(str::to_owned).collect() }
        })
        .collect()
}

fn collect(directory: &Path, paths: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(directory).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            // A client built apart (the Python one) keeps its build under its own `target`.
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            collect(&path, paths);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            paths.push(path);
        }
    }
}

/// A function's first line (`fn` at `indent`) and its body's line count, for each function
/// whose body is on its own lines.
fn functions(lines: &[String]) -> Vec<(usize, String, usize)> {
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some(name) = function_name(trimmed) else { continue };
        let closing = format!("{}}}", " ".repeat(indent));
        let signature_end = (index..lines.len()).find(|&end| {
            let text = lines[end].trim_end();
            text.ends_with('{') || text.ends_with(';') || text.ends_with('}')
        });
        let Some(signature_end) = signature_end else { continue };
        let text = lines[signature_end].trim_end();
        if !text.ends_with('{') {
            continue; // A declaration, or a one-line body.
        }
        if let Some(end) = (signature_end + 1..lines.len()).find(|&end| lines[end] == closing) {
            found.push((index, name, end - index + 1));
        }
    }
    found
}

fn function_name(trimmed: &str) -> Option<String> {
    let mut rest = trimmed;
    let qualifiers = ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "extern \"C\" "];
    for prefix in qualifiers.iter().chain([&concat!("unsafe", " ")]) {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    let name: String =
        rest.chars().take_while(|char| char.is_alphanumeric() || *char == '_').collect();
    (!name.is_empty()).then_some(name)
}

fn breaches() -> Vec<String> {
    let mut breaches = Vec::new();
    for file in source_files() {
        file_breaches(&file, &mut breaches);
    }
    breaches
}

fn file_breaches(file: &SourceFile, breaches: &mut Vec<String>) {
    let path = &file.path;
    let mut breach =
        |line: usize, what: String| breaches.push(format!("{path}:{}: {what}", line + 1));
    if !file.lines.first().is_some_and(|line| line.starts_with("//!")) {
        breach(0, "a source file opens with a `//!` paragraph saying what it is for".into());
    }
    let test_start = file.test_code_start();
    for (index, line) in file.lines.iter().enumerate() {
        let columns = line.chars().count();
        if columns > LINE_COLUMNS_MAX {
            breach(index, format!("{columns} columns, over {LINE_COLUMNS_MAX}"));
        }
        // Spelled in pieces so that this file does not breach its own rules.
        let leftovers = [concat!("dbg", "!("), concat!("todo", "!("), concat!("FIX", "ME")];
        for banned in leftovers.iter().chain([&concat!("unimplemented", "!(")]) {
            if line.contains(banned) {
                breach(index, format!("`{banned}` left in"));
            }
        }
        let code = line.split("//").next().unwrap_or("");
        let keyword = concat!("unsafe", " ");
        if code.contains(keyword) && !code.contains("forbid(unsafe") {
            if !path.starts_with("src/io/") {
                breach(index, "`unsafe` outside `src/io`".into());
            } else if code.contains(concat!("unsafe", " {"))
                && !safety_comment_above(&file.lines, index)
            {
                breach(index, "an `unsafe` block without a `// SAFETY:` line above it".into());
            }
        }
        if index < test_start && limit_defined_outside_constants(path, code) {
            breach(index, "a limit (`*_MAX`, `*_TICKS`) belongs in src/constants.rs".into());
        }
        if index < test_start {
            for (layer, names, why) in BANNED {
                if !path.starts_with(layer) {
                    continue;
                }
                for name in names.iter().filter(|name| code.contains(*name)) {
                    breach(index, format!("`{name}` in {layer}: {why}"));
                }
            }
        }
    }
    for (index, name, count) in functions(&file.lines) {
        if index < test_start && count > FUNCTION_LINES_MAX {
            breach(index, format!("fn {name} has {count} lines, over {FUNCTION_LINES_MAX}"));
        }
    }
    for index in (0..file.lines.len()).filter(|&index| file.lines[index].trim() == "#[test]") {
        if !test_states_its_goal(&file.lines, index) {
            breach(index, "a test states its goal in a comment on its first line".into());
        }
    }
}

/// A `const NAME_MAX`, `NAME_TICKS` or `NAME_TICKS_MIN` of the replica (the core or the driver)
/// defined elsewhere than in `src/constants.rs`, where every limit is.
fn limit_defined_outside_constants(path: &str, code: &str) -> bool {
    let layers = ["src/vsr/", "src/state_machine/", "src/io/"];
    if path == "src/constants.rs" || !layers.iter().any(|layer| path.starts_with(layer)) {
        return false;
    }
    let Some((_, rest)) = code.split_once("const ") else { return false };
    let name: String =
        rest.chars().take_while(|char| char.is_ascii_uppercase() || *char == '_').collect();
    let limit = ["_MAX", "_TICKS", "_TICKS_MIN"].iter().any(|suffix| name.ends_with(suffix));
    !name.is_empty() && limit && !code.trim_start().starts_with("//")
}

/// A `// SAFETY:` comment in the lines just above: its paragraph may be long, and the
/// statement may span a few lines.
fn safety_comment_above(lines: &[String], index: usize) -> bool {
    (index.saturating_sub(16)..=index).any(|above| lines[above].contains("SAFETY:"))
}

/// The first line inside the test's body (after attributes and its signature) is a comment.
fn test_states_its_goal(lines: &[String], attribute: usize) -> bool {
    let Some(body) = (attribute..lines.len()).find(|&index| lines[index].trim_end().ends_with('{'))
    else {
        return false;
    };
    lines.get(body + 1).is_some_and(|line| line.trim_start().starts_with("//"))
}

#[test]
fn source_follows_the_house_style() {
    // Goal: every breach of the mechanical rules of the house style, listed with its place.
    let breaches = breaches();
    assert!(breaches.is_empty(), "{} breaches:\n{}", breaches.len(), breaches.join("\n"));
}

#[test]
fn tidy_finds_what_it_checks() {
    // Goal: each rule fires on a breach and stays silent on code that keeps it, so the test
    // above cannot pass by checking nothing.
    let lines = |text: &str| text.lines().map(str::to_owned).collect::<Vec<_>>();
    let long_body: String = (0..FUNCTION_LINES_MAX).map(|_| "    step();\n").collect();
    let source = format!(
        "//! A module.\nfn short() {{\n    step();\n}}\n\nfn long() {{\n{long_body}}}\n\
         #[test]\nfn quiet() {{\n    step();\n}}\n\n#[test]\nfn spoken() {{\n    // Goal: x.\n}}\n\
         fn clock() {{\n    let now = std::time::Instant::now();\n    let x = {};\n}}\n\
         const RETRY_TICKS: u64 = 3;\n",
        "y".repeat(LINE_COLUMNS_MAX),
    );
    let file = SourceFile { path: "src/vsr/example.rs".into(), lines: lines(&source) };
    let mut found = Vec::new();
    file_breaches(&file, &mut found);
    let has = |what: &str| found.iter().filter(|breach| breach.contains(what)).count();
    assert_eq!(has("fn long has"), 1, "{found:?}");
    assert_eq!(has("fn short"), 0);
    assert_eq!(has("states its goal"), 1, "{found:?}");
    assert_eq!(has("`Instant`"), 1);
    assert_eq!(has("`std::time`"), 1);
    assert_eq!(has("columns, over"), 1);
    assert_eq!(has("belongs in src/constants.rs"), 1);
    let unsafe_file = SourceFile {
        path: "src/io/example.rs".into(),
        lines: lines(concat!("//! A module.\nfn f() {\n    unsafe", " { g() };\n}\n")),
    };
    let mut found = Vec::new();
    file_breaches(&unsafe_file, &mut found);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("SAFETY"));
    let no_doc = SourceFile { path: "src/sim/example.rs".into(), lines: lines("use x;\n") };
    let mut found = Vec::new();
    file_breaches(&no_doc, &mut found);
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn the_data_file_doc_carries_the_command_table_the_views_render() {
    // Goal: docs/data-file.md's table of commands and their fields is the one the typed header
    // views render, so the doc cannot drift from the code (it did: three rows disagreed). Here
    // with the other checks that read the repository's files, not in src/vsr, which does no
    // I/O.
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/data-file.md"))
        .expect("docs/data-file.md");
    let table = crate::vsr::header::views::views_doc();
    assert!(
        doc.contains(&table),
        "docs/data-file.md lacks the command table the views render; put this in it:\n{table}"
    );
}
