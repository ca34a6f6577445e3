//! The shape of src/: no import cycle between its files, and files of a
//! readable size.
//!
//! Reads the source text only (no build of the crate): finds the module
//! tree from `lib.rs` and `main.rs` through their `mod` lines, the paths
//! each file names (`use crate::…`, `super::…`, `self::…`, a child module,
//! `auditrelay::…` from the binary), and resolves each to the file that
//! defines the item, following `pub use` re-exports. Declaring a child
//! module is not a dependency; naming an item is.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Files of src/ may be this long at most (the issue's bound).
const MAX_LINES: usize = 700;

#[test]
fn no_import_cycle_between_files_of_src() {
    let graph = Graph::read(&src_dir());
    assert!(
        graph.files.len() > 20,
        "found only {} files; is the module walk broken?",
        graph.files.len()
    );
    let cycles = graph.cycles();
    assert!(
        cycles.is_empty(),
        "import cycles between files of src/ (each edge names the path that makes it):\n{}",
        cycles.join("\n")
    );
}

/// The resolver must see the edges it is there to check, or the test
/// above would pass on a graph without edges.
#[test]
fn graph_sees_known_dependencies() {
    let graph = Graph::read(&src_dir());
    for (from, to) in [
        ("source/veza/config.rs", "config/mod.rs"),
        ("sink/webhook.rs", "sink/component.rs"),
        ("source/mod.rs", "source/veza/config.rs"),
        ("sink/splunk_hec/acks.rs", "sink/splunk_hec/inner.rs"),
        ("main.rs", "daemon/mod.rs"),
    ] {
        let (from, to) = (PathBuf::from(from), PathBuf::from(to));
        assert!(
            graph.edges.get(&from).is_some_and(|e| e.contains_key(&to)),
            "no edge {} -> {}; edges of {}: {:?}",
            from.display(),
            to.display(),
            from.display(),
            graph.edges.get(&from).map(|e| e.keys().collect::<Vec<_>>())
        );
    }
}

#[test]
fn cycle_detection_names_the_cycle() {
    let mut graph = Graph::default();
    for (a, b) in [
        ("a.rs", "b.rs"),
        ("b.rs", "c.rs"),
        ("c.rs", "a.rs"),
        ("c.rs", "d.rs"),
    ] {
        graph
            .edges
            .entry(PathBuf::from(a))
            .or_default()
            .insert(PathBuf::from(b), format!("crate::{}", &b[..1]));
    }
    let cycles = graph.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(
        cycles[0].contains("a.rs") && cycles[0].contains("b.rs") && cycles[0].contains("c.rs"),
        "{}",
        cycles[0]
    );
    assert!(!cycles[0].contains("d.rs"), "{}", cycles[0]);
}

/// A config that implements `SourceType`/`SinkType` but has no line in
/// the registration macro would be silently unknown to `type`.
#[test]
fn every_component_type_is_registered() {
    for (dir, trait_name, registry) in [
        ("source", "SourceType", "register_sources"),
        ("sink", "SinkType", "register_sinks"),
    ] {
        let root = src_dir().join(dir);
        let module = tokenize(&fs::read_to_string(root.join("mod.rs")).unwrap_or_default());
        let registered: Vec<&String> = module
            .windows(3)
            .position(|w| w[0] == registry && w[1] == "!" && w[2] == "{")
            .map(|start| module[start..].iter().take_while(|t| *t != "}").collect())
            .unwrap_or_default();
        let mut implemented = Vec::new();
        for file in rust_files(&root) {
            let tokens = tokenize(&fs::read_to_string(&file).unwrap_or_default());
            for i in 0..tokens.len().saturating_sub(2) {
                if tokens[i] == trait_name && tokens[i + 1] == "for" && tokens[i - 1] != "dyn" {
                    implemented.push((file.clone(), tokens[i + 2].clone()));
                }
            }
        }
        assert!(
            implemented.len() >= 5,
            "found only {implemented:?} implementing {trait_name}"
        );
        for (file, config) in implemented {
            assert!(
                registered.contains(&&config),
                "{} implements {trait_name} for {config}, which has no line in {registry}! of {dir}/mod.rs",
                file.display()
            );
        }
    }
}

