use std::collections::BTreeMap;

use super::*;

fn parsed(text: &str) -> Dockerfile {
    parse(text, "Dockerfile").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn cri_tools_test_image_shape() {
    let file = parsed("FROM busybox\nARG USER=www-data\nUSER ${USER}\nRUN addgroup -S $USER && adduser -S $USER -G $USER\n");
    assert_eq!(file.stages.len(), 1);
    let stage = &file.stages[0];
    assert_eq!(stage.base, "busybox");
    assert_eq!(stage.instructions.len(), 3);
    let plan = plan(&file, &BTreeMap::new(), None).unwrap();
    let mut scope = plan.target().scope();
    let steps: Vec<Step> = stage.instructions.iter().map(|i| scope.step(i).unwrap()).collect();
    assert_eq!(steps[1].instruction, InstructionKind::User("www-data".into()));
    assert_eq!(steps[2].build_args, vec![("USER".to_string(), "www-data".to_string())]);
}

/// Every `NAME.Dockerfile` under tests/dockerfile_corpus/valid parses to the
/// JSON in `NAME.expected`; every one under invalid/ fails with exactly the
/// error in its `NAME.expected`. `BERTH_BLESS=1` rewrites the expectations
/// (review the diff before committing it).
#[test]
fn corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfile_corpus");
    let bless = std::env::var_os("BERTH_BLESS").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    for kind in ["valid", "invalid"] {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(kind)).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "Dockerfile")) {
            count += 1;
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let actual = match (kind, parse(&text, &name)) {
                ("valid", Ok(file)) => serde_json::to_string_pretty(&file).unwrap() + "\n",
                ("invalid", Err(error)) => error.to_string() + "\n",
                (_, Ok(_)) => format!("parsed, but an error was expected\n"),
                (_, Err(error)) => format!("unexpected error: {error}\n"),
            };
            let expected_path = path.with_extension("expected");
            if bless {
                std::fs::write(&expected_path, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            if actual != expected {
                failures.push(format!("{kind}/{name}:\n--- expected\n{expected}--- actual\n{actual}"));
            }
        }
    }
    assert!(count > 30, "the corpus should not be empty, found {count} files");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
