//! The layering guard: imports go one way, down the layers of `src/lib.rs`, and no two
//! top-level modules import each other.
//!
//! It reads every `src/**/*.rs` (the library; `src/main.rs` is the binary and sits above
//! everything), strips comments and string literals, and collects every path into the crate:
//! `use crate::a::b`, grouped `use crate::{a::b, c::{d}}`, inline `crate::a::f()` in code, and
//! `super::` chains that climb out of their top-level module. Each file belongs to its top-level
//! module (`src/runtime/job/mod.rs` is `runtime`). It fails on
//! - an import of a module in a higher layer than the importing file's, and
//! - a circle between modules (two modules importing each other, directly or through others).
//!
//! Unit tests (`#[cfg(test)]` modules, inline or in their own file) may import from any layer:
//! a test of a low module can build its fixture with a higher one without the product
//! depending on it. They are still read, and their upward imports are listed with
//! `LAYERING_VERBOSE=1`, but they do not fail the guard.
//!
//! [`LAYERS`] is the one table of the layers. `src/lib.rs` draws the same table (its
//! "Layers" diagram); the guard checks that the drawing lists the same modules on the same
//! rows, and that every `mod` declared in `src/lib.rs` has a row.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

/// The layers, bottom first. A module may import modules of its own layer or of a lower one.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "contract and settings",
        &[
            "wire",
            "config",
            "limits",
            "telemetry",
            "nats",
            "local_nats",
        ],
    ),
    (
        "pure code",
        &["policy", "pricing", "providers", "auth", "preflight"],
    ),
    (
        "cluster state, usage and the client",
        &["cluster", "usage", "client"],
    ),
    ("runtime", &["runtime"]),
    ("HTTP front", &["http"]),
    ("worker", &["worker"]),
    ("CLI", &["cli", "fuzzing"]),
];

/// One path into the crate, found in a file.
#[derive(Debug, Clone)]
struct Import {
    file: String,
    line: usize,
    from: String,
    to: String,
    path: String,
    in_test: bool,
}

#[test]
fn imports_go_down_the_layers_and_no_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let imports = read_imports(&src);
    let layer = layer_of();
    let mut report = String::new();

    let mut unknown = BTreeSet::new();
    for i in &imports {
        for m in [&i.from, &i.to] {
            if !layer.contains_key(m.as_str()) {
                unknown.insert(m.clone());
            }
        }
    }
    for m in &unknown {
        let _ = writeln!(
            report,
            "module `{m}` has no layer: add it to LAYERS in tests/it/layering.rs and to the \
             drawing in src/lib.rs"
        );
    }

    let upward: Vec<&Import> = imports
        .iter()
        .filter(|i| {
            matches!((layer.get(i.from.as_str()), layer.get(i.to.as_str())),
                (Some(f), Some(t)) if t > f)
        })
        .collect();
    let (up_test, up_code): (Vec<&Import>, Vec<&Import>) = upward.iter().partition(|i| i.in_test);
    for i in &up_code {
        let _ = writeln!(
            report,
            "upward import: {}:{}: `{}` ({} is in layer \"{}\", {} in layer \"{}\")",
            i.file,
            i.line,
            i.path,
            i.from,
            LAYERS[layer[i.from.as_str()]].0,
            i.to,
            LAYERS[layer[i.to.as_str()]].0,
        );
    }

    let circles = circles(imports.iter().filter(|i| !i.in_test));
    for c in &circles {
        let _ = writeln!(report, "circle between modules: {}", c.join(" ↔ "));
        for i in imports
            .iter()
            .filter(|i| !i.in_test && c.contains(&i.from) && c.contains(&i.to) && i.from != i.to)
        {
            let _ = writeln!(report, "    {}:{}: `{}`", i.file, i.line, i.path);
        }
    }

    let verbose = std::env::var_os("LAYERING_VERBOSE").is_some();
    if verbose {
        for i in &up_test {
            println!(
                "upward import in a unit test (allowed): {}:{}: `{}`",
                i.file, i.line, i.path
            );
        }
    }
    println!(
        "layering: {} paths into the crate read ({} in unit tests); {} upward imports ({} more in unit \
         tests, allowed); {} circles between modules",
        imports.len(),
        imports.iter().filter(|i| i.in_test).count(),
        up_code.len(),
        up_test.len(),
        circles.len()
    );
    assert!(report.is_empty(), "\n{report}");
}