#[test]
fn no_file_of_src_is_longer_than_the_bound() {
    let mut long = Vec::new();
    for file in rust_files(&src_dir()) {
        let lines = fs::read_to_string(&file).map_or(0, |t| t.lines().count());
        if lines > MAX_LINES {
            long.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines: {}",
        long.join(", ")
    );
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A module of one crate: its path from the crate root and its file.
#[derive(Clone, Debug)]
struct Module {
    path: Vec<String>,
    file: PathBuf,
}

#[derive(Default)]
struct Graph {
    /// Files relative to src/.
    files: BTreeSet<PathBuf>,
    /// from -> to -> the first path in `from` that names something of `to`.
    edges: BTreeMap<PathBuf, BTreeMap<PathBuf, String>>,
}

/// One crate (the library or the binary): module path -> file.
struct Crate {
    modules: BTreeMap<Vec<String>, PathBuf>,
    /// The tokens of each module's file, read once.
    tokens: BTreeMap<Vec<String>, Vec<String>>,
}

impl Crate {
    fn read(src: &Path, root: &str) -> Self {
        let mut modules = BTreeMap::new();
        let mut todo = vec![Module {
            path: Vec::new(),
            file: PathBuf::from(root),
        }];
        while let Some(module) = todo.pop() {
            let Ok(text) = fs::read_to_string(src.join(&module.file)) else {
                continue;
            };
            let tokens = tokenize(&text);
            // A file's children live beside it (`mod.rs`, `lib.rs`,
            // `main.rs`) or in the directory named after it.
            let dir = match module.file.file_name().and_then(|n| n.to_str()) {
                Some("mod.rs" | "lib.rs" | "main.rs") => module
                    .file
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                _ => module.file.with_extension(""),
            };
            for i in 0..tokens.len().saturating_sub(2) {
                if tokens[i] == "mod" && tokens[i + 2] == ";" && is_ident(&tokens[i + 1]) {
                    let name = &tokens[i + 1];
                    let flat = dir.join(format!("{name}.rs"));
                    let nested = dir.join(name).join("mod.rs");
                    let file = if src.join(&flat).exists() {
                        flat
                    } else {
                        nested
                    };
                    let mut path = module.path.clone();
                    path.push(name.clone());
                    todo.push(Module { path, file });
                }
            }
            modules.insert(module.path, module.file);
        }
        let tokens = modules
            .iter()
            .map(|(path, file)| {
                let text = fs::read_to_string(src.join(file)).unwrap_or_default();
                (path.clone(), tokenize(&text))
            })
            .collect();
        Crate { modules, tokens }
    }
}

impl Graph {
    fn read(src: &Path) -> Self {
        let lib = Crate::read(src, "lib.rs");
        let bin = Crate::read(src, "main.rs");
        let mut graph = Graph::default();
        for (krate, external) in [(&lib, None), (&bin, Some(&lib))] {
            for (path, file) in &krate.modules {
                graph.files.insert(file.clone());
                let tokens = &krate.tokens[path];
                for named in named_paths(tokens, path, krate) {
                    let target = if named.first().is_some_and(|s| s == "auditrelay") {
                        external.and_then(|lib| resolve(lib, &named[1..], 0))
                    } else {
                        resolve(krate, &named, 0)
                    };
                    if let Some(target) = target {
                        if &target != file {
                            graph
                                .edges
                                .entry(file.clone())
                                .or_default()
                                .entry(target)
                                .or_insert_with(|| shown(&named));
                        }
                    }
                }
            }
        }
        graph
    }

    /// Each strongly connected set of files, as one cycle through it.
    fn cycles(&self) -> Vec<String> {
        let nodes: BTreeSet<&PathBuf> = self
            .edges
            .iter()
            .flat_map(|(from, to)| std::iter::once(from).chain(to.keys()))
            .collect();
        let mut reported: BTreeSet<&PathBuf> = BTreeSet::new();
        let mut out = Vec::new();
        for start in nodes {
            if reported.contains(start) {
                continue;
            }
            let Some(cycle) = self.shortest_cycle(start) else {
                continue;
            };
            let scc = self.reachable_both_ways(start);
            reported.extend(scc.iter().copied());
            let names: Vec<String> = scc.iter().map(|f| f.display().to_string()).collect();
            let mut text = format!(
                "{} files import each other ({}), e.g. ",
                scc.len(),
                names.join(", ")
            );
            for pair in cycle.windows(2) {
                text.push_str(&format!(
                    "{} -({})-> ",
                    pair[0].display(),
                    self.edges[pair[0]][pair[1]]
                ));
            }
            text.push_str(&cycle[0].display().to_string());
            out.push(text);
        }
        out
    }

    /// A shortest path from `start` back to itself (breadth first).
    fn shortest_cycle<'a>(&'a self, start: &'a PathBuf) -> Option<Vec<&'a PathBuf>> {
        let mut parent: BTreeMap<&PathBuf, &PathBuf> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for next in self.edges.get(node).into_iter().flat_map(|e| e.keys()) {
                if next == start {
                    let mut path = vec![node];
                    let mut at = node;
                    while at != start {
                        at = parent[at];
                        path.push(at);
                    }
                    path.reverse();
                    path.push(start);
                    return Some(path);
                }
                if !parent.contains_key(next) {
                    parent.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
        None
    }

    fn reachable_both_ways<'a>(&'a self, start: &'a PathBuf) -> BTreeSet<&'a PathBuf> {
        let reach = |forward: bool| {
            let mut seen = BTreeSet::from([start]);
            let mut todo = vec![start];
            while let Some(node) = todo.pop() {
                let next: Vec<&PathBuf> = if forward {
                    self.edges
                        .get(node)
                        .into_iter()
                        .flat_map(|e| e.keys())
                        .collect()
                } else {
                    self.edges
                        .iter()
                        .filter(|(_, to)| to.contains_key(node))
                        .map(|(from, _)| from)
                        .collect()
                };
                for n in next {
                    if seen.insert(n) {
                        todo.push(n);
                    }
                }
            }
            seen
        };
        reach(true).intersection(&reach(false)).copied().collect()
    }
}

/// Rust source as tokens: identifiers, `::`, and single punctuation
/// characters, without comments, strings and character literals.
fn tokenize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&chars, i) {
            i = end;
        } else if c == 'b' && next == Some('"') {
            i = string_end(&chars, i + 1);
        } else if c == '"' {
            i = string_end(&chars, i);
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{7f}'), or a lifetime.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && next == Some(':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The index after a string starting with the quote at `i`.
fn string_end(chars: &[char], mut i: usize) -> usize {
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The index after a raw string (`r"…"`, `br#"…"#`) starting at `i`, if
/// one starts there.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let after_b = if chars[i] == 'b' { i + 1 } else { i };
    if chars.get(after_b) != Some(&'r') || (i > 0 && is_ident_char(chars[i - 1])) {
        return None;
    }
    let mut j = after_b + 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(j)
}

/// An absolute path as written from the crate root.
fn shown(path: &[String]) -> String {
    match path.first() {
        Some(first) if first == "auditrelay" => path.join("::"),
        _ => format!("crate::{}", path.join("::")),
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_ident(token: &str) -> bool {
    token
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Every path the tokens of module `module` name that may lead into the
/// crate, made absolute (from the crate root; `auditrelay::…` kept as is).
fn named_paths(tokens: &[String], module: &[String], krate: &Crate) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // Inline modules (`mod tests { … }`) open at a brace depth.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                assert!(
                    depth > 0,
                    "unbalanced braces in {module:?} at token {i}: {:?}",
                    &tokens[i.saturating_sub(20)..i]
                );
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|t| t == "{") => {
                inline.push((tokens[i + 1].clone(), depth));
            }
            _ => {}
        }
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let after_path_sep = i > 0 && tokens[i - 1] == "::";
        let after_dollar = i > 0 && tokens[i - 1] == "$";
        if t == "use" {
            let (trees, end) = use_tree(tokens, i + 1);
            for tree in trees {
                if let Some(abs) = absolute(&tree, &here, inline.is_empty(), krate) {
                    out.push(abs);
                }
            }
            i = end;
            continue;
        }
        if is_ident(t)
            && !after_path_sep
            && !after_dollar
            && tokens.get(i + 1).is_some_and(|n| n == "::")
        {
            let mut path = vec![t.to_string()];
            let mut j = i + 1;
            while tokens.get(j).is_some_and(|s| s == "::")
                && tokens.get(j + 1).is_some_and(|s| is_ident(s))
            {
                path.push(tokens[j + 1].clone());
                j += 2;
            }
            if let Some(abs) = absolute(&path, &here, inline.is_empty(), krate) {
                out.push(abs);
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// The paths of a `use` tree starting at `i` (after `use`), and the index
/// after it. Renames (`as x`) keep the original path.
fn use_tree(tokens: &[String], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix: Vec<String> = Vec::new();
    let mut out = Vec::new();
    while i < tokens.len() {
        let t = tokens[i].as_str();
        if t == "::" {
            i += 1;
        } else if t == "{" {
            i += 1;
            loop {
                let (inner, end) = use_tree(tokens, i);
                for p in inner {
                    let mut full = prefix.clone();
                    if p != ["self"] {
                        full.extend(p);
                    }
                    out.push(full);
                }
                i = end;
                match tokens.get(i).map(String::as_str) {
                    Some(",") => {
                        i += 1;
                        if tokens.get(i).is_some_and(|t| t == "}") {
                            i += 1;
                            break;
                        }
                    }
                    Some("}") => {
                        i += 1;
                        break;
                    }
                    _ => break,
                }
            }
            return (out, i);
        } else if t == "*" {
            out.push(prefix);
            return (out, i + 1);
        } else if t == "as" {
            i += 2;
        } else if is_ident(t) {
            prefix.push(t.to_string());
            i += 1;
        } else {
            break;
        }
    }
    if !prefix.is_empty() {
        out.push(prefix);
    }
    (out, i)
}

/// `path` as seen from module `here` made absolute, or `None` when it
/// leads outside the crate (another crate, a local name).
fn absolute(
    path: &[String],
    here: &[String],
    at_file_level: bool,
    krate: &Crate,
) -> Option<Vec<String>> {
    let first = path.first()?.as_str();
    match first {
        "crate" => Some(path[1..].to_vec()),
        "auditrelay" => Some(path.to_vec()),
        "self" => Some(here.iter().chain(&path[1..]).cloned().collect()),
        "super" => {
            let mut base = here.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            Some(base.into_iter().chain(rest.iter().cloned()).collect())
        }
        _ if at_file_level => {
            // A child module named directly (`veza::VezaConfig` in
            // `source/mod.rs`).
            let mut child = here.to_vec();
            child.push(first.to_string());
            krate
                .modules
                .contains_key(&child)
                .then(|| here.iter().chain(path).cloned().collect())
        }
        _ => None,
    }
}

/// The file that defines what the absolute `path` names, following
/// `pub use` re-exports of the module it ends in.
fn resolve(krate: &Crate, path: &[String], hops: usize) -> Option<PathBuf> {
    if hops > 16 {
        return None;
    }
    let mut module: Vec<String> = Vec::new();
    let mut rest = path;
    while let Some(first) = rest.first() {
        let mut deeper = module.clone();
        deeper.push(first.clone());
        if !krate.modules.contains_key(&deeper) {
            break;
        }
        module = deeper;
        rest = &rest[1..];
    }
    let file = krate.modules.get(&module)?;
    let Some(item) = rest.first() else {
        return Some(file.clone());
    };
    // A re-export of `item` in that module: follow it.
    let tokens = krate.tokens.get(&module)?;
    for i in 0..tokens.len() {
        if tokens[i] != "use" || !is_reexport(tokens, i) {
            continue;
        }
        let (trees, _) = use_tree(tokens, i + 1);
        let renamed = reexport_names(tokens, i + 1);
        for (tree, name) in trees.iter().zip(renamed) {
            if &name == item {
                let abs = absolute(tree, &module, true, krate)?;
                return resolve(krate, &abs, hops + 1);
            }
        }
    }
    Some(file.clone())
}

/// Whether the `use` at `i` is `pub use` or `pub(…) use`.
fn is_reexport(tokens: &[String], i: usize) -> bool {
    (i >= 1 && tokens[i - 1] == "pub")
        || (i >= 4 && tokens[i - 1] == ")" && tokens[i - 3] == "(" && tokens[i - 4] == "pub")
}

/// The names a `use` tree at `i` brings into scope, in the order of
/// [`use_tree`]'s paths (the last segment, or the name after `as`).
fn reexport_names(tokens: &[String], i: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut last = String::new();
    let mut j = i;
    let mut depth = 0;
    while j < tokens.len() {
        let t = tokens[j].as_str();
        match t {
            ";" if depth == 0 => break,
            "{" => depth += 1,
            "}" | "," => {
                if !last.is_empty() {
                    names.push(std::mem::take(&mut last));
                }
                if t == "}" {
                    depth -= 1;
                }
            }
            "as" => {
                last = tokens.get(j + 1).cloned().unwrap_or_default();
                j += 1;
            }
            "::" => last.clear(),
            "*" => last = "*".into(),
            _ if is_ident(t) => last = t.to_string(),
            _ => {}
        }
        j += 1;
    }
    if !last.is_empty() {
        names.push(last);
    }
    names
}
