//! Positions in a parsed TOML document: which key path holds a byte offset
//! ([`path_at`]), how that path is spelled in an error ([`spell`]), and how the
//! key holding it is removed ([`remove_key`]). Paths are logical: a dotted
//! key, a `[table]` header and an inline table all nest the same way, and
//! array entries (`[[routes]]`, `backends = [...]`) carry their index.

use std::ops::Range;

use toml_edit::{Item, Table, TableLike, Value};

use super::errors::key_segment;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// The deepest key path whose key or value covers `offset`, or `None` when
/// the offset is in no key or value (a comment, blank space).
pub(super) fn path_at(root: &Table, offset: usize) -> Option<Vec<Seg>> {
    let mut best = None;
    let mut path = Vec::new();
    visit_table(root, &mut path, offset, &mut best);
    best
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.contains(&offset))
}

/// Keeps `path` when it is deeper than the best so far. Tables under
/// different headers do not nest by span, so every branch is visited.
fn consider(path: &[Seg], best: &mut Option<Vec<Seg>>) {
    if best.as_ref().is_none_or(|b| path.len() > b.len()) {
        *best = Some(path.to_vec());
    }
}

fn visit_table(
    table: &dyn TableLike,
    path: &mut Vec<Seg>,
    offset: usize,
    best: &mut Option<Vec<Seg>>,
) {
    for (name, item) in table.iter() {
        path.push(Seg::Key(name.to_owned()));
        if covers(table.key(name).and_then(|k| k.span()), offset) {
            consider(path, best);
        }
        visit_item(item, path, offset, best);
        path.pop();
    }
}

fn visit_item(item: &Item, path: &mut Vec<Seg>, offset: usize, best: &mut Option<Vec<Seg>>) {
    if covers(item.span(), offset) {
        consider(path, best);
    }
    if let Some(table) = item.as_table_like() {
        return visit_table(table, path, offset, best);
    }
    let len = match item {
        Item::ArrayOfTables(a) => a.len(),
        Item::Value(Value::Array(a)) => a.len(),
        _ => 0,
    };
    for i in 0..len {
        let Some(entry) = item.get(i) else { continue };
        path.push(Seg::Index(i));
        visit_item(entry, path, offset, best);
        path.pop();
    }
}

/// The dotted key of `path`, e.g. `services."users.v2".backends[1].weight`.
pub(super) fn spell(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_segment(name));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Removes the key that holds `path` (the last key on it, so an error inside
/// an array removes the whole array) and returns that key's own path, or
/// `None` when there is nothing to remove.
pub(super) fn remove_key(root: &mut Table, path: &[Seg]) -> Option<Vec<Seg>> {
    let last = path.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
    let Seg::Key(name) = &path[last] else {
        return None;
    };
    let parent: &mut dyn TableLike = match path[..last].split_first() {
        None => root,
        Some((Seg::Key(first), rest)) => {
            let mut item = root.get_mut(first)?;
            for seg in rest {
                item = match seg {
                    Seg::Key(k) => item.as_table_like_mut()?.get_mut(k)?,
                    Seg::Index(i) => item.get_mut(*i)?,
                };
            }
            item.as_table_like_mut()?
        }
        Some((Seg::Index(_), _)) => return None,
    };
    parent.remove(name)?;
    Some(path[..=last].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[proxy]
listen = ["127.0.0.1:0", 5]
[services."users.v2"]
backends = ["127.0.0.1:1", { address = "127.0.0.1:2", wieght = 2 }]
health_check.intervl = "1s"
[[routes]]
service = "a"
[[routes]]
service = "b"
"#;

    fn doc() -> Table {
        toml_edit::Document::parse(TEXT)
            .expect("parses")
            .into_table()
    }

    fn at(needle: &str) -> String {
        let offset = TEXT.find(needle).expect("needle in text");
        spell(&path_at(&doc(), offset).expect("a path"))
    }

    #[test]
    fn offsets_map_to_the_deepest_key_path() {
        assert_eq!(at("listen"), "proxy.listen");
        assert_eq!(at("5]"), "proxy.listen[1]");
        assert_eq!(at("[services"), "services.\"users.v2\"");
        assert_eq!(at("wieght"), "services.\"users.v2\".backends[1].wieght");
        assert_eq!(at("{ address"), "services.\"users.v2\".backends[1]");
        assert_eq!(at("intervl"), "services.\"users.v2\".health_check.intervl");
        assert_eq!(at("\"b\""), "routes[1].service");
        assert_eq!(at("[[routes]]\nservice = \"b\""), "routes[1]");
        assert_eq!(path_at(&doc(), TEXT.len() + 1), None);
    }

    #[test]
    fn removing_takes_the_key_that_holds_the_path() {
        let mut table = doc();
        let path = path_at(&table, TEXT.find("5]").unwrap()).unwrap();
        let removed = remove_key(&mut table, &path).expect("removed");
        assert_eq!(spell(&removed), "proxy.listen");
        assert!(table["proxy"].get("listen").is_none());
        let path = path_at(&table, TEXT.find("wieght").unwrap()).unwrap();
        remove_key(&mut table, &path).expect("removed");
        let backend = &table["services"]["users.v2"]["backends"][1];
        assert!(backend.get("wieght").is_none() && backend.get("address").is_some());
        let path = path_at(&table, TEXT.find("[[routes]]").unwrap()).unwrap();
        assert_eq!(spell(&remove_key(&mut table, &path).unwrap()), "routes");
        assert!(remove_key(&mut table, &[]).is_none());
    }
}
