//! Reading shell lines as a shell would, enough to run the examples the docs show: `\`
//! continuations, `# comments`, single quotes (literal), double quotes and `$NAME` (expanded
//! from this process's environment; unset is empty, as in a shell).

/// The lines of a shell block, `\`-continuations joined, comments and blank lines dropped.
pub fn logical_lines(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for raw in code.lines() {
        let line = raw.trim();
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let words = strip_comment(&current);
        if !words.trim().is_empty() {
            out.push(words.trim().to_string());
        }
        current.clear();
    }
    out
}

/// `line` without a trailing `# comment` (a `#` at a word start, outside quotes).
fn strip_comment(line: &str) -> String {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return line[..i].to_string(),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line.to_string()
}

/// Splits a shell line into words: single quotes are literal, double quotes expand `$NAME`,
/// and so does a bare `$NAME` (from this process's environment; unset is empty).
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '$' => word.push_str(&variable(&mut chars)),
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            '$' => {
                in_word = true;
                word.push_str(&variable(&mut chars));
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

fn variable(chars: &mut std::iter::Peekable<std::str::Chars>) -> String {
    let braced = chars.peek() == Some(&'{');
    if braced {
        chars.next();
    }
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
            chars.next();
        } else {
            break;
        }
    }
    if braced && chars.peek() == Some(&'}') {
        chars.next();
    }
    std::env::var(&name).unwrap_or_default()
}
