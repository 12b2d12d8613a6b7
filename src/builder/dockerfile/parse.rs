//! Dockerfile text to syntax tree: parser directives, comments, line
//! continuations, heredocs, flags, JSON (exec) and shell forms, and every
//! instruction's arguments, each error placed at a file, line and column.

use std::time::Duration;

use super::ast::*;
use super::limits::{MAX_INSTRUCTION_BYTES, MAX_INSTRUCTIONS, MAX_NESTING, clip_message, too_deep_at};

/// A Dockerfile that cannot be parsed; displays as `FILE:LINE:COLUMN: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ParseError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, counted in characters.
    pub column: usize,
    pub message: String,
}

/// Parses a whole Dockerfile. `file_name` is only used to name the file in errors.
pub fn parse(source: &str, file_name: &str) -> Result<Dockerfile, ParseError> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let mut parser = Parser { file: file_name, lines: source.lines().collect(), next: 0, escape: '\\' };
    let syntax = parser.directives()?;
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut instructions = 0usize;
    while let Some(logical) = parser.checked_logical_line()? {
        instructions += 1;
        if instructions > MAX_INSTRUCTIONS {
            return Err(parser.error_at(&logical, 0, format!("too many instructions: a Dockerfile may have at most {MAX_INSTRUCTIONS}")));
        }
        let (keyword, keyword_end) = keyword_at(&logical.text, 0);
        if keyword.eq_ignore_ascii_case("FROM") {
            let stage = parser.from(&logical, keyword_end, stages.len())?;
            if let Some(name) = &stage.name
                && let Some(earlier) = stages.iter().find(|s| s.name.as_deref() == Some(name))
            {
                let message = format!("duplicate stage name {name:?}: the stage on line {} already has it", earlier.line);
                return Err(parser.error_at(&logical, 0, message));
            }
            stages.push(stage);
            continue;
        }
        let instruction = parser.instruction(&logical, 0, false)?;
        match (stages.last_mut(), instruction.kind) {
            (Some(stage), kind) => stage.instructions.push(Instruction { kind, ..instruction }),
            (None, InstructionKind::Arg(args)) => global_args.extend(args),
            (None, kind) => {
                let message = format!("{} before the first FROM: only ARG may come before FROM", kind.keyword());
                return Err(parser.error_at(&logical, 0, message));
            }
        }
    }
    if stages.is_empty() {
        let message = if instructions > 0 { "no FROM instruction: a Dockerfile needs at least one build stage" } else { "the Dockerfile has no instructions" };
        return Err(ParseError { file: file_name.to_string(), line: parser.lines.len().max(1), column: 1, message: message.to_string() });
    }
    Ok(Dockerfile { file_name: file_name.to_string(), escape: parser.escape, syntax, global_args, stages })
}

/// Parses one instruction given as text, as an image's ONBUILD triggers are
/// stored; `FROM` and `ONBUILD` are not valid triggers.
pub fn parse_trigger(text: &str, escape: char, file_name: &str) -> Result<Instruction, ParseError> {
    let mut parser = Parser { file: file_name, lines: text.lines().collect(), next: 0, escape };
    let Some(logical) = parser.checked_logical_line()? else {
        return Err(ParseError { file: file_name.to_string(), line: 1, column: 1, message: "empty ONBUILD trigger".to_string() });
    };
    parser.instruction(&logical, 0, true)
}

/// One instruction with its continuation lines joined, and where each joined
/// piece came from so that errors can point into the original text.
struct LogicalLine {
    text: String,
    pieces: Vec<Piece>,
}

struct Piece {
    offset: usize,
    line: usize,
    column: usize,
}

impl LogicalLine {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let piece = self.pieces.iter().rev().find(|p| p.offset <= offset).unwrap_or(&self.pieces[0]);
        let within = self.text.get(piece.offset..offset).map_or(0, |s| s.chars().count());
        (piece.line, piece.column + within)
    }

    fn first_line(&self) -> usize {
        self.pieces[0].line
    }
}

struct Parser<'a> {
    file: &'a str,
    lines: Vec<&'a str>,
    next: usize,
    escape: char,
}

/// A `--name[=value]` before an instruction's arguments; the value is raw.
struct Flag {
    name: String,
    value: Option<String>,
    offset: usize,
}

struct Flags<'l> {
    flags: Vec<Flag>,
    line: &'l LogicalLine,
    keyword: &'static str,
    file: String,
}

