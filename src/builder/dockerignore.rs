//! `.dockerignore`: which build-context paths a build leaves out, with
//! Docker's semantics. Each line is a pattern, cleaned like a path (`./a//b/`
//! is `a/b`, a leading `/` dropped); `#` starts a comment line; `!` makes an
//! exception that puts matching paths back; the last pattern that matches a
//! path, or any of its parent directories, decides. In patterns `*` and `?`
//! stay within one path segment, `[...]` is a character class, `**` spans
//! any number of segments, and the escape `\` takes the next character
//! literally. Docker still sends the Dockerfile and `.dockerignore` itself
//! when they are ignored; that is for the context sender to honour.

/// A `.dockerignore` line that is not a valid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".dockerignore:{line}: {message}")]
pub struct IgnoreError {
    pub line: usize,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug)]
struct Pattern {
    exception: bool,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `/`.
    AnyChar,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` ending the pattern: anything at all.
    AnyPath,
    /// `**/` (or `**` within the pattern): nothing, or anything ending in `/`.
    AnyDirs,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

impl DockerIgnore {
    pub fn parse(text: &str) -> Result<DockerIgnore, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            if pattern.is_empty() {
                continue;
            }
            let cleaned = clean_path(pattern);
            let cleaned = match cleaned.strip_prefix('/') {
                Some(rest) if !rest.is_empty() => rest.to_string(),
                _ => cleaned,
            };
            let tokens = compile(&cleaned).map_err(|message| IgnoreError { line: index + 1, message: format!("{pattern:?}: {message}") })?;
            patterns.push(Pattern { exception, tokens });
        }
        Ok(DockerIgnore { patterns })
    }

    /// Whether the context path (relative, `/`-separated) is left out.
    pub fn matches(&self, relative_path: &str) -> bool {
        let path: Vec<char> = clean_path(relative_path).trim_start_matches('/').chars().collect();
        let parents: Vec<usize> = path.iter().enumerate().filter(|(_, c)| **c == '/').map(|(i, _)| i).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // A pattern that could only confirm the current answer needn't be tried.
            if pattern.exception != excluded {
                continue;
            }
            let hit = full_match(&pattern.tokens, &path) || parents.iter().any(|&end| full_match(&pattern.tokens, &path[..end]));
            if hit {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether a directory is left out together with everything below it, so
    /// a context walk need not enter it: it is excluded and no exception
    /// pattern could put back anything inside it.
    pub fn can_skip_dir(&self, relative_dir: &str) -> bool {
        if !self.matches(relative_dir) {
            return false;
        }
        let mut inside: Vec<char> = clean_path(relative_dir).trim_start_matches('/').chars().collect();
        inside.push('/');
        !self.patterns.iter().any(|p| p.exception && could_match_below(&p.tokens, &inside))
    }
}

/// Go's `path.Clean`: no empty, `.` or resolvable `..` segments, no trailing `/`.
fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => match segments.last() {
                Some(&last) if last != ".." => {
                    segments.pop();
                }
                _ if rooted => {}
                _ => segments.push(".."),
            },
            other => segments.push(other),
        }
    }
    let joined = segments.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() { Token::AnyPath } else { Token::AnyDirs });
                continue;
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::AnyChar),
            '\\' => {
                i += 1;
                let &c = chars.get(i).ok_or("a trailing \\ escapes nothing")?;
                tokens.push(Token::Literal(c));
            }
            '[' => {
                let (class, end) = class(&chars, i + 1)?;
                tokens.push(class);
                i = end;
            }
            c => tokens.push(Token::Literal(c)),
        }
        i += 1;
    }
    Ok(tokens)
}

/// Parses a character class starting after `[`; returns it and the index of `]`.
fn class(chars: &[char], mut i: usize) -> Result<(Token, usize), String> {
    let unterminated = || "a character class '[' is not closed".to_string();
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let read = |i: &mut usize| -> Result<char, String> {
        let c = *chars.get(*i).ok_or_else(unterminated)?;
        *i += 1;
        if c == '\\' {
            let escaped = *chars.get(*i).ok_or_else(unterminated)?;
            *i += 1;
            return Ok(escaped);
        }
        Ok(c)
    };
    loop {
        match chars.get(i) {
            None => return Err(unterminated()),
            Some(']') if !ranges.is_empty() => return Ok((Token::Class { negated, ranges }, i)),
            Some(']') => return Err("a character class '[]' is empty".to_string()),
            Some(_) => {
                let low = read(&mut i)?;
                let high = if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                    i += 1;
                    read(&mut i)?
                } else {
                    low
                };
                if high < low {
                    return Err(format!("the range {low}-{high} in a character class is reversed"));
                }
                ranges.push((low, high));
            }
        }
    }
}

/// Runs the pattern over `text`; returns which token positions are reachable
/// once all of `text` is consumed.
fn reachable_after(tokens: &[Token], text: &[char]) -> Vec<bool> {
    // states[t]: the first t tokens can consume the text read so far.
    let mut states = vec![false; tokens.len() + 1];
    states[0] = true;
    close(tokens, &mut states);
    for &c in text {
        let mut next = vec![false; tokens.len() + 1];
        for (t, token) in tokens.iter().enumerate() {
            if !states[t] {
                continue;
            }
            match token {
                Token::Literal(l) if *l == c => next[t + 1] = true,
                Token::AnyChar if c != '/' => next[t + 1] = true,
                Token::Class { negated, ranges } if c != '/' && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated => next[t + 1] = true,
                // These consume the character and stay, able to take more.
                Token::Star if c != '/' => next[t] = true,
                Token::AnyPath => next[t] = true,
                Token::AnyDirs => next[t] = true,
                _ => {}
            }
        }
        states = next;
        close(tokens, &mut states);
    }
    states
}

/// Adds the states reachable without consuming a character: past `*`, `**`
/// and `**/`, which may all match nothing.
fn close(tokens: &[Token], states: &mut [bool]) {
    for t in 0..tokens.len() {
        if states[t] && matches!(tokens[t], Token::Star | Token::AnyPath | Token::AnyDirs) {
            states[t + 1] = true;
        }
    }
}

/// Whether the pattern matches all of `text`. `**/` consumes either nothing
/// or text ending in `/`, which the state machine (letting it consume
/// anything) cannot express, so the text is split at each `AnyDirs` instead.
fn full_match(tokens: &[Token], text: &[char]) -> bool {
    match tokens.iter().position(|t| *t == Token::AnyDirs) {
        None => reachable_after(tokens, text)[tokens.len()],
        Some(at) => {
            let (head, tail) = (&tokens[..at], &tokens[at + 1..]);
            // Where the head can end: every prefix it matches fully.
            (0..=text.len()).any(|split| {
                reachable_after(head, &text[..split])[head.len()] && dirs_then(tail, &text[split..])
            })
        }
    }
}

/// Matches `(.*/)?` followed by `tail` against `text`.
fn dirs_then(tail: &[Token], text: &[char]) -> bool {
    full_match(tail, text) || text.iter().enumerate().any(|(i, c)| *c == '/' && full_match(tail, &text[i + 1..]))
}

/// Whether some path starting with `prefix` (which ends in `/`) could match:
/// the pattern consumes the whole prefix and has tokens left, or ends in `**`.
fn could_match_below(tokens: &[Token], prefix: &[char]) -> bool {
    let states = reachable_after(tokens, prefix);
    // Treating `**/` as "anything" here only makes the answer more cautious.
    states.iter().any(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn comments_blank_lines_and_cleaning() {
        let rules = ignore("# a comment\n\n  /build/  \n./docs//old/../tmp\n");
        assert!(rules.matches("build"));
        assert!(rules.matches("build/out.o"));
        assert!(rules.matches("docs/tmp/x"));
        assert!(!rules.matches("docs/old"));
        assert!(!rules.matches("src/build"));
        assert!(!rules.matches("# a comment"));
    }

    #[test]
    fn stars_stay_in_one_segment() {
        let rules = ignore("*.log\n*/temp*\ndata?.bin\n");
        assert!(rules.matches("app.log"));
        assert!(!rules.matches("logs/app.log"));
        assert!(rules.matches("a/temporary"));
        assert!(!rules.matches("a/b/temporary"));
        assert!(rules.matches("data1.bin"));
        assert!(!rules.matches("data12.bin"));
        assert!(!rules.matches("data/.bin"));
    }

    #[test]
    fn double_star_spans_segments() {
        let rules = ignore("**/*.tmp\nvendor/**\na/**/z\n");
        assert!(rules.matches("x.tmp"));
        assert!(rules.matches("deep/er/x.tmp"));
        assert!(rules.matches("vendor/a/b"));
        assert!(rules.matches("a/z"));
        assert!(rules.matches("a/b/c/z"));
        assert!(!rules.matches("a/bz"));
        assert!(!rules.matches("ab/z"));
    }

    #[test]
    fn last_match_wins_and_exceptions_restore() {
        let rules = ignore("*.md\n!README.md\nREADME*.md\n!README-keep.md\n");
        assert!(rules.matches("NOTES.md"));
        assert!(rules.matches("README.md"));
        assert!(!rules.matches("README-keep.md"));
        let rules = ignore("docs\n!docs/keep\n");
        assert!(rules.matches("docs/drop"));
        assert!(!rules.matches("docs/keep"));
        assert!(!rules.matches("docs/keep/inner"));
    }

    #[test]
    fn character_classes_and_escapes() {
        let rules = ignore("file[0-9].txt\nx[!a]y\nlit\\*\n");
        assert!(rules.matches("file7.txt"));
        assert!(!rules.matches("filex.txt"));
        assert!(rules.matches("xby"));
        assert!(!rules.matches("xay"));
        assert!(rules.matches("lit*"));
        assert!(!rules.matches("litx"));
    }

    #[test]
    fn invalid_patterns_name_the_line() {
        let err = DockerIgnore::parse("ok\nbad[\n").unwrap_err();
        assert_eq!(err.to_string(), ".dockerignore:2: \"bad[\": a character class '[' is not closed");
        let err = DockerIgnore::parse("trail\\").unwrap_err();
        assert_eq!(err.to_string(), ".dockerignore:1: \"trail\\\\\": a trailing \\ escapes nothing");
    }

    #[test]
    fn directories_skipped_only_without_exceptions_inside() {
        let rules = ignore("node_modules\ndocs\n!docs/*.md\n**/cache\n!keep/**/cache\n");
        assert!(rules.can_skip_dir("node_modules"));
        assert!(!rules.can_skip_dir("docs"));
        assert!(rules.can_skip_dir("a/cache"));
        assert!(!rules.can_skip_dir("keep/x/cache"));
        assert!(!rules.can_skip_dir("src"));
    }
}
