//! The architecture's rules, checked over the source (ARCHITECTURE.md, "Invariants"):
//! imports point down the layers, and only `runtime.rs` imports bollard.

use std::path::{Path, PathBuf};

/// The layers, bottom first: a module may import its own layer's and lower layers' modules.
const LAYERS: &[&[&str]] = &[
    &["cloudrun", "config", "shutdown"],
    &["events", "logs", "metrics", "runtime"],
    &["instances", "sample", "source"],
    &["serve", "metadata", "dns"],
    &["control"],
    &["admin"],
    &["app"],
    &["smoke", "cli", "fuzz_tests", "layers_tests"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each source file under src/, with the top-level module it belongs to.
fn modules() -> Vec<(String, PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let module = relative
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if module == "lib" || module == "main" {
                return None;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            Some((module, path, text))
        })
        .collect()
}

#[test]
fn every_module_has_a_layer() {
    for (module, path, _) in modules() {
        assert!(
            rank(&module).is_some(),
            "{}: module `{module}` is in no layer of LAYERS",
            path.display()
        );
    }
}

#[test]
fn imports_point_down_the_layers() {
    let mut upward = Vec::new();
    for (module, path, text) in modules() {
        let Some(own) = rank(&module) else { continue };
        for (at, _) in text.match_indices("crate::") {
            let target: String = text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            match rank(&target) {
                Some(theirs) if theirs > own => {
                    upward.push(format!("{}: {module} uses crate::{target}", path.display()));
                }
                _ => {}
            }
        }
    }
    upward.dedup();
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn only_the_runtime_imports_bollard() {
    let others: Vec<String> = modules()
        .into_iter()
        .filter(|(module, _, text)| {
            !matches!(module.as_str(), "runtime" | "layers_tests") && text.contains("bollard::")
        })
        .map(|(_, path, _)| path.display().to_string())
        .collect();
    assert!(
        others.is_empty(),
        "bollard used outside runtime.rs: {others:?}"
    );
}