const HEREDOC_INSTRUCTIONS: [&str; 3] = ["RUN", "COPY", "ADD"];
const STAGE_NAME_HINT: &str = "a stage name starts with a letter and holds only letters, digits, '-', '_' and '.'";

impl<'a> Parser<'a> {
    fn error_at(&self, line: &LogicalLine, offset: usize, message: impl Into<String>) -> ParseError {
        let (line, column) = line.position(offset);
        ParseError { file: self.file.to_string(), line, column, message: clip_message(message.into()) }
    }

    /// The next logical line, refused when it is longer than any instruction may
    /// be or nests substitutions deeper than the expander goes.
    fn checked_logical_line(&mut self) -> Result<Option<LogicalLine>, ParseError> {
        let Some(logical) = self.logical_line() else { return Ok(None) };
        if logical.text.len() > MAX_INSTRUCTION_BYTES {
            let message = format!("instruction is {} bytes long, the limit is {MAX_INSTRUCTION_BYTES}", logical.text.len());
            return Err(self.error_at(&logical, 0, message));
        }
        if let Some(offset) = too_deep_at(&logical.text, self.escape, false) {
            return Err(self.error_at(&logical, offset, format!("substitutions nested more than {MAX_NESTING} deep")));
        }
        Ok(Some(logical))
    }

    /// Reads the `# key=value` directives at the top of the file; the first
    /// line that is not one ends them, whatever follows.
    fn directives(&mut self) -> Result<Option<String>, ParseError> {
        let mut syntax = None;
        let mut escape = None;
        while let Some(line) = self.lines.get(self.next) {
            let Some((key, value, value_column)) = directive(line) else { break };
            let line_number = self.next + 1;
            let fail = |message: String| ParseError { file: self.file.to_string(), line: line_number, column: value_column, message: clip_message(message) };
            match key.to_ascii_lowercase().as_str() {
                "syntax" => {
                    if syntax.replace(value.to_string()).is_some() {
                        return Err(fail("only one syntax parser directive can be used".into()));
                    }
                }
                "escape" => {
                    let token = match value {
                        "\\" => '\\',
                        "`" => '`',
                        other => return Err(fail(format!("invalid escape token {other:?}: it must be ` or \\"))),
                    };
                    if escape.replace(token).is_some() {
                        return Err(fail("only one escape parser directive can be used".into()));
                    }
                }
                // Docker's `check` directive configures its linter, which berth does not have.
                "check" => {}
                _ => break,
            }
            self.next += 1;
        }
        self.escape = escape.unwrap_or('\\');
        Ok(syntax)
    }

