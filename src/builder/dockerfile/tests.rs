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