#[test]
fn lib_rs_draws_the_same_layers_and_every_module_has_one() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    let layer = layer_of();

    // The drawing: the `text` block after the "## Layers" heading, top layer first. Each row
    // is `│ layer │ modules │ what it holds │`. A layer may take several rows: while its list
    // of modules ends with a comma, the next row goes on with it. The header row's first
    // column says `layer`.
    let after = lib
        .split_once("//! ## Layers")
        .expect("src/lib.rs has a `## Layers` section")
        .1;
    let block: Vec<&str> = after
        .lines()
        .map(|l| l.trim_start_matches("//!"))
        .skip_while(|l| !l.trim().starts_with("```text"))
        .skip(1)
        .take_while(|l| !l.trim().starts_with("```"))
        .collect();
    let mut drawn: Vec<Vec<String>> = Vec::new();
    // True while the modules column of the layer above ended with a comma (it goes on).
    let mut continues = false;
    for row in &block {
        let cols: Vec<&str> = row.split('│').map(str::trim).collect();
        if cols.len() < 4 || cols[1] == "layer" {
            continue;
        }
        // A layer's name may take two rows; its modules start on its first.
        if (!cols[2].is_empty() && !continues) || drawn.is_empty() {
            drawn.push(Vec::new());
        }
        for w in words(cols[2]) {
            assert!(
                layer.contains_key(w.as_str()),
                "src/lib.rs's layer drawing names `{w}`, which is not in LAYERS"
            );
            drawn.last_mut().unwrap().push(w);
        }
        if !cols[2].is_empty() {
            continues = cols[2].ends_with(',');
        }
    }
    drawn.reverse();
    let table: Vec<Vec<String>> = LAYERS
        .iter()
        .map(|(_, ms)| ms.iter().map(|m| m.to_string()).collect())
        .collect();
    let sorted = |rows: &[Vec<String>]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| {
                let mut r = r.clone();
                r.sort();
                r
            })
            .collect()
    };
    assert_eq!(
        sorted(&drawn),
        sorted(&table),
        "src/lib.rs's layer drawing (bottom row first here) differs from LAYERS in \
         tests/it/layering.rs"
    );

    for line in lib.lines() {
        let l = line.trim();
        let decl = l
            .strip_prefix("pub mod ")
            .or_else(|| l.strip_prefix("mod "))
            .or_else(|| l.strip_prefix("pub(crate) mod "));
        if let Some(name) = decl.and_then(|d| d.strip_suffix(';')) {
            assert!(
                layer.contains_key(name),
                "src/lib.rs declares `mod {name}`, which has no layer in tests/it/layering.rs"
            );
        }
    }
}