    /// The next instruction with continuations joined, skipping blank lines and
    /// comments (also those between continuation lines, as Docker does).
    fn logical_line(&mut self) -> Option<LogicalLine> {
        while let Some(line) = self.lines.get(self.next) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                self.next += 1;
                continue;
            }
            let mut logical = LogicalLine { text: String::new(), pieces: Vec::new() };
            let indent = line.chars().count() - trimmed.chars().count();
            let mut piece = (trimmed, indent + 1);
            loop {
                let line_number = self.next + 1;
                self.next += 1;
                logical.pieces.push(Piece { offset: logical.text.len(), line: line_number, column: piece.1 });
                let (content, continues) = self.strip_continuation(piece.0);
                logical.text.push_str(content);
                if !continues {
                    break;
                }
                let next = loop {
                    match self.lines.get(self.next) {
                        None => break None,
                        Some(l) if l.trim().is_empty() || l.trim_start().starts_with('#') => self.next += 1,
                        Some(l) => break Some(*l),
                    }
                };
                match next {
                    Some(l) => piece = (l, 1),
                    None => break,
                }
            }
            let trimmed_len = logical.text.trim_end().len();
            logical.text.truncate(trimmed_len);
            return Some(logical);
        }
        None
    }

    fn strip_continuation<'l>(&self, line: &'l str) -> (&'l str, bool) {
        let trimmed = line.trim_end();
        match trimmed.strip_suffix(self.escape) {
            Some(content) => (content, true),
            None => (line, false),
        }
    }

    fn from(&mut self, line: &LogicalLine, after_keyword: usize, index: usize) -> Result<Stage, ParseError> {
        let (mut flags, args_start) = self.flags(line, after_keyword, "FROM")?;
        let platform = flags.string("platform")?.map(|(v, _)| v);
        flags.finish()?;
        let words = whitespace_words(&line.text, args_start);
        let (base, name) = match words.as_slice() {
            [(_, base)] => (base.to_string(), None),
            [(_, base), (_, as_word), (name_offset, name)] if as_word.eq_ignore_ascii_case("AS") => {
                let name = name.to_ascii_lowercase();
                if !valid_stage_name(&name) {
                    return Err(self.error_at(line, *name_offset, format!("invalid stage name {name:?}: {STAGE_NAME_HINT}")));
                }
                (base.to_string(), Some(name))
            }
            [(_, _), (offset, word), ..] if words.len() == 3 => {
                return Err(self.error_at(line, *offset, format!("FROM expects AS before the stage name, found {word:?}")));
            }
            _ => return Err(self.error_at(line, args_start, "FROM requires either one argument or three: FROM image [AS name]")),
        };
        Ok(Stage { index, name, base, platform, line: line.first_line(), source: line.text.clone(), instructions: Vec::new() })
    }

    /// Parses the instruction starting at `start` in `line` (an ONBUILD's
    /// trigger starts after the ONBUILD keyword).
    fn instruction(&mut self, line: &LogicalLine, start: usize, as_trigger: bool) -> Result<Instruction, ParseError> {
        let (word, keyword_end) = keyword_at(&line.text, start);
        let keyword = word.to_ascii_uppercase();
        let Some(keyword) = KEYWORDS.iter().copied().find(|k| *k == keyword) else {
            return Err(self.error_at(line, start, format!("unknown instruction: {word}")));
        };
        if as_trigger && matches!(keyword, "ONBUILD" | "FROM" | "MAINTAINER") {
            let message = if keyword == "ONBUILD" {
                "chaining ONBUILD via ONBUILD ONBUILD is not allowed".to_string()
            } else {
                format!("{keyword} is not allowed as an ONBUILD trigger")
            };
            return Err(self.error_at(line, start, message));
        }
        let (mut flags, args_start) = self.flags(line, keyword_end, keyword)?;
        if keyword == "ONBUILD" {
            flags.finish()?;
            if line.text[args_start..].trim().is_empty() {
                return Err(self.error_at(line, args_start, "ONBUILD requires a trigger instruction"));
            }
            let trigger = self.instruction(line, args_start, true)?;
            return Ok(Instruction { line: line.first_line(), source: line.text[start..].to_string(), kind: InstructionKind::OnBuild(Box::new(trigger)) });
        }
        let heredocs = if HEREDOC_INSTRUCTIONS.contains(&keyword) && !as_trigger && !line.text[args_start..].trim_start().starts_with('[') {
            self.heredocs(line, args_start)?
        } else {
            Vec::new()
        };
        let args = &line.text[args_start..];
        let fail = |offset: usize, message: String| self.error_at(line, offset, message);
        let require = |what: &str| -> Result<(), ParseError> {
            if args.trim().is_empty() { Err(fail(args_start, format!("{keyword} requires {what}"))) } else { Ok(()) }
        };
        let kind = match keyword {
            "RUN" => {
                let mounts = flags.all("mount").into_iter().map(|(v, o)| run_mount(&v).map_err(|m| fail(o, m))).collect::<Result<_, _>>()?;
                let network = match flags.string("network")? {
                    None => None,
                    Some((value, offset)) => Some(match unquote(&value).as_str() {
                        "default" => RunNetwork::Default,
                        "none" => RunNetwork::None,
                        "host" => RunNetwork::Host,
                        other => return Err(fail(offset, format!("unsupported --network={other}: expected default, none or host"))),
                    }),
                };
                require("a command")?;
                InstructionKind::Run { command: self.command(line, args_start, keyword)?, heredocs, mounts, network }
            }
            "CMD" => {
                require("a command")?;
                InstructionKind::Cmd(self.command(line, args_start, keyword)?)
            }
            "ENTRYPOINT" => {
                require("a command")?;
                InstructionKind::Entrypoint(self.command(line, args_start, keyword)?)
            }
            "SHELL" => {
                require("a JSON array")?;
                match self.command(line, args_start, keyword)? {
                    CommandForm::Exec(argv) if !argv.is_empty() => InstructionKind::Shell(argv),
                    CommandForm::Exec(_) => return Err(fail(args_start, "SHELL requires at least one argument".into())),
                    CommandForm::Shell(_) => return Err(fail(args_start, "SHELL requires the arguments in JSON form, e.g. [\"/bin/sh\", \"-c\"]".into())),
                }
            }
            "ENV" | "LABEL" => {
                require("at least one argument")?;
                let pairs = self.key_values(line, args_start, keyword)?;
                if keyword == "ENV" { InstructionKind::Env(pairs) } else { InstructionKind::Label(pairs) }
            }
            "ARG" => {
                require("at least one argument")?;
                let mut decls = Vec::new();
                for (offset, word) in self.shell_words(args, args_start) {
                    let (name, default) = match word.split_once('=') {
                        Some((name, default)) => (name, Some(default.to_string())),
                        None => (word.as_str(), None),
                    };
                    if name.is_empty() {
                        return Err(fail(offset, "ARG names can not be blank".into()));
                    }
                    decls.push(ArgDecl { name: name.to_string(), default, line: line.first_line() });
                }
                InstructionKind::Arg(decls)
            }
            "EXPOSE" => {
                require("at least one port")?;
                InstructionKind::Expose(whitespace_words(&line.text, args_start).into_iter().map(|(_, w)| w.to_string()).collect())
            }
            "VOLUME" => {
                require("at least one path")?;
                let paths = self.json_or_words(line, args_start, keyword)?;
                if let Some(i) = paths.iter().position(|p| p.trim().is_empty()) {
                    return Err(fail(args_start, format!("VOLUME path {} is empty", i + 1)));
                }
                InstructionKind::Volume(paths)
            }
            "WORKDIR" | "USER" | "STOPSIGNAL" | "MAINTAINER" => {
                require("exactly one argument")?;
                let value = args.trim().to_string();
                match keyword {
                    "WORKDIR" => InstructionKind::Workdir(value),
                    "USER" => InstructionKind::User(value),
                    "STOPSIGNAL" => InstructionKind::Stopsignal(value),
                    _ => InstructionKind::Maintainer(value),
                }
            }
            "COPY" | "ADD" => {
                let from = if keyword == "COPY" { flags.string("from")?.map(|(v, _)| v) } else { None };
                let checksum = if keyword == "ADD" { flags.string("checksum")?.map(|(v, _)| unquote(&v)) } else { None };
                let copy = FileCopy {
                    from,
                    chown: flags.string("chown")?.map(|(v, _)| v),
                    chmod: flags.string("chmod")?.map(|(v, _)| v),
                    link: flags.bool("link")?,
                    checksum,
                    sources: Vec::new(),
                    dest: String::new(),
                    heredocs: Vec::new(),
                };
                let copy = self.file_copy(line, args_start, keyword, copy, heredocs)?;
                if keyword == "COPY" { InstructionKind::Copy(copy) } else { InstructionKind::Add(copy) }
            }
            "HEALTHCHECK" => InstructionKind::Healthcheck(self.healthcheck(line, args_start, &mut flags)?),
            // Only FROM gets here, and `parse` handles it before calling this.
            other => return Err(self.error_at(line, start, format!("{other} is not allowed here"))),
        };
        flags.finish()?;
        Ok(Instruction { line: line.first_line(), source: line.text[start..].to_string(), kind })
    }

    /// Reads `--name[=value]` words up to the first word that is not one (or
    /// a lone `--`); returns them and where the arguments start.
    fn flags<'l>(&self, line: &'l LogicalLine, from: usize, keyword: &'static str) -> Result<(Flags<'l>, usize), ParseError> {
        let mut flags = Vec::new();
        let mut position = skip_whitespace(&line.text, from);
        loop {
            let rest = &line.text[position..];
            if !rest.starts_with("--") {
                break;
            }
            let word = self.raw_word(rest);
            let next = skip_whitespace(&line.text, position + word.len());
            if word == "--" {
                position = next;
                break;
            }
            let body = &word[2..];
            let (name, value) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (body, None),
            };
            if name.is_empty() {
                return Err(self.error_at(line, position, format!("{keyword}: flag {word:?} has no name")));
            }
            flags.push(Flag { name: name.to_ascii_lowercase(), value, offset: position });
            position = next;
        }
        Ok((Flags { flags, line, keyword, file: self.file.to_string() }, position))
    }

    /// The leading word of `text`: up to unquoted whitespace, quotes and
    /// escaped characters kept as written.
    fn raw_word<'t>(&self, text: &'t str) -> &'t str {
        let mut quote = None;
        let mut chars = text.char_indices();
        while let Some((i, c)) = chars.next() {
            match quote {
                Some(q) if c == q => quote = None,
                Some('"') if c == self.escape => {
                    chars.next();
                }
                Some(_) => {}
                None if c.is_whitespace() => return &text[..i],
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == self.escape => {
                    chars.next();
                }
                None => {}
            }
        }
        text
    }

    /// Words separated by unquoted whitespace, each raw (as ENV, LABEL and ARG
    /// split them), with their offsets.
    fn shell_words(&self, text: &str, base: usize) -> Vec<(usize, String)> {
        let mut words = Vec::new();
        let mut position = skip_whitespace(text, 0);
        while position < text.len() {
            let word = self.raw_word(&text[position..]);
            words.push((base + position, word.to_string()));
            position = skip_whitespace(text, position + word.len());
        }
        words
    }

    fn command(&self, line: &LogicalLine, args_start: usize, keyword: &str) -> Result<CommandForm, ParseError> {
        match self.json_array(line, args_start, keyword)? {
            Some(argv) => Ok(CommandForm::Exec(argv)),
            None => Ok(CommandForm::Shell(line.text[args_start..].to_string())),
        }
    }

    fn json_or_words(&self, line: &LogicalLine, args_start: usize, keyword: &str) -> Result<Vec<String>, ParseError> {
        Ok(match self.json_array(line, args_start, keyword)? {
            Some(items) => items,
            None => whitespace_words(&line.text, args_start).into_iter().map(|(_, w)| w.to_string()).collect(),
        })
    }

    /// The arguments as a JSON array of strings, or None for shell form. Text
    /// that is valid JSON but not an array of strings, or that starts like a
    /// JSON array (`["`) but does not parse, is an error rather than Docker's
    /// silent fall back to shell form: it is nearly always a typo.
    fn json_array(&self, line: &LogicalLine, args_start: usize, keyword: &str) -> Result<Option<Vec<String>>, ParseError> {
        let text = &line.text[args_start..];
        if !text.starts_with('[') {
            return Ok(None);
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Array(items)) => {
                let mut strings = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        serde_json::Value::String(s) => strings.push(s),
                        other => {
                            return Err(self.error_at(line, args_start, format!("{keyword} exec form must be a JSON array of strings, element {} is {other}", i + 1)));
                        }
                    }
                }
                Ok(Some(strings))
            }
            Ok(_) => Ok(None),
            Err(e) if text.starts_with("[\"") => {
                let full = e.to_string();
                let location = format!(" at line {} column {}", e.line(), e.column());
                let reason = full.strip_suffix(&location).unwrap_or(&full);
                let mut offset = args_start + e.column().saturating_sub(1);
                while !line.text.is_char_boundary(offset.min(line.text.len())) {
                    offset -= 1;
                }
                Err(self.error_at(line, offset, format!("{keyword} has invalid JSON exec form: {reason} (write a JSON array of double-quoted strings)")))
            }
            Err(_) => Ok(None),
        }
    }

    fn key_values(&self, line: &LogicalLine, args_start: usize, keyword: &str) -> Result<Vec<KeyValue>, ParseError> {
        let args = &line.text[args_start..];
        let words = self.shell_words(args, args_start);
        if let Some((offset, first)) = words.first()
            && !first.contains('=')
        {
            // The legacy `ENV NAME value with spaces` form: one pair, the rest of the line its value.
            let value = line.text[offset + first.len()..].trim();
            if value.is_empty() {
                return Err(self.error_at(line, *offset, format!("{keyword} {first} has no value: use {keyword} {first}=value")));
            }
            return Ok(vec![KeyValue { key: first.clone(), value: value.to_string() }]);
        }
        words
            .into_iter()
            .map(|(offset, word)| match word.split_once('=') {
                Some(("", _)) => Err(self.error_at(line, offset, format!("{keyword} names can not be blank"))),
                Some((key, value)) => Ok(KeyValue { key: key.to_string(), value: value.to_string() }),
                None => Err(self.error_at(line, offset, format!("{keyword} expects name=value, found {word:?} without '='"))),
            })
            .collect()
    }

    fn file_copy(&self, line: &LogicalLine, args_start: usize, keyword: &str, mut copy: FileCopy, heredocs: Vec<Heredoc>) -> Result<FileCopy, ParseError> {
        let words: Vec<String> = match self.json_array(line, args_start, keyword)? {
            Some(items) => items,
            None => whitespace_words(&line.text, args_start).into_iter().map(|(_, w)| w.to_string()).filter(|w| heredoc_marker(w).is_none()).collect(),
        };
        let Some((dest, sources)) = words.split_last() else {
            return Err(self.error_at(line, args_start, format!("{keyword} requires at least two arguments: sources and a destination")));
        };
        if sources.is_empty() && heredocs.is_empty() {
            return Err(self.error_at(line, args_start, format!("{keyword} requires at least two arguments, only {dest:?} was given: the destination is missing")));
        }
        copy.sources = sources.to_vec();
        copy.dest = dest.clone();
        copy.heredocs = heredocs;
        Ok(copy)
    }

    /// Finds `<<NAME` words in a RUN/COPY/ADD line and reads their bodies
    /// from the lines after the instruction, in order.
    fn heredocs(&mut self, line: &LogicalLine, args_start: usize) -> Result<Vec<Heredoc>, ParseError> {
        let markers: Vec<(usize, HeredocMarker)> = self
            .shell_words(&line.text[args_start..], args_start)
            .into_iter()
            .filter_map(|(offset, word)| heredoc_marker(&word).map(|m| (offset, m)))
            .collect();
        let mut heredocs = Vec::new();
        for (offset, marker) in markers {
            let mut content = String::new();
            let first_body_line = self.next + 1;
            loop {
                let Some(body_line) = self.lines.get(self.next) else {
                    return Err(self.error_at(line, offset, format!("heredoc {} is not terminated: no line {} follows", marker.name, marker.name)));
                };
                self.next += 1;
                let body_line = if marker.strip_tabs { body_line.trim_start_matches('\t') } else { body_line };
                if body_line == marker.name {
                    break;
                }
                content.push_str(body_line);
                content.push('\n');
            }
            if marker.expand
                && let Some(at) = too_deep_at(&content, self.escape, true)
            {
                let before = &content[..at];
                let line = first_body_line + before.matches('\n').count();
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                let message = format!("heredoc {}: substitutions nested more than {MAX_NESTING} deep", marker.name);
                return Err(ParseError { file: self.file.to_string(), line, column, message: clip_message(message) });
            }
            heredocs.push(Heredoc { name: marker.name, content, expand: marker.expand });
        }
        Ok(heredocs)
    }

    fn healthcheck(&self, line: &LogicalLine, args_start: usize, flags: &mut Flags) -> Result<Healthcheck, ParseError> {
        let words = whitespace_words(&line.text, args_start);
        let Some((kind_offset, kind)) = words.first() else {
            return Err(self.error_at(line, args_start, "HEALTHCHECK requires NONE or CMD followed by a command"));
        };
        if kind.eq_ignore_ascii_case("NONE") {
            if let Some((offset, _)) = words.get(1) {
                return Err(self.error_at(line, *offset, "HEALTHCHECK NONE takes no arguments"));
            }
            if let Some(flag) = flags.flags.first() {
                return Err(self.error_at(line, flag.offset, "HEALTHCHECK NONE takes no options"));
            }
            return Ok(Healthcheck::None);
        }
        if !kind.eq_ignore_ascii_case("CMD") {
            return Err(self.error_at(line, *kind_offset, format!("unknown HEALTHCHECK type {kind:?}: expected CMD or NONE")));
        }
        let command_start = skip_whitespace(&line.text, kind_offset + kind.len());
        if command_start >= line.text.len() {
            return Err(self.error_at(line, *kind_offset, "HEALTHCHECK CMD requires a command"));
        }
        let mut duration = |name: &str| -> Result<Option<Duration>, ParseError> {
            let Some((value, offset)) = flags.string(name)? else { return Ok(None) };
            let value = unquote(&value);
            let parsed = go_duration(&value).map_err(|m| self.error_at(line, offset, format!("--{name}={value}: {m}")))?;
            if !parsed.is_zero() && parsed < Duration::from_millis(1) {
                return Err(self.error_at(line, offset, format!("--{name}={value}: must be 0 or at least 1ms")));
            }
            Ok(Some(parsed))
        };
        let interval = duration("interval")?;
        let timeout = duration("timeout")?;
        let start_period = duration("start-period")?;
        let start_interval = duration("start-interval")?;
        let retries = match flags.string("retries")? {
            None => None,
            Some((value, offset)) => Some(unquote(&value).parse::<u32>().map_err(|_| self.error_at(line, offset, format!("--retries={value}: expected a whole number of at least 0")))?),
        };
        let test = self.command(line, command_start, "HEALTHCHECK")?;
        Ok(Healthcheck::Cmd { test, interval, timeout, start_period, start_interval, retries })
    }
}

