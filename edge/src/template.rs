//! `google.api.http` path templates:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```

use std::fmt;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Single,
    /// `**`: the rest of the path (zero or more segments); only last.
    Rest,
}

/// A variable binding the segments `start..end` to a field path. `end` is
/// `None` when the variable ends with `**`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field_path: Vec<String>,
    pub start: usize,
    pub end: Option<usize>,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub segments: Vec<Segment>,
    pub variables: Vec<Variable>,
    pub verb: Option<String>,
    source: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let err = |reason| TemplateError {
            template: template.to_owned(),
            reason,
        };
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| err("must start with '/'"))?;
        // The verb follows the last ':' outside braces.
        let (body, verb) = split_verb(rest);
        if verb.is_some_and(str::is_empty) {
            return Err(err("empty verb"));
        }
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut chars = body;
        while !chars.is_empty() || segments.is_empty() {
            if let Some(after) = chars.strip_prefix('{') {
                let close = after.find('}').ok_or_else(|| err("unclosed '{'"))?;
                let inner = &after[..close];
                let (path, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                let field_path: Vec<String> = path.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|p| {
                    p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                }) {
                    return Err(err("variable names must be field paths like user.id"));
                }
                let start = segments.len();
                for seg in pattern.split('/') {
                    segments.push(
                        parse_segment(seg).ok_or_else(|| err("invalid segment in a variable"))?,
                    );
                }
                let end = if segments.last() == Some(&Segment::Rest) {
                    None
                } else {
                    Some(segments.len())
                };
                variables.push(Variable {
                    field_path,
                    start,
                    end,
                });
                chars = &after[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                let seg = &chars[..end];
                if seg.contains(['{', '}']) {
                    return Err(err("a variable must fill a whole segment"));
                }
                segments.push(parse_segment(seg).ok_or_else(|| err("empty segment"))?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some(next) if !next.is_empty() => chars = next,
                Some(_) => return Err(err("trailing '/'")),
                None if chars.is_empty() => break,
                None => return Err(err("a variable must fill a whole segment")),
            }
        }
        if segments.iter().rev().skip(1).any(|s| *s == Segment::Rest) {
            return Err(err("'**' may only be the last segment"));
        }
        Ok(Self {
            segments,
            variables,
            verb: verb.map(str::to_owned),
            source: template.to_owned(),
        })
    }

    /// Number of literal segments: more literals match more specifically.
    pub fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// Matches path segments (already split, verb removed). Returns the
    /// decoded value of each variable, in template order.
    pub fn matches(&self, parts: &[&str]) -> Option<Vec<String>> {
        let has_rest = self.segments.last() == Some(&Segment::Rest);
        let fixed = if has_rest {
            self.segments.len() - 1
        } else {
            self.segments.len()
        };
        if parts.len() < fixed || (!has_rest && parts.len() != fixed) {
            return None;
        }
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Literal(lit) if lit != part => return None,
                Segment::Single if part.is_empty() => return None,
                _ => {}
            }
        }
        let values = self
            .variables
            .iter()
            .map(|v| {
                let end = v.end.unwrap_or(parts.len()).min(parts.len());
                let decoded: Vec<String> = parts[v.start.min(end)..end]
                    .iter()
                    .map(|p| decode(p))
                    .collect();
                decoded.join("/")
            })
            .collect();
        Some(values)
    }
}

