//! Variable substitution in Dockerfile words, following the shell-word lexer
//! Docker's builder uses: `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`,
//! `${NAME:+word}`, `${NAME+word}`, `${NAME:?message}`, `${NAME?message}`;
//! single quotes literal, double quotes grouping with substitution inside, the
//! escape character taking the next character literally, unset names empty.

use super::limits::{MAX_NESTING, clip};

/// Why a word could not be expanded. Words and values in messages are clipped
/// (see `limits::clip`), so that a huge word gives a short error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("substitutions nested more than {max} deep in {word:?}", max = MAX_NESTING)]
    TooDeep { word: String },
    #[error("unexpected end of statement while looking for matching single-quote in {word:?}")]
    UnterminatedSingleQuote { word: String },
    #[error("unexpected end of statement while looking for matching double-quote in {word:?}")]
    UnterminatedDoubleQuote { word: String },
    #[error("missing '}}' in {word:?}")]
    MissingBrace { word: String },
    #[error("bad substitution in {word:?}: expected a variable name after '${{'")]
    MissingName { word: String },
    #[error("unsupported modifier {modifier:?} in substitution {word:?}")]
    UnsupportedModifier { modifier: char, word: String },
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// Expands one word to one string, quotes removed (ENV values, WORKDIR, USER...).
pub fn expand_word(word: &str, escape: char, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    Ok(Lexer::new(word, escape, lookup, false).run()?.0)
}

/// Expands a word and splits the result where unquoted whitespace (written or
/// produced by an unquoted substitution) separates words, as EXPOSE does.
pub fn expand_words(word: &str, escape: char, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>, ExpandError> {
    Ok(Lexer::new(word, escape, lookup, false).run()?.1)
}

/// Expands variables in a heredoc body: quotes are ordinary characters there,
/// and the escape character only protects a following `$` or itself.
pub fn expand_heredoc(body: &str, escape: char, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    Ok(Lexer::new(body, escape, lookup, true).run()?.0)
}

struct Lexer<'a> {
    word: &'a str,
    chars: Vec<char>,
    pos: usize,
    escape: char,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    raw: bool,
    /// `${...}` substitutions open right now: `dollar` and `until` recurse.
    depth: usize,
}

/// Collects the fields of `expand_words`: literal whitespace and whitespace
/// from unquoted substitutions separate fields, quoted text never does.
#[derive(Default)]
struct Fields {
    done: Vec<String>,
    current: String,
    in_field: bool,
}

impl Fields {
    fn splitting(&mut self, text: &str) {
        for c in text.chars() {
            if c.is_whitespace() {
                if self.in_field {
                    self.done.push(std::mem::take(&mut self.current));
                    self.in_field = false;
                }
            } else {
                self.current.push(c);
                self.in_field = true;
            }
        }
    }

    fn literal(&mut self, text: &str) {
        self.current.push_str(text);
        self.in_field = true;
    }

    fn finish(mut self) -> Vec<String> {
        if self.in_field {
            self.done.push(self.current);
        }
        self.done
    }
}