const KEYWORDS: [&str; 18] = [
    "FROM", "RUN", "CMD", "ENTRYPOINT", "ENV", "ARG", "LABEL", "EXPOSE", "WORKDIR", "USER", "VOLUME", "COPY", "ADD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD",
    "MAINTAINER",
];

impl Flags<'_> {
    fn take(&mut self, name: &str) -> Vec<Flag> {
        let (taken, kept) = std::mem::take(&mut self.flags).into_iter().partition(|f| f.name == name);
        self.flags = kept;
        taken
    }

    fn error(&self, offset: usize, message: String) -> ParseError {
        let (line, column) = self.line.position(offset);
        ParseError { file: self.file.clone(), line, column, message: clip_message(message) }
    }

    /// A flag given at most once with a value; returns the raw value and its offset.
    fn string(&mut self, name: &str) -> Result<Option<(String, usize)>, ParseError> {
        let mut taken = self.take(name);
        if let Some(second) = taken.get(1) {
            return Err(self.error(second.offset, format!("{}: --{name} given more than once", self.keyword)));
        }
        match taken.pop() {
            None => Ok(None),
            Some(Flag { value: Some(value), offset, .. }) => Ok(Some((value, offset))),
            Some(Flag { offset, .. }) => Err(self.error(offset, format!("{}: --{name} needs a value (--{name}=...)", self.keyword))),
        }
    }

    /// A switch: `--name`, `--name=true` or `--name=false`.
    fn bool(&mut self, name: &str) -> Result<bool, ParseError> {
        let mut taken = self.take(name);
        if let Some(second) = taken.get(1) {
            return Err(self.error(second.offset, format!("{}: --{name} given more than once", self.keyword)));
        }
        match taken.pop() {
            None => Ok(false),
            Some(Flag { value: None, .. }) => Ok(true),
            Some(Flag { value: Some(v), offset, .. }) => match unquote(&v).to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(self.error(offset, format!("{}: --{name}={v}: expected true or false", self.keyword))),
            },
        }
    }

    /// A flag that may repeat; each occurrence must have a value.
    fn all(&mut self, name: &str) -> Vec<(String, usize)> {
        self.take(name).into_iter().map(|f| (f.value.unwrap_or_default(), f.offset)).collect()
    }

    fn finish(self) -> Result<(), ParseError> {
        match self.flags.first() {
            None => Ok(()),
            Some(flag) => Err(self.error(flag.offset, format!("unknown flag --{} for {}", flag.name, self.keyword))),
        }
    }
}