impl PathTemplate {
    /// The path for variable values in template order (the inverse of
    /// [`Self::matches`]): each value percent-encoded, a `**` variable's
    /// `/`-separated parts one segment each; `None` when the count is
    /// wrong, a one-segment value is empty, or a value does not fill its
    /// variable's segments.
    pub fn expand(&self, values: &[&str]) -> Option<String> {
        if values.len() != self.variables.len() {
            return None;
        }
        let mut parts: Vec<String> = Vec::with_capacity(self.segments.len());
        let mut next = 0;
        for (var, value) in self.variables.iter().zip(values) {
            for seg in &self.segments[next..var.start] {
                parts.push(literal(seg)?);
            }
            let pieces: Vec<&str> = value.split('/').collect();
            let width = var.end.map(|end| end - var.start);
            match width {
                // One segment: the whole value, `/` included, encoded.
                Some(1) if self.segments[var.start] == Segment::Single => {
                    if value.is_empty() {
                        return None;
                    }
                    parts.push(encode(value));
                }
                Some(n) if pieces.len() != n => return None,
                _ => {}
            }
            if width != Some(1) || self.segments[var.start] != Segment::Single {
                for (i, piece) in pieces.iter().enumerate() {
                    match self.segments.get(var.start + i) {
                        Some(Segment::Literal(lit)) if lit != piece => return None,
                        Some(Segment::Single) if piece.is_empty() => return None,
                        _ => parts.push(encode(piece)),
                    }
                }
            }
            next = var.end.unwrap_or(self.segments.len());
        }
        for seg in &self.segments[next..] {
            parts.push(literal(seg)?);
        }
        let mut path = format!("/{}", parts.join("/"));
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        Some(path)
    }
}

/// A literal segment as it stands; wildcards outside variables have no
/// value to expand.
fn literal(seg: &Segment) -> Option<String> {
    match seg {
        Segment::Literal(lit) => Some(lit.clone()),
        _ => None,
    }
}

/// Everything but RFC 3986's unreserved characters is encoded, so a value
/// never reads as a separator (`/`) or a verb (`:`).
fn encode(value: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, SET).to_string()
}

fn parse_segment(seg: &str) -> Option<Segment> {
    match seg {
        "" => None,
        "*" => Some(Segment::Single),
        "**" => Some(Segment::Rest),
        lit => Some(Segment::Literal(lit.to_owned())),
    }
}

/// Splits `body:verb` at the last ':' that is not inside braces.
fn split_verb(s: &str) -> (&str, Option<&str>) {
    let mut depth = 0usize;
    let mut split = None;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => split = Some(i),
            _ => {}
        }
    }
    match split {
        // Only a colon in the last segment is a verb.
        Some(i) if !s[i..].contains('/') => (&s[..i], Some(&s[i + 1..])),
        _ => (s, None),
    }
}

fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_variables_and_verbs_parse() {
        let t = PathTemplate::parse("/api/v1/reservations/{id}:commit").expect("valid");
        assert_eq!(t.verb.as_deref(), Some("commit"));
        assert_eq!(t.segments.len(), 4);
        assert_eq!(
            t.variables,
            vec![Variable {
                field_path: vec!["id".into()],
                start: 3,
                end: Some(4)
            }]
        );
        assert_eq!(
            t.matches(&["api", "v1", "reservations", "r%201"]),
            Some(vec!["r 1".into()])
        );
        assert_eq!(t.matches(&["api", "v1", "products", "r1"]), None);
    }

    #[test]
    fn nested_field_paths_and_multi_segment_captures() {
        let t = PathTemplate::parse("/v1/{book.name=shelves/*/books/*}").expect("valid");
        assert_eq!(
            t.variables[0].field_path,
            vec!["book".to_string(), "name".to_string()]
        );
        assert_eq!(
            t.matches(&["v1", "shelves", "s1", "books", "b2"]),
            Some(vec!["shelves/s1/books/b2".into()])
        );
        assert_eq!(t.matches(&["v1", "shelves", "s1", "chapters", "b2"]), None);
        let rest = PathTemplate::parse("/files/{path=**}").expect("valid");
        assert_eq!(
            rest.matches(&["files", "a", "b.txt"]),
            Some(vec!["a/b.txt".into()])
        );
    }

    #[test]
    fn malformed_templates_are_rejected() {
        for bad in [
            "api/v1",
            "/api/{id",
            "/api/x{id}",
            "/api/",
            "/a/**/b",
            "/a:",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} must be rejected");
        }
    }
}
