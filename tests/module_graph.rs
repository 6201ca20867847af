//! Keeps the modules of `fenzo` and `scheduler` a one-way graph: every `crate::module` path in a module's files
//! is an edge (a directory module's files all count as that module's), and no chain of edges may lead back to
//! where it started. In fenzo, `pipeline` sits on top and imports the stages; the stages import the shared types,
//! the snapshot and the request, never the pipeline. In the scheduler, records (`job`, `task`, `agent`) sit below
//! `state`, `state` below `reconcile`, and `member` on top: a module a lower one needs declares it (as
//! `scheduling::Host`) rather than naming the module above.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name to the modules it names, for every file directly in `src/` but the crate root.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The modules one file's code names through `crate::`, including the members of `crate::{..}` groups.
/// Comment lines are skipped, so prose that mentions a path is not an edge.
fn named_modules(source: &str) -> Vec<String> {
    let code: String = source.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => out.extend(group_members(group).into_iter().map(first_segment).filter(|s| !s.is_empty())),
            None => out.push(first_segment(rest)),
        }
    }
    out
}

/// The members of a `{..}` group whose opening brace is already consumed, split at its own commas only, so
/// that a nested group stays inside its member.
fn group_members(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut members) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                members.push(&group[start..i]);
                return members;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                members.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    members.push(&group[start..]);
    members
}

fn first_segment(path: &str) -> String {
    path.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Every `.rs` file under `dir`, concatenated.
fn sources_under(dir: &Path) -> Result<String, String> {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            text.push_str(&sources_under(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?);
            text.push('\n');
        }
    }
    Ok(text)
}

/// Reads `src/`, a module per file or directory; a `crate::` path whose first segment is not a module is a
/// failure of its own, since a re-export from the crate root would hide the edge.
fn graph_of(src: &Path) -> Result<Graph, String> {
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(src).map_err(|e| format!("{}: {e}", src.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        if path.is_dir() {
            sources.insert(name.to_string(), sources_under(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            sources.insert(name.to_string(), text);
        }
    }
    let mut graph = Graph::new();
    for (module, text) in &sources {
        let edges = graph.entry(module.clone()).or_default();
        for named in named_modules(text) {
            if !sources.contains_key(&named) {
                return Err(format!("{module} names crate::{named}: name the module that defines it instead"));
            }
            if named != *module {
                edges.insert(named);
            }
        }
    }
    Ok(graph)
}

/// One cycle of the graph as a path that starts and ends at the same module, if there is any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(node: &str, graph: &Graph, marks: &mut BTreeMap<String, Mark>, path: &mut Vec<String>) -> bool {
        match marks.get(node) {
            Some(Mark::Done) => return false,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).expect("an open module is on the path");
                path.drain(..start);
                path.push(node.to_string());
                return true;
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if visit(next, graph, marks, path) {
                return true;
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        false
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        let mut path = Vec::new();
        if visit(node, graph, &mut marks, &mut path) {
            return Some(path);
        }
    }
    None
}

fn graph(edges: &[(&str, &[&str])]) -> Graph {
    edges.iter().map(|(m, to)| (m.to_string(), to.iter().map(|t| t.to_string()).collect())).collect()
}

fn src_of(krate: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(krate).join("src")
}

#[test]
fn scheduler_modules_import_one_way() {
    let src = src_of("scheduler");
    let graph = graph_of(&src).expect("every crate:: path names a module");
    assert!(graph.len() > 15, "read too few modules from {}: {:?}", src.display(), graph.keys());
    if let Some(cycle) = find_cycle(&graph) {
        panic!("the scheduler's modules import in a circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn fenzo_modules_import_one_way() {
    let src = src_of("fenzo");
    let graph = graph_of(&src).expect("every crate:: path names a module file");
    assert!(graph.len() > 10, "read too few modules from {}: {:?}", src.display(), graph.keys());
    if let Some(cycle) = find_cycle(&graph) {
        panic!("fenzo's modules import in a circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn pipeline_is_imported_by_no_module() {
    let src = src_of("fenzo");
    let graph = graph_of(&src).expect("every crate:: path names a module file");
    let importers: Vec<&String> = graph.iter().filter(|(_, to)| to.contains("pipeline")).map(|(m, _)| m).collect();
    assert!(importers.is_empty(), "the pipeline is the top; these modules import it: {importers:?}");
}

#[test]
fn named_modules_reads_paths_and_groups() {
    let source = "//! Mentions crate::prose only in a comment.\n\
                  use crate::a::X;\n\
                  use crate::{b, c::{D, E}};\n\
                  fn f() { crate::d::g(); }\n";
    assert_eq!(named_modules(source), ["a", "b", "c", "d"]);
}

#[test]
fn find_cycle_reports_a_circle_and_accepts_a_dag() {
    let circle = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
    assert_eq!(find_cycle(&circle), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let dag = graph(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[]), ("d", &["a", "c"])]);
    assert_eq!(find_cycle(&dag), None);
}