/// `# key=value` at the top of the file.
fn directive(line: &str) -> Option<(&str, &str, usize)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let key = &rest[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[key_len..].trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    let value_offset = value.as_ptr() as usize - line.as_ptr() as usize;
    let value_column = line[..value_offset].chars().count() + 1;
    Some((key, value, value_column))
}

fn keyword_at(text: &str, start: usize) -> (&str, usize) {
    let rest = &text[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    (&rest[..end], start + end)
}

fn skip_whitespace(text: &str, from: usize) -> usize {
    let from = from.min(text.len());
    text[from..].find(|c: char| !c.is_whitespace()).map_or(text.len(), |i| from + i)
}

/// Words separated by any whitespace, quotes not special (how Docker splits
/// FROM, EXPOSE and the shell form of COPY, ADD and VOLUME).
fn whitespace_words(text: &str, from: usize) -> Vec<(usize, &str)> {
    let mut words = Vec::new();
    let mut position = skip_whitespace(text, from);
    while position < text.len() {
        let end = text[position..].find(char::is_whitespace).map_or(text.len(), |i| position + i);
        words.push((position, &text[position..end]));
        position = skip_whitespace(text, end);
    }
    words
}

fn valid_stage_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase()) && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Removes quote characters, keeping what they enclose, for flag values that
/// are not variable-expanded.
fn unquote(value: &str) -> String {
    value.chars().filter(|c| *c != '"' && *c != '\'').collect()
}

