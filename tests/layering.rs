//! The crate's folders are layers of the pipeline, and each may use only the layers before it
//! (lib.rs and docs/ARCHITECTURE.md). This test reads every source file and fails, listing file
//! and path, where a layer reaches a later one: such a dependency makes the early layer
//! untestable on its own and the pipeline circular.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers in pipeline order. Entries that share a rank (`cli` and `harness`, the two ends
/// the outside world calls) may not use each other either: neither comes before the other.
const LAYERS: &[&[&str]] = &[
    // The services every layer may use, and which use no layer themselves: the generated
    // protobuf messages, progress reporting, the typed invalid-setting error.
    &["proto", "progress", "setting"],
    &["onnx"],
    &["codebook"],
    &["engine"],
    &["analysis"],
    &["lower"],
    &["eval"],
    &["calibrate"],
    &["quantize"],
    &["budget"],
    &["finetune"],
    &["convert"],
    &["report"],
    &["experiments"],
    &["cli", "harness"],
];

/// Services any layer may use (the first rank of [`LAYERS`]).
const ANYONE_MAY_USE: &[&str] = &["proto", "progress", "setting"];

/// Layers held to a stricter rule than their rank gives them, with what they may use:
/// the clustering is pure arithmetic on arrays and knows nothing of ONNX, so it can be
/// benchmarked, fuzzed and reused without a model.
const STRICTER: &[(&str, &[&str])] = &[("codebook", &["progress", "setting"])];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|r| r.contains(&layer))
}

/// `src` with comments (line, doc and nested block), string, raw string and char literals
/// blanked out, so that only code is searched. Newlines are kept, for line numbers.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(i + k).copied().unwrap_or('\0');
        if at(0) == '/' && at(1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(0) == '/' && at(1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if at(0) == 'r'
            && (at(1) == '"' || at(1) == '#')
            && !(i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // Raw string r#"…"#: count the hashes, then find the quote followed by as many.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() {
                if c[j] == '"' && (1..=hashes).all(|h| c.get(j + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                blank(&mut out, c[j]);
                j += 1;
            }
            i = j;
        } else if at(0) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                }
                i += 1;
            }
            i += 1;
        } else if at(0) == '\'' && (at(1) == '\\' || at(2) == '\'') {
            // A char literal ('x', '\n', '\''); a lone quote is a lifetime and stays.
            // Past the opening quote and the first char (two for an escape, which may be a quote).
            i += if at(1) == '\\' { 3 } else { 2 };
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_at(s: &[u8], mut i: usize) -> (String, usize) {
    while i < s.len() && s[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&s[start..i]).into_owned(), i)
}

/// The top-level modules named after `crate::` (including each item of `crate::{a, b::c}`),
/// with their line numbers.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let s = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("crate") {
        let at = from + k;
        from = at + 5;
        let word_start = at == 0 || !(s[at - 1].is_ascii_alphanumeric() || s[at - 1] == b'_');
        let rest = code[from..].trim_start();
        if !word_start || !rest.starts_with("::") {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let after = code.len() - rest.len() + 2;
        let next = code[after..].trim_start();
        if let Some(group) = next.strip_prefix('{') {
            // Split the group at top-level commas and take each item's first segment.
            let (mut depth, mut item_start) = (0usize, true);
            let g = group.as_bytes();
            let mut j = 0;
            while j < g.len() {
                match g[j] {
                    b'{' => depth += 1,
                    b'}' if depth == 0 => break,
                    b'}' => depth -= 1,
                    b',' if depth == 0 => item_start = true,
                    _ => {}
                }
                if item_start && (g[j].is_ascii_alphabetic() || g[j] == b'_') {
                    let (name, end) = ident_at(g, j);
                    found.push((line, name));
                    item_start = false;
                    j = end;
                    continue;
                }
                j += 1;
            }
        } else {
            let (name, _) = ident_at(s, code.len() - next.len());
            found.push((line, name));
        }
    }
    found
}

