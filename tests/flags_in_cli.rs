//! The library speaks in the domain's words; only `src/cli/` names the command line's flags.
//! A message outside it that points at a setting names it through `setting::name`, which the
//! command line maps to its flag (and the Python package's keywords follow the same names).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

mod common;

/// Every long flag of every command.
fn flags() -> BTreeSet<String> {
    fn walk(command: &clap::Command, out: &mut BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                out.insert(format!("--{long}"));
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&onnx_dlq::cli::Cli::command(), &mut out);
    out
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The flags named in the code (not the comments) of `text`.
fn named(text: &str, flags: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for (at, _) in code.match_indices("--") {
            let rest = &code[at..];
            let end = rest[2..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(rest.len(), |e| e + 2);
            if flags.contains(&rest[..end]) {
                found.push(format!("line {}: {}", i + 1, &rest[..end]));
            }
        }
    }
    found
}

#[test]
fn no_flag_is_named_outside_the_command_line() {
    let flags = flags();
    assert!(flags.contains("--input-shape") && flags.contains("--max-memory"));
    let src = common::repo().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let cli = src.join("cli");
    let offenders: Vec<String> = files
        .iter()
        .filter(|p| !p.starts_with(&cli))
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            named(&text, &flags)
                .into_iter()
                .map(move |hit| format!("{}: {hit}", p.display()))
        })
        .collect();
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn the_scan_finds_a_flag_in_code_and_not_in_comments() {
    let flags: BTreeSet<String> = ["--ratio".to_string()].into();
    let text = "// --ratio in a comment\nbail!(\"use --ratio 4\");\nlet x = a--b;";
    assert_eq!(named(text, &flags), vec!["line 2: --ratio"]);
}