struct HeredocMarker {
    name: String,
    strip_tabs: bool,
    expand: bool,
}

/// `<<NAME`, `<<-NAME`, `<<'NAME'`, `<<"NAME"`.
fn heredoc_marker(word: &str) -> Option<HeredocMarker> {
    let rest = word.strip_prefix("<<")?;
    let (strip_tabs, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (name, expand) = match rest.chars().next()? {
        q @ ('"' | '\'') => (rest.strip_prefix(q)?.strip_suffix(q)?, false),
        _ => (rest, true),
    };
    let valid = !name.is_empty() && name.chars().all(|c| !c.is_whitespace() && !"<>|&;()'\"$`\\".contains(c));
    valid.then(|| HeredocMarker { name: name.to_string(), strip_tabs, expand })
}

/// `type=cache,target=/root/.cache,sharing=locked,...`.
fn run_mount(spec: &str) -> Result<RunMount, String> {
    let mut mount = RunMount { kind: MountKind::Bind, target: String::new(), source: None, from: None, id: None, sharing: CacheSharing::Shared, read_only: true, mode: None, uid: None, gid: None, size: None };
    let mut read_only = None;
    let fields: Vec<(String, Option<String>)> = csv_fields(spec).into_iter().map(|f| match f.split_once('=') {
        Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
        None => (f.to_ascii_lowercase(), None),
    }).collect();
    for (key, value) in &fields {
        if key == "type" {
            mount.kind = match value.as_deref() {
                Some("bind") => MountKind::Bind,
                Some("cache") => MountKind::Cache,
                Some("tmpfs") => MountKind::Tmpfs,
                Some(other @ ("secret" | "ssh")) => return Err(format!("--mount type={other} is not supported by berth")),
                other => return Err(format!("--mount: unknown type {:?}: expected bind, cache or tmpfs", other.unwrap_or(""))),
            };
        }
    }
    for (key, value) in fields {
        let need = |value: Option<String>| value.filter(|v| !v.is_empty()).ok_or_else(|| format!("--mount: {key} needs a value"));
        let number = |value: Option<String>, radix: u32| -> Result<u32, String> {
            let v = need(value)?;
            u32::from_str_radix(&v, radix).map_err(|_| format!("--mount: {key}={v} is not a valid number"))
        };
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => mount.target = need(value)?,
            "source" | "src" => mount.source = Some(need(value)?),
            "from" => mount.from = Some(need(value)?),
            "id" => mount.id = Some(need(value)?),
            "sharing" => {
                mount.sharing = match need(value)?.as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    other => return Err(format!("--mount: sharing={other}: expected shared, private or locked")),
                }
            }
            "mode" => mount.mode = Some(number(value, 8)?),
            "uid" => mount.uid = Some(number(value, 10)?),
            "gid" => mount.gid = Some(number(value, 10)?),
            "size" => mount.size = Some(byte_size(&need(value)?).ok_or_else(|| format!("--mount: size={}: expected bytes such as 64m", key))?),
            "ro" | "readonly" | "rw" | "readwrite" => {
                let on = match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(other) => return Err(format!("--mount: {key}={other}: expected true or false")),
                };
                read_only = Some(if key.starts_with("ro") || key == "readonly" { on } else { !on });
            }
            other => return Err(format!("--mount: unknown option {other:?}")),
        }
    }
    if mount.target.is_empty() {
        return Err("--mount needs a target (target=/path)".to_string());
    }
    mount.read_only = read_only.unwrap_or(mount.kind == MountKind::Bind);
    Ok(mount)
}

/// Comma-separated fields with quotes protecting commas, quotes removed.
fn csv_fields(spec: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quote = None;
    for c in spec.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, ',') => fields.push(String::new()),
            (_, c) => fields.last_mut().expect("starts with one field").push(c),
        }
    }
    fields.retain(|f| !f.is_empty());
    fields
}

fn byte_size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b');
    let (digits, multiplier) = match trimmed.chars().last()? {
        'k' => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        'm' => (&trimmed[..trimmed.len() - 1], 1 << 20),
        'g' => (&trimmed[..trimmed.len() - 1], 1 << 30),
        _ => (trimmed, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// Go's `time.ParseDuration` syntax, which HEALTHCHECK options use: `0`, or
/// numbers with units `ns us µs ms s m h`, e.g. `1m30s`, `1.5s`.
fn go_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return Err("expected a non-negative duration such as 30s or 1m30s".to_string());
    }
    let mut total = 0f64;
    let mut rest = text.trim_start_matches('+');
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().map_err(|_| format!("expected a number in {text:?}"))?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("missing unit in {text:?} (ns, us, ms, s, m or h)")),
            other => return Err(format!("unknown unit {other:?} in {text:?}")),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("{text:?} is out of range"))
}
