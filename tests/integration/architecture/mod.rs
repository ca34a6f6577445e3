//! The shape of src/: no import cycle between its files, and files of a
//! readable size.
//!
//! Reads the source text only (no build of the crate): finds the module
//! tree from `lib.rs` and `main.rs` through their `mod` lines, the paths
//! each file names (`use crate::…`, `super::…`, `self::…`, a child module,
//! `auditrelay::…` from the binary), and resolves each to the file that
//! defines the item, following `pub use` re-exports. Declaring a child
//! module is not a dependency; naming an item is.

mod graph;
mod tokens;

use std::fs;
use std::path::{Path, PathBuf};

use graph::Graph;
use tokens::tokenize;

/// Files of src/ may be this long at most (the bound).
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
    for (dir, trait_name, registry, least) in [
        ("source", "SourceType", "register_sources", 2),
        // A pull source implements `PullKind`; `impl<K: PullKind> SourceType
        // for PullConfig<K>` makes it a source type, registered as its
        // alias `XConfig` (`PullConfig<X>`).
        ("source", "PullKind", "register_sources", 5),
        ("sink", "SinkType", "register_sinks", 5),
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
                let generic = tokens.get(i + 3).is_some_and(|t| t == "<");
                if tokens[i] == trait_name
                    && tokens[i + 1] == "for"
                    && tokens[i - 1] != "dyn"
                    && !generic
                {
                    implemented.push((file.clone(), tokens[i + 2].clone()));
                }
            }
        }
        assert!(
            implemented.len() >= least,
            "found only {implemented:?} implementing {trait_name}"
        );
        for (file, config) in implemented {
            let alias = format!("{config}Config");
            assert!(
                registered.contains(&&config) || registered.contains(&&alias),
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
