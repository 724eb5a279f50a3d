//! The repository speaks to its users: its documents, code, scripts and test names say what
//! things are and what was measured, never which numbered work item or working session
//! produced them, nor a work item's bar: those mean nothing to a user.

use std::path::{Path, PathBuf};

mod common;

/// Where the repository speaks: every text file under these (recursively), and these files.
const DIRS: [&str; 8] = [
    "src",
    "tests",
    "crates",
    "scripts",
    "docs",
    "benches",
    ".ci",
    "fuzz/fuzz_targets",
];
const FILES: [&str; 5] = [
    "README.md",
    "BENCHMARKS.md",
    "Cargo.toml",
    "models/README.md",
    "fuzz/Cargo.toml",
];
const EXTENSIONS: [&str; 8] = ["rs", "md", "py", "sh", "toml", "txt", "json", "pyi"];

fn texts(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            texts(&p, out);
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| EXTENSIONS.contains(&x))
        {
            out.push(p);
        }
    }
}

/// The development words in `text`: a work item or session by number (with a space, a hyphen
/// or a `#` before the number, singular or plural) or a work item named with "the" (the test
/// below lists the forms). The words are spelled in pieces so that this file does not match
/// itself.
fn development_words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let words = [["iss", "ue"].concat(), ["sess", "ion"].concat()];
    let mut found = Vec::new();
    for w in &words {
        for (at, _) in lower.match_indices(w.as_str()) {
            let before = lower[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric()) {
                continue;
            }
            let rest = lower[at + w.len()..].trim_start_matches('s');
            let numbered = rest
                .strip_prefix([' ', '-', '#', '_'])
                .map(|r| r.trim_start_matches('#'))
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
            let the = lower[..at].ends_with("the ") && w.starts_with('i');
            if numbered || the {
                let end = (at + w.len() + 12).min(lower.len());
                let end = (end..=lower.len())
                    .find(|&i| lower.is_char_boundary(i))
                    .unwrap();
                found.push(text[at.saturating_sub(4)..end].replace('\n', " "));
            }
        }
    }
    found
}

#[test]
fn documents_code_and_tests_name_no_development_step() {
    let root = common::repo();
    let mut files: Vec<PathBuf> = FILES.iter().map(|f| root.join(f)).collect();
    for d in DIRS {
        texts(&root.join(d), &mut files);
    }
    let mut offences = Vec::new();
    for f in files.iter().filter(|f| f.is_file()) {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for w in development_words(&text) {
            let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
            offences.push(format!("{rel}: …{w}…"));
        }
    }
    assert!(
        offences.is_empty(),
        "words of how the project was developed:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_check_finds_what_it_looks_for() {
    let w = ["iss", "ue"].concat();
    let s = ["sess", "ion"].concat();
    for bad in [
        format!("as {w} 14 asked"),
        format!("({s} 22)"),
        format!("{w}s 3-5"),
        format!("the {s}-24 section"),
        format!("{w} #7"),
        format!("the {w}'s bar"),
    ] {
        assert_eq!(development_words(&bad).len(), 1, "{bad}");
    }
    for fine in [
        format!("an ORT {s} per worker"),
        format!("tissue {w}r"),
        format!("{s}s of ORT"),
    ] {
        assert!(development_words(&fine).is_empty(), "{fine}");
    }
}
