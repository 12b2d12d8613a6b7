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
                (_, Ok(_)) => "parsed, but an error was expected\n".to_string(),
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

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Plans `text` and steps through the target stage over `base_env`.
fn steps(text: &str, build_args: &[(&str, &str)], base_env: &[&str]) -> Vec<Step> {
    let plan = plan(&parsed(text), &args(build_args), None).unwrap();
    let stage = plan.target();
    let mut scope = stage.scope();
    scope.apply_base_env(base_env);
    stage.instructions.iter().map(|i| scope.step(i).unwrap()).collect()
}

#[test]
fn global_args_reach_from_lines_and_only_redeclared_into_stages() {
    let text = "ARG BASE=busybox\nARG TAG\nFROM ${BASE}:${TAG:-latest}\nRUN true\nARG BASE\nLABEL base=$BASE tag=x$TAG\n";
    let plan = plan(&parsed(text), &args(&[("TAG", "1.36")]), None).unwrap();
    assert_eq!(plan.target().base, Base::Image("busybox:1.36".into()));
    let mut scope = plan.target().scope();
    let run = scope.step(&plan.target().instructions[0]).unwrap();
    assert!(run.build_args.is_empty(), "global ARGs are not in a stage until it declares them");
    scope.step(&plan.target().instructions[1]).unwrap();
    let label = scope.step(&plan.target().instructions[2]).unwrap();
    assert_eq!(label.instruction, InstructionKind::Label(vec![KeyValue { key: "base".into(), value: "busybox".into() }, KeyValue { key: "tag".into(), value: "x".into() }]));
}

#[test]
fn build_args_override_defaults_and_env_shadows_args() {
    let text = "FROM busybox\nARG A=default\nARG B=b\nENV B=from-env\nARG C=${A}-c\nWORKDIR /$A/$B/$C\n";
    let steps = steps(text, &[("A", "given")], &[]);
    assert_eq!(steps[4].instruction, InstructionKind::Workdir("/given/from-env/given-c".into()));
    assert_eq!(steps[4].build_args, vec![("A".into(), "given".into()), ("B".into(), "b".into()), ("C".into(), "given-c".into())]);
    assert_eq!(steps[4].env, vec!["B=from-env"]);
    assert_eq!(steps[4].run_env, vec!["B=from-env", "A=given", "C=given-c"]);
}

#[test]
fn env_values_see_the_scope_before_their_instruction() {
    let steps = steps("FROM busybox\nENV A=1\nENV A=2 B=$A\nENV PATH=$PATH:/opt/bin\n", &[], &["PATH=/usr/bin:/bin", "HOME=/root"]);
    assert_eq!(steps[1].instruction, InstructionKind::Env(vec![KeyValue { key: "A".into(), value: "2".into() }, KeyValue { key: "B".into(), value: "1".into() }]));
    assert_eq!(steps[2].env, vec!["PATH=/usr/bin:/bin:/opt/bin", "HOME=/root", "A=2", "B=1"]);
}

#[test]
fn proxy_args_reach_run_but_not_cache_keys_unless_declared() {
    let text = "FROM busybox\nRUN wget $HTTP_PROXY\nARG no_proxy\nRUN true\n";
    let steps = steps(text, &[("HTTP_PROXY", "http://127.0.0.1:3128"), ("no_proxy", "localhost")], &[]);
    assert!(steps[0].build_args.is_empty());
    assert_eq!(steps[0].run_env, vec!["HTTP_PROXY=http://127.0.0.1:3128", "no_proxy=localhost"]);
    assert_eq!(steps[2].build_args, vec![("no_proxy".into(), "localhost".into())]);
    assert_eq!(steps[2].run_env, vec!["no_proxy=localhost", "HTTP_PROXY=http://127.0.0.1:3128"]);
}