impl<'a> Lexer<'a> {
    fn new(word: &'a str, escape: char, lookup: &'a dyn Fn(&str) -> Option<String>, raw: bool) -> Self {
        Lexer { word, chars: word.chars().collect(), pos: 0, escape, lookup, raw, depth: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn run(mut self) -> Result<(String, Vec<String>), ExpandError> {
        let mut result = String::new();
        let mut fields = Fields::default();
        while let Some(c) = self.next() {
            if self.raw {
                let text = if c == '$' {
                    self.dollar()?
                } else if c == self.escape && matches!(self.peek(), Some(n) if n == '$' || n == self.escape) {
                    self.next().map(String::from).unwrap_or_default()
                } else {
                    c.to_string()
                };
                result.push_str(&text);
                continue;
            }
            match c {
                '\'' => {
                    let text = self.single_quoted()?;
                    result.push_str(&text);
                    fields.literal(&text);
                }
                '"' => {
                    let text = self.double_quoted()?;
                    result.push_str(&text);
                    fields.literal(&text);
                }
                '$' => {
                    let text = self.dollar()?;
                    result.push_str(&text);
                    fields.splitting(&text);
                }
                c if c == self.escape => {
                    // A trailing escape character has nothing to protect and is dropped.
                    if let Some(next) = self.next() {
                        result.push(next);
                        fields.literal(&next.to_string());
                    }
                }
                c => {
                    result.push(c);
                    fields.splitting(&c.to_string());
                }
            }
        }
        Ok((result, fields.finish()))
    }

    /// Reads up to `stop` (consumed) for the word of `${NAME:-word}`, which
    /// may itself hold quotes, escapes and substitutions.
    fn until(&mut self, stop: char) -> Result<String, ExpandError> {
        let mut result = String::new();
        loop {
            let Some(c) = self.next() else {
                return Err(ExpandError::MissingBrace { word: self.shown() });
            };
            match c {
                c if c == stop => return Ok(result),
                '\'' if !self.raw => result.push_str(&self.single_quoted()?),
                '"' if !self.raw => result.push_str(&self.double_quoted()?),
                '$' => result.push_str(&self.dollar()?),
                c if c == self.escape => {
                    if let Some(next) = self.next() {
                        result.push(next);
                    }
                }
                c => result.push(c),
            }
        }
    }

    fn single_quoted(&mut self) -> Result<String, ExpandError> {
        let mut text = String::new();
        loop {
            match self.next() {
                None => return Err(ExpandError::UnterminatedSingleQuote { word: self.shown() }),
                Some('\'') => return Ok(text),
                Some(c) => text.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, ExpandError> {
        let mut text = String::new();
        loop {
            match self.next() {
                None => return Err(ExpandError::UnterminatedDoubleQuote { word: self.shown() }),
                Some('"') => return Ok(text),
                Some('$') => text.push_str(&self.dollar()?),
                Some(c) if c == self.escape => match self.peek() {
                    // Inside double quotes the escape only protects these; elsewhere it is literal.
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.next();
                        text.push(n);
                    }
                    _ => text.push(c),
                },
                Some(c) => text.push(c),
            }
        }
    }

    /// The word for an error message.
    fn shown(&self) -> String {
        clip(self.word).into_owned()
    }

    /// Called after a `$`; returns what the substitution yields. Nesting is
    /// bounded because each level is a few stack frames: without a bound a
    /// hostile `${a:-${a:-...}}` overflows the stack and aborts berthd.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        if self.depth >= MAX_NESTING {
            return Err(ExpandError::TooDeep { word: self.shown() });
        }
        self.depth += 1;
        let result = self.substitution();
        self.depth -= 1;
        result
    }

    fn substitution(&mut self) -> Result<String, ExpandError> {
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok((self.lookup)(&name).unwrap_or_default());
        }
        self.next();
        let name = self.name();
        if name.is_empty() {
            return Err(ExpandError::MissingName { word: self.shown() });
        }
        let value = (self.lookup)(&name);
        let Some(c) = self.next() else {
            return Err(ExpandError::MissingBrace { word: self.shown() });
        };
        let (colon, modifier) = match c {
            '}' => return Ok(value.unwrap_or_default()),
            ':' => (true, self.next()),
            other => (false, Some(other)),
        };
        let Some(modifier) = modifier else {
            return Err(ExpandError::MissingBrace { word: self.shown() });
        };
        if !matches!(modifier, '-' | '+' | '?') {
            return Err(ExpandError::UnsupportedModifier { modifier, word: self.shown() });
        }
        let word = self.until('}')?;
        // With a colon an empty value counts as unset.
        let set = match &value {
            Some(v) => !(colon && v.is_empty()),
            None => false,
        };
        match modifier {
            '-' => Ok(if set { value.unwrap_or_default() } else { word }),
            '+' => Ok(if set { word } else { String::new() }),
            _ if set => Ok(value.unwrap_or_default()),
            _ => {
                let message = if word.is_empty() { "is not allowed to be unset".to_string() } else { word };
                Err(ExpandError::Required { name: clip(&name).into_owned(), message: clip(&message).into_owned() })
            }
        }
    }

    /// A variable name: letters, digits and `_`, a run of digits, or one
    /// shell special parameter.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                    name.push(c);
                    self.next();
                }
                return name;
            }
            Some(c @ ('@' | '*' | '#' | '?' | '-' | '$' | '!')) => {
                self.next();
                return c.to_string();
            }
            _ => {}
        }
        while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            name.push(c);
            self.next();
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("apple".into()),
            "EMPTY" => Some(String::new()),
            "SPACED" => Some("80  443/udp".into()),
            _ => None,
        }
    }

    fn word(w: &str) -> String {
        expand_word(w, '\\', &env).unwrap()
    }

    #[test]
    fn plain_and_braced_names() {
        assert_eq!(word("$A"), "apple");
        assert_eq!(word("${A}s"), "apples");
        assert_eq!(word("$As"), "");
        assert_eq!(word("$UNSET-x"), "-x");
        assert_eq!(word("a$"), "a$");
        assert_eq!(word("$1x"), "x");
    }

    #[test]
    fn modifiers_with_and_without_colon() {
        assert_eq!(word("${UNSET:-d}"), "d");
        assert_eq!(word("${EMPTY:-d}"), "d");
        assert_eq!(word("${EMPTY-d}"), "");
        assert_eq!(word("${UNSET-d}"), "d");
        assert_eq!(word("${A:-d}"), "apple");
        assert_eq!(word("${A:+set}"), "set");
        assert_eq!(word("${EMPTY:+set}"), "");
        assert_eq!(word("${EMPTY+set}"), "set");
        assert_eq!(word("${UNSET:+set}"), "");
        assert_eq!(word("${UNSET:-$A}"), "apple");
        assert_eq!(word("${UNSET:-'a}b'}"), "a}b");
        assert_eq!(
            expand_word("${UNSET:?must be given}", '\\', &env).unwrap_err().to_string(),
            "UNSET: must be given"
        );
        assert_eq!(word("${A?}"), "apple");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(word("'$A'"), "$A");
        assert_eq!(word("\"$A b\""), "apple b");
        assert_eq!(word("\\$A"), "$A");
        assert_eq!(word("\"\\$A\\n\""), "$A\\n");
        assert_eq!(word("a\\ b"), "a b");
        assert_eq!(word("trail\\"), "trail");
        assert_eq!(expand_word("`$A", '`', &env).unwrap(), "$A");
        assert_eq!(expand_word("C:\\dir", '`', &env).unwrap(), "C:\\dir");
    }

    #[test]
    fn errors_name_the_word() {
        let err = |w: &str| expand_word(w, '\\', &env).unwrap_err().to_string();
        assert_eq!(err("'open"), "unexpected end of statement while looking for matching single-quote in \"'open\"");
        assert_eq!(err("\"open"), "unexpected end of statement while looking for matching double-quote in \"\\\"open\"");
        assert_eq!(err("${A"), "missing '}' in \"${A\"");
        assert_eq!(err("${}"), "bad substitution in \"${}\": expected a variable name after '${'");
        assert_eq!(err("${A%x}"), "unsupported modifier '%' in substitution \"${A%x}\"");
    }

    #[test]
    fn words_split_on_unquoted_whitespace_only() {
        let words = |w: &str| expand_words(w, '\\', &env).unwrap();
        assert_eq!(words("$SPACED 8080"), vec!["80", "443/udp", "8080"]);
        assert_eq!(words("\"$SPACED\""), vec!["80  443/udp"]);
        assert_eq!(words("a\\ b c"), vec!["a b", "c"]);
    }

    #[test]
    fn nesting_is_bounded_and_errors_stay_short() {
        let nested = |depth: usize| format!("{}x{}", "${A:-".repeat(depth), "}".repeat(depth));
        assert_eq!(word(&nested(MAX_NESTING)), "apple");
        let deep = nested(10_000);
        let err = expand_word(&deep, '\\', &env).unwrap_err();
        assert!(matches!(err, ExpandError::TooDeep { .. }), "{err}");
        assert!(err.to_string().len() < 1000, "{}", err.to_string().len());
        let quoted = format!("{}x", "${UNSET:-\"".repeat(10_000));
        assert!(matches!(expand_word(&quoted, '\\', &env), Err(ExpandError::TooDeep { .. })));
        let long_name = format!("${{{}:?}}", "N".repeat(1 << 20));
        assert!(expand_word(&long_name, '\\', &env).unwrap_err().to_string().len() < 1000);
    }

    #[test]
    fn heredoc_bodies_keep_quotes() {
        let body = expand_heredoc("echo '$A' \"x\" \\$A \\n\n", '\\', &env).unwrap();
        assert_eq!(body, "echo 'apple' \"x\" $A \\n\n");
    }
}
