//! The import graph between the files of src/: the module tree of each
//! crate, the paths each file names, and the file each path leads to.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::tokens::{is_ident, tokenize};

/// A module of one crate: its path from the crate root and its file.
#[derive(Clone, Debug)]
struct Module {
    path: Vec<String>,
    file: PathBuf,
}

#[derive(Default)]
pub(super) struct Graph {
    /// Files relative to src/.
    pub(super) files: BTreeSet<PathBuf>,
    /// from -> to -> the first path in `from` that names something of `to`.
    pub(super) edges: BTreeMap<PathBuf, BTreeMap<PathBuf, String>>,
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
    pub(super) fn read(src: &Path) -> Self {
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
    pub(super) fn cycles(&self) -> Vec<String> {
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

/// An absolute path as written from the crate root.
fn shown(path: &[String]) -> String {
    match path.first() {
        Some(first) if first == "auditrelay" => path.join("::"),
        _ => format!("crate::{}", path.join("::")),
    }
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