#[test]
fn words_expand_per_instruction_as_docker_does() {
    let text = "FROM busybox\nARG PORTS=\"80 443\"\nARG NAME=berth\nEXPOSE $PORTS 8080\nCOPY --chown=$NAME <<conf $NAME.txt /etc/$NAME/\nname=$NAME\nconf\nRUN echo $NAME\nCMD echo $NAME\nVOLUME /var/$NAME\nUSER $NAME\nSTOPSIGNAL ${SIG:-SIGTERM}\n";
    let steps = steps(text, &[], &[]);
    assert_eq!(steps[2].instruction, InstructionKind::Expose(vec!["80".into(), "443".into(), "8080".into()]));
    let InstructionKind::Copy(copy) = &steps[3].instruction else { panic!("{:?}", steps[3].instruction) };
    assert_eq!((copy.chown.as_deref(), copy.sources.as_slice(), copy.dest.as_str()), (Some("berth"), &["berth.txt".to_string()][..], "/etc/berth/"));
    assert_eq!(copy.heredocs[0].content, "name=berth\n");
    let InstructionKind::Run { command, .. } = &steps[4].instruction else { panic!() };
    assert_eq!(command, &CommandForm::Shell("echo $NAME".into()), "RUN is left to the shell");
    assert_eq!(steps[5].instruction, InstructionKind::Cmd(CommandForm::Shell("echo $NAME".into())));
    assert_eq!(steps[6].instruction, InstructionKind::Volume(vec!["/var/berth".into()]));
    assert_eq!(steps[7].instruction, InstructionKind::User("berth".into()));
    assert_eq!(steps[8].instruction, InstructionKind::Stopsignal("SIGTERM".into()));
}

#[test]
fn target_keeps_only_the_stages_it_needs() {
    let text = "\
FROM busybox AS tools
FROM alpine AS unused
FROM tools AS build
RUN --mount=type=cache,target=/c,from=cachesrc true
FROM scratch AS cachesrc
FROM scratch AS final
COPY --from=build /a /a
COPY --from=0 /b /b
COPY --from=nginx:1.25 /c /c
";
    let parsed = parsed(text);
    let backwards = plan(&parsed, &BTreeMap::new(), None).unwrap_err();
    assert_eq!(backwards.to_string(), "Dockerfile:4: --from=cachesrc names stage 3, which is not before this stage (2): a stage can only read earlier stages");

    let text = text.replace("from=cachesrc", "from=unused");
    let parsed = parse(&text, "Dockerfile").unwrap();
    let full = plan(&parsed, &BTreeMap::new(), None).unwrap();
    let kept: Vec<usize> = full.stages.iter().map(|s| s.index).collect();
    assert_eq!(kept, vec![0, 1, 2, 4]);
    assert_eq!(full.target().dependencies, vec![2, 0]);
    assert_eq!(full.stages[2].base, Base::Stage(0));
    assert_eq!(full.stages[2].dependencies, vec![1]);
    assert_eq!(full.resolve_from(4, "nginx:1.25"), Ok(Base::Image("nginx:1.25".into())));

    let build = plan(&parsed, &BTreeMap::new(), Some("BUILD")).unwrap();
    assert_eq!(build.stages.iter().map(|s| s.index).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(build.target().name.as_deref(), Some("build"));

    let unknown = plan(&parsed, &BTreeMap::new(), Some("test")).unwrap_err();
    assert_eq!(unknown.to_string(), "build target \"test\" is not a stage of Dockerfile; its named stages are: tools, unused, build, cachesrc, final");
}

#[test]
fn platform_args_are_automatic_in_from_and_imported_by_arg() {
    let plan = plan(&parsed("FROM --platform=$BUILDPLATFORM busybox\nARG TARGETARCH\nRUN echo $TARGETARCH\n"), &BTreeMap::new(), None).unwrap();
    let platform = plan.target().platform.clone().unwrap();
    assert!(platform.starts_with("linux/"), "{platform}");
    let mut scope = plan.target().scope();
    let arg = scope.step(&plan.target().instructions[0]).unwrap();
    assert_eq!(arg.build_args.len(), 1);
    assert_eq!(format!("linux/{}", arg.build_args[0].1), platform.trim_end_matches("/v8"));
}

#[test]
fn unused_build_args_are_reported() {
    let plan = plan(&parsed("ARG GLOBAL\nFROM busybox\nARG LOCAL\n"), &args(&[("GLOBAL", "1"), ("LOCAL", "2"), ("TYPO", "3"), ("https_proxy", "x")]), None).unwrap();
    assert_eq!(plan.unused_build_args, vec!["TYPO"]);
}

#[test]
fn expansion_errors_name_file_and_line() {
    let err = plan(&parsed("ARG V=\"open\nFROM busybox\n"), &BTreeMap::new(), None).unwrap_err();
    assert_eq!(err.to_string(), "Dockerfile:1: unexpected end of statement while looking for matching double-quote in \"\\\"open\"");
    let err = plan(&parsed("FROM busybox\n\nWORKDIR ${DIR:?set DIR with --build-arg}\n"), &BTreeMap::new(), None).unwrap_err();
    assert_eq!(err.to_string(), "Dockerfile:3: DIR: set DIR with --build-arg");
}

#[test]
fn onbuild_triggers_parse_alone() {
    let trigger = parse_trigger("RUN make install", '\\', "base image").unwrap();
    assert_eq!(trigger.kind.keyword(), "RUN");
    let err = parse_trigger("ONBUILD RUN x", '\\', "base image").unwrap_err();
    assert_eq!(err.to_string(), "base image:1:1: chaining ONBUILD via ONBUILD ONBUILD is not allowed");
}

#[test]
fn columns_count_indentation_and_continuations() {
    let err = parse("FROM busybox\n   COPY \\\n  --bogus a b\n", "Dockerfile").unwrap_err();
    assert_eq!((err.line, err.column), (3, 3));
    let err = parse("FROM busybox\n\tRUNX\n", "Dockerfile").unwrap_err();
    assert_eq!((err.line, err.column, err.message.as_str()), (2, 2, "unknown instruction: RUNX"));
}

#[test]
fn instruction_source_joins_continuations() {
    let file = parsed("FROM busybox\nRUN a \\\n  && b\n");
    assert_eq!(file.stages[0].instructions[0].source, "RUN a   && b");
    assert_eq!(file.stages[0].instructions[0].line, 2);
}

/// Truncating or corrupting any corpus file yields an error or a plan, never a panic.
#[test]
fn damaged_input_never_panics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfile_corpus");
    for kind in ["valid", "invalid"] {
        for entry in std::fs::read_dir(root.join(kind)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "Dockerfile") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            for &cut in &boundaries {
                let truncated = &text[..cut];
                for damaged in [truncated.to_string(), format!("{truncated}\"[{{$\\`<<'"), format!("{truncated}\n{}", &text[cut..].replacen(' ', "\\\n", 3))] {
                    if let Ok(file) = parse(&damaged, "fuzz") {
                        let _ = plan(&file, &args(&[("HTTP_PROXY", "x")]), None);
                    }
                }
            }
        }
    }
}

