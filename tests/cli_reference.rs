//! `docs/CLI.md`, the command reference, is the command's own help: this test writes it again
//! from `onnx-dlq <command> --help` and fails when the file differs, so the reference cannot
//! drift from the flags. `UPDATE_CLI_REFERENCE=1 cargo test --test cli_reference` rewrites it.

mod common;

const COMMANDS: [&str; 7] = [
    "convert", "inspect", "verify", "diff", "finetune", "stages", "sweep",
];

fn help(args: &[&str]) -> String {
    let o = common::run(args);
    assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
    common::stdout(&o).trim_end().to_string()
}

/// The reference as the help prints it: the command list, then each command's full help.
fn reference() -> String {
    let top = help(&["--help"]);
    // The top-level help repeats convert's options after its command list.
    let list: Vec<&str> = top.lines().take_while(|l| *l != "Arguments:").collect();
    let mut s = String::from(
        "# Command reference\n\n\
         Generated from the command's own help (`onnx-dlq <command> --help`); \
         `tests/cli_reference.rs` keeps it current. How the options work together: README.md \
         and docs/GUIDE.md.\n\n```\n",
    );
    s += list.join("\n").trim_end();
    s += "\n```\n";
    for c in COMMANDS {
        s += &format!(
            "\n## `onnx-dlq {c}`\n\n```\n{}\n```\n",
            help(&[c, "--help"])
        );
    }
    s
}

#[test]
fn docs_cli_md_is_the_commands_help() {
    let path = common::repo().join("docs/CLI.md");
    let want = reference();
    if std::env::var_os("UPDATE_CLI_REFERENCE").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/CLI.md differs from the commands' help; rewrite it with \
         UPDATE_CLI_REFERENCE=1 cargo test --test cli_reference"
    );
}