/// For each byte of `code`, how many inline `mod name { … }` blocks enclose it: `super` inside
/// one (a `mod tests`, say) climbs out of that block before it climbs out of the file.
fn inline_mod_depths(code: &str) -> Vec<usize> {
    let s = code.as_bytes();
    let mut depths = Vec::with_capacity(s.len());
    // One entry per open brace: whether it opened an inline module.
    let mut stack: Vec<bool> = Vec::new();
    let mut mod_pending = false;
    let mut i = 0;
    while i < s.len() {
        let word_start = i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        if word_start && code[i..].starts_with("mod") {
            let (word, end) = ident_at(s, i);
            if word == "mod" {
                mod_pending = true;
                let (_, after_name) = ident_at(s, end);
                depths.resize(after_name, stack.iter().filter(|m| **m).count());
                i = after_name;
                continue;
            }
        }
        match s[i] {
            b'{' => {
                stack.push(mod_pending);
                mod_pending = false;
            }
            b'}' => {
                stack.pop();
            }
            // `mod name;`: a module in another file, no block follows.
            b';' => mod_pending = false,
            _ => {}
        }
        depths.push(stack.iter().filter(|m| **m).count());
        i += 1;
    }
    depths
}

/// `super::` paths leave the current module; once they climb above the layer's root module
/// they reach the crate root, so `super::x` there means `crate::x`. Those, with their line
/// numbers, given how deep the file's module is below its layer's root.
fn super_paths(code: &str, file_depth: usize) -> Vec<(usize, String)> {
    let s = code.as_bytes();
    let inline = inline_mod_depths(code);
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("super") {
        let at = from + k;
        from = at + 5;
        if at > 0 && (s[at - 1].is_ascii_alphanumeric() || s[at - 1] == b'_' || s[at - 1] == b':') {
            continue;
        }
        // Follow the chain super::super::…
        let (mut ups, mut j) = (0, at);
        while code[j..].starts_with("super") {
            let Some(after) = code[j + 5..].trim_start().strip_prefix("::") else {
                break;
            };
            ups += 1;
            j = code.len() - after.trim_start().len();
        }
        if ups > file_depth + inline[at] {
            let (name, _) = ident_at(s, j);
            let line = code[..at].matches('\n').count() + 1;
            found.push((line, name));
        }
    }
    found
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's layer and how deep its module sits below the layer's root module.
fn layer_of(src: &Path, file: &Path) -> Option<(String, usize)> {
    let rel = file.strip_prefix(src).unwrap();
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let (layer, depth) = if parts.len() == 1 {
        // src/cli.rs, src/harness.rs: a layer in one file; lib.rs and main.rs are the root.
        (parts[0].trim_end_matches(".rs").to_string(), 0)
    } else {
        let last = parts.last().unwrap();
        let nested = parts.len() - 1 - usize::from(last == "mod.rs");
        (parts[0].clone(), nested)
    };
    rank(&layer).map(|_| (layer, depth))
}

#[test]
fn each_layer_uses_only_earlier_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut layers_seen = BTreeSet::new();
    for file in &files {
        let Some((layer, depth)) = layer_of(&src, file) else {
            continue;
        };
        layers_seen.insert(layer.clone());
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let mut used = crate_paths(&code);
        used.extend(super_paths(&code, depth));
        let own = rank(&layer).unwrap();
        let stricter = STRICTER.iter().find(|(l, _)| *l == layer).map(|(_, a)| *a);
        for (line, name) in used {
            if name == layer || ANYONE_MAY_USE.contains(&name.as_str()) {
                continue;
            }
            let allowed = match (stricter, rank(&name)) {
                (Some(only), _) => only.contains(&name.as_str()),
                (None, Some(r)) => r < own,
                // Not a layer (a crate-root item such as a macro): nothing to check.
                (None, None) => true,
            };
            if !allowed {
                violations.push(format!(
                    "{}:{line}: `{layer}` uses `crate::{name}`",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    // Guard against the test checking nothing (a moved tree, a broken walk).
    for l in [
        "progress", "setting", "onnx", "codebook", "lower", "convert", "cli",
    ] {
        assert!(layers_seen.contains(l), "no files found for layer `{l}`");
    }
    assert!(
        violations.is_empty(),
        "layers reaching later layers (order: {LAYERS:?}; anyone may use {ANYONE_MAY_USE:?}; \
         {STRICTER:?}):\n{}",
        violations.join("\n")
    );
}

/// The pipeline lives in the folders: at most 8 source files directly in `src/`.
#[test]
fn few_files_directly_in_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let top: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        top.len() <= 8,
        "{} files directly in src/: {top:?}",
        top.len()
    );
}

/// The scanner itself: comments and strings do not count, groups and `super` chains do.
#[test]
fn the_scanner_finds_paths_in_code_only() {
    let code = code_only(
        "use crate::{onnx::model, lower::{self, X}};\n\
         // crate::report in a comment\n\
         /// crate::cli in a doc comment\n\
         /* crate::eval /* nested */ crate::eval */\n\
         let s = \"crate::convert\"; let r = r#\"crate::calibrate\"#; let c = '\"';\n\
         let x = crate::engine::run(); fn f<'a>(_: &'a str) {}\n\
         let y = my_crate::analysis::f();\n",
    );
    let names: Vec<(usize, String)> = crate_paths(&code);
    assert_eq!(
        names,
        [
            (1, "onnx".to_string()),
            (1, "lower".to_string()),
            (6, "engine".to_string())
        ]
    );
    let sup = super_paths(
        &code_only(
            "use super::super::convert;\nuse super::x;\n\
             mod a;\nmod tests { use super::super::y; fn f() { super::super::super::z(); } }\n",
        ),
        1,
    );
    assert_eq!(sup, [(1, "convert".to_string()), (4, "z".to_string())]);
}

/// A `use` tree or path after its first segment, expanded into whole paths: `a::{b, c::d}`
/// gives `[a, b]` and `[a, c, d]`; `self` in a group is the group's prefix; `*` ends a path.
fn expand_tree(s: &[u8], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < s.len() && s[i] == b'{' {
            i += 1;
            loop {
                i = expand_tree(s, i, &path, out);
                while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == b'}' {
                    return i + 1;
                }
            }
        }
        let (name, end) = ident_at(s, i);
        if name.is_empty() {
            // `*` or the end of the path.
            out.push(path);
            return end.max(i + usize::from(i < s.len() && s[i] == b'*'));
        }
        i = end;
        if name != "self" {
            path.push(name);
        }
        let rest = std::str::from_utf8(&s[i..]).unwrap_or("");
        match rest.trim_start().strip_prefix("::") {
            Some(after) => i = s.len() - after.len(),
            None => {
                out.push(path);
                return i;
            }
        }
    }
}

/// A source file's module path below the crate root (`lower/ops/mod.rs` is `lower::ops`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every whole path a file's own code names from the crate (`crate::`, `super::`, `self::`,
/// and its own child modules by name), as module paths from the crate root; inline modules'
/// code (unit tests) is left out.
fn referenced_paths(code: &str, module: &[String], children: &[String]) -> Vec<Vec<String>> {
    let s = code.as_bytes();
    let inline = inline_mod_depths(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if !(s[i].is_ascii_alphabetic() || s[i] == b'_') {
            i += 1;
            continue;
        }
        let word_start = i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        let (word, end) = ident_at(s, i);
        if !word_start || !code[end..].trim_start().starts_with("::") {
            i = end.max(i + 1);
            continue;
        }
        // Inside a path already read; a visibility (`pub(in crate::x)`) names no import; code
        // in inline modules (`mod tests`) is not the file's own.
        let before = code[..i].trim_end();
        if before.ends_with("::") || before.ends_with("(in") || inline[i] > 0 {
            i = end;
            continue;
        }
        let base: Option<Vec<String>> = match word.as_str() {
            "crate" => Some(vec![]),
            "self" => Some(module.to_vec()),
            "super" => {
                // Count the chain; inline modules (`mod tests`) are climbed out of first.
                let (mut ups, mut j) = (0, i);
                while code[j..].starts_with("super") {
                    let Some(after) = code[j + 5..].trim_start().strip_prefix("::") else {
                        break;
                    };
                    ups += 1;
                    j = code.len() - after.trim_start().len();
                }
                let ups = ups - inline[i].min(ups);
                let keep = module.len().saturating_sub(ups);
                let mut paths = Vec::new();
                i = expand_tree(s, j, &module[..keep], &mut paths);
                out.extend(paths);
                continue;
            }
            w if children.iter().any(|c| c == w) => {
                let mut m = module.to_vec();
                m.push(w.to_string());
                Some(m)
            }
            _ => None,
        };
        match base {
            Some(base) => {
                let after = code[end..].trim_start().strip_prefix("::").unwrap();
                i = expand_tree(s, code.len() - after.len(), &base, &mut out);
            }
            None => i = end,
        }
    }
    out
}

/// `pub use` re-exports of a module file: the name it exports, and the whole path it names.
fn reexports(code: &str, module: &[String], children: &[String]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let Some(tree) = stmt.trim().strip_prefix("pub use") else {
            continue;
        };
        for p in referenced_paths(tree, module, children) {
            if let Some(last) = p.last() {
                out.push((last.clone(), p));
            }
        }
    }
    out
}

/// The files of the crate's modules, and for each the files it takes names from (following
/// `pub use` re-exports to the file that defines the name).
fn file_imports(src: &Path) -> Vec<(String, Vec<(String, String)>)> {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    files.sort();
    let mut modules = std::collections::BTreeMap::new();
    let mut parsed = Vec::new();
    for f in &files {
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        let module = module_of(src, f);
        let rel = f.strip_prefix(src).unwrap().display().to_string();
        let children: Vec<String> = code
            .split(';')
            .filter_map(|s| {
                let mut s = s.trim();
                // Past attributes (`#[cfg(…)] mod x;`).
                while let Some(rest) = s.strip_prefix("#[") {
                    s = rest.split_once(']').map_or("", |(_, after)| after).trim();
                }
                let s = s.strip_prefix("pub ").unwrap_or(s);
                s.strip_prefix("mod ").map(|n| n.trim().to_string())
            })
            .filter(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .collect();
        let exports = reexports(&code, &module, &children);
        modules.insert(module.clone(), (rel.clone(), exports));
        parsed.push((rel, module, code, children));
    }
    let resolve = |path: &[String]| -> Option<String> {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let k = (0..=path.len())
                .rev()
                .find(|&k| modules.contains_key(&path[..k]))?;
            let (file, exports) = &modules[&path[..k]];
            let Some(next) = path.get(k) else {
                return Some(file.clone());
            };
            match exports.iter().find(|(name, _)| name == next) {
                Some((_, target)) if target.as_slice() != path.as_slice() => {
                    let mut p = target.clone();
                    p.extend_from_slice(&path[k + 1..]);
                    path = p;
                }
                _ => return Some(file.clone()),
            }
        }
        None
    };
    parsed
        .iter()
        .map(|(rel, module, code, children)| {
            let mut edges: Vec<(String, String)> = referenced_paths(code, module, children)
                .iter()
                .filter_map(|p| Some((resolve(p)?, p.join("::"))))
                .filter(|(to, _)| to != rel)
                .collect();
            edges.sort();
            edges.dedup_by(|a, b| a.0 == b.0);
            (rel.clone(), edges)
        })
        .collect()
}

/// The groups of files that import each other, directly or round a circle (Tarjan's strongly
/// connected components of more than one file), each file with what it takes from the group.
fn import_circles(graph: &[(String, Vec<(String, String)>)]) -> Vec<Vec<String>> {
    let index: std::collections::HashMap<&str, usize> = graph
        .iter()
        .enumerate()
        .map(|(i, (f, _))| (f.as_str(), i))
        .collect();
    let adj: Vec<Vec<usize>> = graph
        .iter()
        .map(|(_, e)| {
            e.iter()
                .filter_map(|(t, _)| index.get(t.as_str()).copied())
                .collect()
        })
        .collect();
    struct Tarjan<'a> {
        adj: &'a [Vec<usize>],
        next: usize,
        order: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        groups: Vec<Vec<usize>>,
    }
    fn visit(t: &mut Tarjan, v: usize) {
        t.order[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on_stack[v] = true;
        for w in t.adj[v].clone() {
            match t.order[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(o) if t.on_stack[w] => t.low[v] = t.low[v].min(o),
                Some(_) => {}
            }
        }
        if Some(t.low[v]) == t.order[v] {
            let mut group = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on_stack[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            t.groups.push(group);
        }
    }
    let n = graph.len();
    let mut t = Tarjan {
        adj: &adj,
        next: 0,
        order: vec![None; n],
        low: vec![0; n],
        stack: Vec::new(),
        on_stack: vec![false; n],
        groups: Vec::new(),
    };
    for v in 0..n {
        if t.order[v].is_none() {
            visit(&mut t, v);
        }
    }
    t.groups
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|g| {
            let mut lines: Vec<String> = g
                .iter()
                .map(|&v| {
                    let (file, edges) = &graph[v];
                    let inside: Vec<&str> = edges
                        .iter()
                        .filter(|(to, _)| g.iter().any(|&w| graph[w].0 == *to))
                        .map(|(_, p)| p.as_str())
                        .collect();
                    format!("{file} -> {}", inside.join(", "))
                })
                .collect();
            lines.sort();
            lines
        })
        .collect()
}

/// No file takes names from a file that takes names from it, directly or round a circle: each
/// file can be read, tested and moved with only what it imports.
#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut circles = Vec::new();
    let mut sizes = Vec::new();
    for krate in ["", "crates/dlq-kernels", "crates/dlq-ort", "crates/dlq-py"] {
        let src = root.join(krate).join("src");
        let graph = file_imports(&src);
        let edges: usize = graph.iter().map(|(_, e)| e.len()).sum();
        sizes.push((krate, graph.len(), edges));
        for c in import_circles(&graph) {
            circles.push(format!("{}:\n{}", src.display(), c.join("\n")));
        }
    }
    // Guard against the test checking nothing: the main crate and the kernels have files that
    // import others.
    assert!(
        sizes[0].1 > 50 && sizes[0].2 > 100 && sizes[1].1 > 10 && sizes[1].2 > 10,
        "files and imports per crate: {sizes:?}"
    );
    assert!(
        circles.is_empty(),
        "files importing each other (file -> what it takes from the others):\n{}",
        circles.join("\n\n")
    );
}

