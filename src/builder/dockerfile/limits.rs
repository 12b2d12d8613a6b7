//! Bounds on Dockerfile input. A Dockerfile comes from whoever may build, and
//! berthd parses it in its own process: no input may overflow the stack, take
//! quadratic time or produce an error message too large to send back.

use std::borrow::Cow;

/// `${a:-${b:-...}}` levels. Each level is a few stack frames of the expander;
/// 64 is far more than any real Dockerfile nests (one or two levels), and far
/// less than what overflows a 2 MiB thread stack.
pub const MAX_NESTING: usize = 64;

/// Bytes in one instruction, continuation lines joined. A command line longer
/// than this could not run anyway (Linux caps one argument at 128 KiB), and
/// every instruction is echoed in `Step N/M` and stored in the image history.
pub const MAX_INSTRUCTION_BYTES: usize = 1 << 20;

/// Instructions in one Dockerfile, FROM lines included. Each step's scope copies
/// the environment so far, and stages are looked up by name, so the work grows
/// with the square of the count; real Dockerfiles have at most a few hundred.
pub const MAX_INSTRUCTIONS: usize = 10_000;

/// Characters of user text (a word, a name, a whole message) shown in an error.
const SHOWN_CHARS: usize = 200;

/// `text` as an error message shows it: whole when short, else its start and end
/// around the number of characters left out.
pub fn clip(text: &str) -> Cow<'_, str> {
    let count = text.chars().count();
    if count <= SHOWN_CHARS {
        return Cow::Borrowed(text);
    }
    let head: String = text.chars().take(SHOWN_CHARS / 2).collect();
    let tail: String = text.chars().skip(count - SHOWN_CHARS / 4).collect();
    Cow::Owned(format!("{head}…[{} characters]…{tail}", count - SHOWN_CHARS / 2 - SHOWN_CHARS / 4))
}

/// A message that may quote user text, clipped as a whole to a few lines.
pub fn clip_message(message: String) -> String {
    if message.chars().count() <= SHOWN_CHARS * 4 {
        return message;
    }
    let count = message.chars().count();
    let head: String = message.chars().take(SHOWN_CHARS * 2).collect();
    let tail: String = message.chars().skip(count - SHOWN_CHARS).collect();
    format!("{head}…[{} characters]…{tail}", count - SHOWN_CHARS * 3)
}

/// The byte offset of the first `${` nested deeper than [`MAX_NESTING`] in
/// `text`, following the expander's rules (quotes, the escape character; `raw`
/// for heredoc bodies, where quotes are ordinary characters), so that the parser
/// can report it at its line and column before anything expands it.
pub fn too_deep_at(text: &str, escape: char, raw: bool) -> Option<usize> {
    #[derive(PartialEq)]
    enum Frame {
        Brace,
        Double,
    }
    let mut frames: Vec<Frame> = Vec::new();
    let mut braces = 0usize;
    let mut chars = text.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        let in_double = frames.last() == Some(&Frame::Double);
        match c {
            c if c == escape => {
                // As the expander: inside `${...}` the escape protects anything, in
                // double quotes only `"`, `$` and itself, in a heredoc body `$` and
                // itself, elsewhere anything.
                let protects = match (chars.peek(), frames.last()) {
                    (None, _) => false,
                    (Some(_), Some(Frame::Brace)) => true,
                    (Some(&(_, n)), Some(Frame::Double)) => n == '"' || n == '$' || n == escape,
                    (Some(&(_, n)), None) if raw => n == '$' || n == escape,
                    (Some(_), None) => true,
                };
                if protects {
                    chars.next();
                }
            }
            '\'' if !raw && !in_double => {
                for (_, q) in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                }
            }
            '"' if !raw => {
                if in_double {
                    frames.pop();
                } else {
                    frames.push(Frame::Double);
                }
            }
            '$' if chars.peek().is_some_and(|&(_, n)| n == '{') => {
                chars.next();
                braces += 1;
                if braces > MAX_NESTING {
                    return Some(offset);
                }
                frames.push(Frame::Brace);
            }
            '}' if frames.last() == Some(&Frame::Brace) => {
                frames.pop();
                braces -= 1;
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_measured_as_the_expander_sees_it() {
        let nested = |depth: usize| format!("{}x{}", "${A:-".repeat(depth), "}".repeat(depth));
        assert_eq!(too_deep_at(&nested(MAX_NESTING), '\\', false), None);
        assert_eq!(too_deep_at(&nested(MAX_NESTING + 1), '\\', false), Some(MAX_NESTING * 5));
        // Closed substitutions one after another are not nested.
        assert_eq!(too_deep_at(&"${A:-${B}}".repeat(10_000), '\\', false), None);
        // Quoted or escaped, `${` starts nothing; a quoted `}` closes nothing.
        assert_eq!(too_deep_at(&"'${'".repeat(100), '\\', false), None);
        assert_eq!(too_deep_at(&"\\${".repeat(100), '\\', false), None);
        assert!(too_deep_at(&"${A:-\"}\"".repeat(100), '\\', false).is_some());
        // In a heredoc body quotes are ordinary characters.
        assert!(too_deep_at(&"'${A:-".repeat(100), '\\', true).is_some());
    }

    #[test]
    fn clipped_text_keeps_both_ends() {
        assert_eq!(clip("short"), "short");
        let long = format!("start{}end", "x".repeat(1 << 20));
        let shown = clip(&long);
        assert!(shown.starts_with("start") && shown.ends_with("end") && shown.len() < 400, "{shown}");
        let message = clip_message(format!("{}: the hint at the end", "y".repeat(1 << 20)));
        assert!(message.ends_with("the hint at the end") && message.len() < 1000);
    }
}