fn layer_of() -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for (n, (_, mods)) in LAYERS.iter().enumerate() {
        for module in *mods {
            assert!(
                m.insert(*module, n).is_none(),
                "`{module}` is in two layers"
            );
        }
    }
    m
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every module in a circle, one list per circle (strongly connected components of more than
/// one module).
fn circles<'a>(imports: impl Iterator<Item = &'a Import>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in imports {
        if i.from != i.to {
            graph
                .entry(i.from.clone())
                .or_default()
                .insert(i.to.clone());
            graph.entry(i.to.clone()).or_default();
        }
    }
    let reach = |start: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.to_string()];
        while let Some(n) = todo.pop() {
            for next in &graph[&n] {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|k| (k, reach(k))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for a in graph.keys() {
        if done.contains(a) {
            continue;
        }
        let comp: Vec<String> = graph
            .keys()
            .filter(|b| *b == a || (reached[a].contains(*b) && reached[*b].contains(a)))
            .cloned()
            .collect();
        done.extend(comp.iter().cloned());
        if comp.len() > 1 {
            out.push(comp);
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file below `src/`: `runtime/job/mod.rs` is `[runtime, job]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn read_imports(src: &Path) -> Vec<Import> {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    files.sort();
    let modules: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(src).ok()?.to_path_buf();
            (rel != Path::new("lib.rs") && rel != Path::new("main.rs"))
                .then(|| (p.clone(), fs::read_to_string(&p).expect("read file")))
                .map(|(_, text)| (rel, text))
        })
        .collect();

    // Files that are `#[cfg(test)] mod x;` of their parent are test code as a whole.
    let mut test_files = BTreeSet::new();
    for (rel, text) in &modules {
        let code = strip(text);
        let toks = tokens(&code);
        for w in toks.windows(8) {
            let t: Vec<&str> = w.iter().map(|t| t.text.as_str()).collect();
            if t[..7] == ["#", "[", "cfg", "(", "test", ")", "]"] && t[7] == "mod" {
                let idx = toks.iter().position(|x| std::ptr::eq(x, &w[7])).unwrap();
                if let (Some(name), Some(semi)) = (toks.get(idx + 1), toks.get(idx + 2))
                    && semi.text == ";"
                {
                    let dir = if rel.file_name().is_some_and(|f| f == "mod.rs") {
                        rel.parent().unwrap().to_path_buf()
                    } else {
                        rel.with_extension("")
                    };
                    test_files.insert(dir.join(format!("{}.rs", name.text)));
                    test_files.insert(dir.join(&name.text).join("mod.rs"));
                }
            }
        }
    }

    // Names `src/lib.rs` re-exports (`pub use worker::Worker;`) stand for their module.
    let lib = fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let reexports: BTreeMap<String, String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub use ")?.strip_suffix(';'))
        .filter_map(|p| {
            let (module, rest) = p.split_once("::")?;
            Some((rest.rsplit("::").next()?.to_string(), module.to_string()))
        })
        .collect();

    let mut out = Vec::new();
    for (rel, text) in &modules {
        let module = module_path(rel);
        let code = strip(text);
        let toks = tokens(&code);
        let whole_file_test = test_files.contains(rel);
        scan(
            &toks,
            &module,
            &rel.display().to_string(),
            whole_file_test,
            &mut out,
        );
    }
    for i in &mut out {
        if let Some(m) = reexports.get(&i.to) {
            i.to = m.clone();
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Tok {
    text: String,
    line: usize,
}

/// Blanks out comments, strings and char literals, keeping line breaks.
fn strip(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if (c[i] == 'r' || c[i] == 'b')
            && !c
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
            && raw_string_start(&c, i).is_some()
        {
            let (hashes, body) = raw_string_start(&c, i).unwrap();
            for &ch in &c[i..body] {
                blank(&mut out, ch);
            }
            i = body;
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while i < c.len() && !c[i..].starts_with(&close) {
                blank(&mut out, c[i]);
                i += 1;
            }
            for _ in 0..close.len().min(c.len() - i) {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                out.push(' ');
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    if c[i] == '\\' {
                        out.push(' ');
                        i += 1;
                    }
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                out.push_str("   ");
                i += 3;
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// `r"`, `r#"`, `br"`...: the number of `#` and the index just after the opening quote.
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if c[j] == 'b' {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((hashes, j + 1))
}

fn tokens(code: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let c: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < c.len() {
            if c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$' {
                let start = i;
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push(Tok {
                    text: c[start..i].iter().collect(),
                    line: n + 1,
                });
            } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
                out.push(Tok {
                    text: "::".into(),
                    line: n + 1,
                });
                i += 2;
            } else if c[i].is_whitespace() {
                i += 1;
            } else {
                out.push(Tok {
                    text: c[i].to_string(),
                    line: n + 1,
                });
                i += 1;
            }
        }
    }
    out
}

/// Walks a file's tokens: tracks inline `mod x { }` (for `super::`) and `#[cfg(test)]`
/// modules, and records every path into the crate that leaves the file's top-level module.
fn scan(toks: &[Tok], module: &[String], file: &str, file_is_test: bool, out: &mut Vec<Import>) {
    // Open braces; each records whether it opened an inline module and whether it is test code.
    let mut braces: Vec<(bool, bool)> = Vec::new();
    let mut pending_test = false;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].text.as_str();
        let in_test = file_is_test || braces.iter().any(|b| b.1);
        let inline_mods = braces.iter().filter(|b| b.0).count();
        // `a::crate` or `a::super` is not a path's start.
        let after_sep = i > 0 && toks[i - 1].text == "::";
        match t {
            "#" if toks.get(i + 1).is_some_and(|x| x.text == "[") => {
                let attr: Vec<&str> = toks[i..].iter().take(7).map(|x| x.text.as_str()).collect();
                if attr == ["#", "[", "cfg", "(", "test", ")", "]"] {
                    pending_test = true;
                    i += 7;
                    continue;
                }
            }
            "mod" if toks.get(i + 2).is_some_and(|x| x.text == "{") => {
                braces.push((true, pending_test));
                pending_test = false;
                i += 3;
                continue;
            }
            "{" => {
                braces.push((false, false));
                pending_test = false;
            }
            "}" => {
                braces.pop();
            }
            ";" => pending_test = false,
            "crate" | "$crate" if toks.get(i + 1).is_some_and(|x| x.text == "::") && !after_sep => {
                for (first, path) in targets(&toks[i + 2..]) {
                    push(
                        out,
                        file,
                        toks[i].line,
                        module,
                        &first,
                        &path,
                        in_test,
                        "crate",
                    );
                }
            }
            "super" if !after_sep => {
                // Count the chain: super::super::...
                let mut ups = 0;
                let mut j = i;
                while toks.get(j).is_some_and(|x| x.text == "super")
                    && toks.get(j + 1).is_some_and(|x| x.text == "::")
                {
                    ups += 1;
                    j += 2;
                }
                let depth = module.len() + inline_mods;
                if ups >= depth && ups > 0 {
                    // Climbs to the crate root: the next segment names a top-level module.
                    for (first, path) in targets(&toks[j..]) {
                        let prefix = vec!["super"; ups].join("::");
                        push(
                            out,
                            file,
                            toks[i].line,
                            module,
                            &first,
                            &path,
                            in_test,
                            &prefix,
                        );
                    }
                }
                i = j.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
}

#[allow(clippy::too_many_arguments)]
fn push(
    out: &mut Vec<Import>,
    file: &str,
    line: usize,
    module: &[String],
    first: &str,
    path: &str,
    in_test: bool,
    prefix: &str,
) {
    let from = module[0].clone();
    if first != from && first != "self" {
        out.push(Import {
            file: format!("src/{file}"),
            line,
            from,
            to: first.to_string(),
            path: format!("{prefix}::{path}"),
            in_test,
        });
    }
}

/// The paths after `crate::`: `a::b::C` gives `(a, "a::b::C")`; `{a::b, c::{d, e}}` gives one
/// entry per member: `(a, "a::b")`, `(c, "c::d")`, `(c, "c::e")`.
fn targets(toks: &[Tok]) -> Vec<(String, String)> {
    let Some(first) = toks.first() else {
        return Vec::new();
    };
    if first.text != "{" {
        let mut path = String::new();
        let mut j = 0;
        while let Some(t) = toks.get(j) {
            let ident = t.text.chars().all(|c| c.is_alphanumeric() || c == '_');
            if ident && (j == 0 || toks[j - 1].text == "::") {
                path.push_str(&t.text);
            } else if t.text == "::" && j > 0 {
                path.push_str("::");
            } else if t.text == "{" && j > 0 {
                // A nested group: one entry per member, under this path.
                return targets(&toks[j..])
                    .into_iter()
                    .map(|(_, rest)| (first.text.clone(), format!("{path}{rest}")))
                    .collect();
            } else {
                break;
            }
            j += 1;
        }
        return vec![(first.text.clone(), path.trim_end_matches("::").to_string())];
    }
    // A group: split its top level on commas.
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item: Vec<Tok> = Vec::new();
    for t in &toks[1..] {
        match t.text.as_str() {
            "{" => depth += 1,
            "}" if depth == 0 => break,
            "}" => depth -= 1,
            "," if depth == 0 => {
                out.extend(targets(&item));
                item.clear();
                continue;
            }
            _ => {}
        }
        item.push(t.clone());
    }
    out.extend(targets(&item));
    out
}