/// The import graph itself: paths are whole, re-exports are followed to the defining file,
/// and a circle through a re-export is found.
#[test]
fn the_import_graph_follows_paths_and_reexports() {
    let mut paths = Vec::new();
    let code = code_only("x::{self, y::{z, w}, v::*}");
    expand_tree(code.as_bytes(), 0, &["a".to_string()], &mut paths);
    let names: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(names, ["a::x", "a::x::y::z", "a::x::y::w", "a::x::v"]);

    let dir = std::env::temp_dir().join(format!("layering-cycles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    let write = |p: &str, s: &str| std::fs::write(dir.join(p), s).unwrap();
    write("lib.rs", "pub mod a;\npub mod b;\n");
    write("a/mod.rs", "pub mod inner;\npub use inner::Thing;\n");
    write("a/inner.rs", "use crate::b::helper;\npub struct Thing;\n");
    write(
        "b.rs",
        "use crate::a::Thing;\npub fn helper() {}\nmod tests { use super::*; }\n",
    );
    let graph = file_imports(&dir);
    let circles = import_circles(&graph);
    assert_eq!(
        circles,
        [vec![
            "a/inner.rs -> b::helper".to_string(),
            "b.rs -> a::Thing".to_string()
        ]]
    );
    write("b.rs", "pub fn helper() {}\n");
    assert!(import_circles(&file_imports(&dir)).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