/// Hostile Dockerfiles end in a clear error at a line and column, quickly: no
/// stack overflow (which aborts berthd), nothing quadratic, no huge message.
mod hostile {
    use std::time::{Duration, Instant};

    use super::*;

    /// Parses and plans `text`, asserting it takes well under a second or two.
    fn attempt(text: &str) -> Result<BuildPlan, String> {
        let started = Instant::now();
        let result = parse(text, "Dockerfile").map_err(|e| e.to_string()).and_then(|file| plan(&file, &BTreeMap::new(), None).map_err(|e| e.to_string()));
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        if let Err(message) = &result {
            assert!(message.len() < 1200, "an error message of {} bytes", message.len());
        }
        result
    }

    fn nested(depth: usize) -> String {
        format!("{}x{}", "${a:-".repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn ten_thousand_nested_substitutions_are_an_error_at_their_column() {
        let err = attempt(&format!("FROM busybox\nENV a={}\n", nested(10_000))).unwrap_err();
        let column = "ENV a=".len() + MAX_NESTING * "${a:-".len() + 1;
        assert_eq!(err, format!("Dockerfile:2:{column}: substitutions nested more than {MAX_NESTING} deep"));
        // The same in every place a word is expanded, and in an ONBUILD trigger.
        for line in [format!("FROM {}", nested(10_000)), format!("COPY {} /", nested(10_000)), format!("ONBUILD ENV a={}", nested(10_000))] {
            let err = attempt(&format!("FROM busybox\n{line}\n")).unwrap_err();
            assert!(err.contains("nested more than 64 deep"), "{err}");
        }
        let err = parse_trigger(&format!("ENV a={}", nested(10_000)), '\\', "ONBUILD").unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (1, "substitutions nested more than 64 deep"));
        // A heredoc body that is expanded, at its own line.
        let err = attempt(&format!("FROM busybox\nCOPY <<EOF /x\nfine\n{}\nEOF\n", nested(10_000))).unwrap_err();
        assert!(err.starts_with(&format!("Dockerfile:4:{}: heredoc EOF", MAX_NESTING * 5 + 1)), "{err}");
        // As deep as allowed still works.
        let plan = attempt(&format!("FROM busybox\nENV a={}\n", nested(MAX_NESTING))).unwrap();
        let step = plan.target().scope().step(&plan.target().instructions[0]).unwrap();
        assert_eq!(step.env, vec!["a=x".to_string()]);
    }

    #[test]
    fn quotes_cannot_hide_nesting_from_the_parser() {
        // Each `"` inside `${...:-` opens a level of its own in the expander.
        let tricky = format!("FROM busybox\nENV a={}x\n", "${a:-\"".repeat(10_000));
        let err = attempt(&tricky).unwrap_err();
        assert!(err.contains("nested more than 64 deep"), "{err}");
    }

    #[test]
    fn a_ten_megabyte_line_is_refused_by_its_length() {
        let err = attempt(&format!("FROM busybox\nRUN echo {}\n", "x".repeat(10 << 20))).unwrap_err();
        assert_eq!(err, format!("Dockerfile:2:1: instruction is {} bytes long, the limit is {MAX_INSTRUCTION_BYTES}", 10 * (1 << 20) + 9));
        let err = attempt(&format!("FROM busybox\n{}\n", "X".repeat(10 << 20))).unwrap_err();
        assert!(err.starts_with("Dockerfile:2:1: instruction is"), "{err}");
        // Continuation lines count together.
        let err = attempt(&format!("FROM busybox\nRUN a{}\n", format!(" \\\n{}", "y".repeat(1 << 16)).repeat(20))).unwrap_err();
        assert!(err.starts_with("Dockerfile:2:1: instruction is"), "{err}");
    }

    #[test]
    fn a_megabyte_name_is_fine_and_its_errors_are_short() {
        let name = "N".repeat(1_000_000);
        let plan = attempt(&format!("FROM busybox\nARG {name}=v\nWORKDIR /${{{name}}}x\n")).unwrap();
        let mut scope = plan.target().scope();
        let steps: Vec<Step> = plan.target().instructions.iter().map(|i| scope.step(i).unwrap()).collect();
        assert_eq!(steps[1].instruction, InstructionKind::Workdir("/vx".into()));
        let err = attempt(&format!("FROM busybox\nENV a=${{{name}:?}}\n")).unwrap_err();
        assert!(err.starts_with("Dockerfile:2: NNN") && err.ends_with("is not allowed to be unset"), "{err}");
        let err = attempt(&format!("FROM busybox\n{name}\n")).unwrap_err();
        assert!(err.starts_with("Dockerfile:2:1: unknown instruction: NNN"), "{err}");
        let err = attempt(&format!("FROM {name}:x AS {name}\n")).unwrap_err();
        assert!(err.starts_with("Dockerfile:1:"), "{err}");
    }

    #[test]
    fn a_hundred_thousand_instructions_are_refused_at_the_first_one_too_many() {
        let text = format!("FROM busybox\n{}", (0..100_000).map(|i| format!("ENV v{i}={i}\n")).collect::<String>());
        let err = attempt(&text).unwrap_err();
        assert_eq!(err, format!("Dockerfile:{}:1: too many instructions: a Dockerfile may have at most {MAX_INSTRUCTIONS}", MAX_INSTRUCTIONS + 1));
        // As many as allowed plan in bounded time, each with its own variable.
        let text = format!("FROM busybox\nENV v0=0\n{}", (1..MAX_INSTRUCTIONS - 1).map(|i| format!("ENV v{i}=${{v0}}{i}\n")).collect::<String>());
        attempt(&text).unwrap();
        let stages = (0..MAX_INSTRUCTIONS).map(|i| format!("FROM scratch AS s{i}\n")).collect::<String>();
        attempt(&stages).unwrap();
    }

    #[test]
    fn a_heredoc_without_end_is_an_error_at_its_marker() {
        let text = format!("FROM busybox\nRUN cat <<EOF\n{}", "line\n".repeat(200_000));
        assert_eq!(attempt(&text).unwrap_err(), "Dockerfile:2:9: heredoc EOF is not terminated: no line EOF follows");
        let marker = "M".repeat(1 << 19);
        let err = attempt(&format!("FROM busybox\nRUN <<{marker}\n")).unwrap_err();
        assert!(err.starts_with("Dockerfile:2:5: heredoc MMM"), "{err}");
    }

    #[test]
    fn deep_json_and_deep_continuations_do_not_crash() {
        // Not JSON, so shell form (as Docker falls back); serde_json bounds its recursion.
        attempt(&format!("FROM busybox\nCMD [{}\n", "[".repeat(100_000))).unwrap();
        attempt(&format!("FROM busybox\nCMD [\"{}\n", "[".repeat(100_000))).unwrap_err();
        let continued = format!("FROM busybox\nRUN true{}\n", " \\\n#c\n&& true".repeat(50_000));
        attempt(&continued).unwrap();
    }
}
