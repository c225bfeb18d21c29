//! The modules of every crate in the workspace depend on each other without cycles (issue #17,
//! "no import cycles").
//!
//! Each crate's module graph is built from its source with `syn`: module A depends on module B
//! when A's code names something of B — in a `use` (`use crate::b::Item`, `use super::b`), in a
//! path (`crate::b::f()`, `super::b::T`, `b::f()` for a child module `b`), through a name A
//! imported, or inside a macro's tokens — with re-exports followed to the module that defines
//! the item (`crate::Item` re-exported from `b` is an edge to `b`). A module's own tests
//! (`#[cfg(test)]` items) are left out: test code may use anything. A parent that declares a
//! child (`mod b;`) does not depend on it by that alone, and a module using what one of its
//! ancestors defines (`super::Shared` in a child of `cli`) makes no edge: Rust scopes a parent's
//! items for its children, so the parent is the layer below them.
//!
//! A cycle fails the test, which names every module of it and the line making each edge, so
//! the fix — moving what both sides need into a lower module — starts from the message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module's path inside its crate: `[]` is the crate root, `["cli", "rotate_cron"]` is
/// `crate::cli::rotate_cron`.
type ModPath = Vec<String>;

/// Where a module names another module's item: the file, the line, the path as written.
#[derive(Debug, Clone)]
struct Site {
    file: PathBuf,
    line: usize,
    path: String,
}

#[derive(Debug, Default)]
struct Module {
    children: BTreeSet<String>,
    /// Names brought in by `use` (the alias, or the last segment), to the path as written.
    imports: BTreeMap<String, Vec<String>>,
    /// Every path the module's non-test code writes, with where it does.
    references: Vec<(Vec<String>, Site)>,
}

/// One crate's modules.
#[derive(Debug, Default)]
struct Crate {
    modules: BTreeMap<ModPath, Module>,
    /// Edges left out of the graph (see `KNOWN_CYCLE_EDGES`).
    ignored: BTreeSet<(ModPath, ModPath)>,
}

/// A set of modules that depend on each other (a strongly connected component of the module
/// graph): one shortest cycle through it, and every dependency among its modules (what has to
/// be cut).
#[derive(Debug)]
struct Cycle {
    /// Each module of the shortest cycle, and the site making the edge to the next one (the
    /// last to the first).
    modules: Vec<(ModPath, Site)>,
    /// Every edge between two modules of the component.
    edges: Vec<(ModPath, ModPath, Site)>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.modules.iter().map(|(m, _)| name(m)).collect();
        writeln!(f, "{} → {}", names.join(" → "), names[0])?;
        for (i, (module, site)) in self.modules.iter().enumerate() {
            let next = &self.modules[(i + 1) % self.modules.len()].0;
            writeln!(
                f,
                "    {} → {}: {}:{} `{}`",
                name(module),
                name(next),
                site.file.display(),
                site.line,
                site.path
            )?;
        }
        if self.edges.len() > self.modules.len() {
            writeln!(f, "  every dependency among these modules:")?;
            for (from, to, site) in &self.edges {
                writeln!(
                    f,
                    "    {} → {}: {}:{} `{}`",
                    name(from),
                    name(to),
                    site.file.display(),
                    site.line,
                    site.path
                )?;
            }
        }
        Ok(())
    }
}

fn name(module: &ModPath) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        format!("crate::{}", module.join("::"))
    }
}

impl Crate {
    /// Reads the crate whose root file (`lib.rs`, `main.rs`) is `root`, following `mod`
    /// declarations.
    fn read(root: &Path) -> Self {
        let mut krate = Crate::default();
        let dir = root.parent().unwrap().to_path_buf();
        krate.read_file(Vec::new(), root, dir);
        krate
    }

    fn read_file(&mut self, path: ModPath, file: &Path, child_dir: PathBuf) {
        let text = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let parsed = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("cannot parse {}: {e}", file.display()));
        self.read_items(path, file, &child_dir, &parsed.items);
    }

    fn read_items(&mut self, path: ModPath, file: &Path, child_dir: &Path, items: &[syn::Item]) {
        let mut collector = Collector {
            file,
            module: Module::default(),
        };
        for item in items {
            if is_test_only(item_attrs(item)) {
                continue;
            }
            match item {
                syn::Item::Mod(m) => {
                    let child = m.ident.to_string();
                    collector.module.children.insert(child.clone());
                    let mut child_path = path.clone();
                    child_path.push(child.clone());
                    match (&m.content, path_attr(&m.attrs)) {
                        (Some((_, inner)), _) => {
                            self.read_items(child_path, file, &child_dir.join(&child), inner);
                        }
                        (None, Some(explicit)) => {
                            let target = file.parent().unwrap().join(explicit);
                            let dir = target.parent().unwrap().to_path_buf();
                            self.read_file(child_path, &target, dir);
                        }
                        (None, None) => {
                            let flat = child_dir.join(format!("{child}.rs"));
                            let (target, dir) = if flat.exists() {
                                (flat, child_dir.join(&child))
                            } else {
                                (
                                    child_dir.join(&child).join("mod.rs"),
                                    child_dir.join(&child),
                                )
                            };
                            self.read_file(child_path, &target, dir);
                        }
                    }
                }
                other => collector.visit_item(other),
            }
        }
        self.modules.insert(path, collector.module);
    }

    /// The module that defines what `path`, written in module `from`, names; `None` for
    /// another crate's item or a name local to `from` (a local, a prelude type).
    fn resolve(&self, from: &ModPath, path: &[String], budget: usize) -> Option<ModPath> {
        let module = self.modules.get(from)?;
        let first = path.first()?;
        let (at, rest): (ModPath, &[String]) = match first.as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "self" => (from.clone(), &path[1..]),
            "super" => {
                let ups = path.iter().take_while(|s| *s == "super").count();
                let at = from[..from.len().checked_sub(ups)?].to_vec();
                (at, &path[ups..])
            }
            name if module.children.contains(name) => {
                let mut at = from.clone();
                at.push(name.to_owned());
                (at, &path[1..])
            }
            name => {
                let imported = module.imports.get(name)?;
                if budget == 0 || imported.first() == Some(first) && imported.len() == 1 {
                    return None;
                }
                let mut full = imported.clone();
                full.extend_from_slice(&path[1..]);
                return self.resolve(from, &full, budget - 1);
            }
        };
        self.walk(at, rest, budget)
    }

    /// Follows `rest` down from module `at`: child modules, then an item or a re-export.
    fn walk(&self, mut at: ModPath, mut rest: &[String], budget: usize) -> Option<ModPath> {
        loop {
            let Some(segment) = rest.first() else {
                return Some(at);
            };
            let module = self.modules.get(&at)?;
            if module.children.contains(segment) {
                at.push(segment.clone());
                rest = &rest[1..];
                continue;
            }
            if let Some(imported) = module.imports.get(segment)
                && budget > 0
            {
                let mut full = imported.clone();
                full.extend_from_slice(&rest[1..]);
                // A re-export of another crate's item is defined here as far as this crate is
                // concerned.
                return self.resolve(&at, &full, budget - 1).or(Some(at));
            }
            return Some(at);
        }
    }

    /// Leaves the edge `from` → `to` (written `crate::a::b`) out of the graph; `false` when
    /// there is no such edge.
    fn ignore_edge(&mut self, from: &str, to: &str) -> bool {
        let parse =
            |name: &str| -> ModPath { name.split("::").skip(1).map(str::to_owned).collect() };
        let (from, to) = (parse(from), parse(to));
        let exists = self.edges().get(&from).is_some_and(|e| e.contains_key(&to));
        self.ignored.insert((from, to));
        exists
    }

    /// Module → module it depends on → the first site that makes the edge.
    fn edges(&self) -> BTreeMap<ModPath, BTreeMap<ModPath, Site>> {
        let mut edges: BTreeMap<ModPath, BTreeMap<ModPath, Site>> = BTreeMap::new();
        for (from, module) in &self.modules {
            let targets = edges.entry(from.clone()).or_default();
            for (path, site) in &module.references {
                let Some(to) = self.resolve(from, path, 16) else {
                    continue;
                };
                // A module may use what its ancestors define, as Rust's scoping intends (a
                // parent's private items are visible to its children): such an edge is not
                // counted, so a parent is the layer below its children's shared use.
                if !from.starts_with(&to) && !self.ignored.contains(&(from.clone(), to.clone())) {
                    targets.entry(to).or_insert_with(|| site.clone());
                }
            }
        }
        edges
    }

    /// Every cycle, one per strongly connected component of the module graph.
    fn cycles(&self) -> Vec<Cycle> {
        let edges = self.edges();
        strongly_connected(&edges)
            .into_iter()
            .filter(|component| component.len() > 1)
            .map(|component| shortest_cycle(&edges, &component))
            .collect()
    }
}

/// Tarjan's algorithm, iterative enough for module graphs (recursion depth = module count).
fn strongly_connected(edges: &BTreeMap<ModPath, BTreeMap<ModPath, Site>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeMap<ModPath, Site>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        components: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a ModPath) {
        let n = state.index.len();
        state.index.insert(node, n);
        state.low.insert(node, n);
        state.stack.push(node);
        state.on_stack.insert(node);
        let edges = state.edges;
        for next in edges.get(node).into_iter().flat_map(BTreeMap::keys) {
            if !state.index.contains_key(next) {
                visit(state, next);
                let low = state.low[next].min(state.low[node]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(next) {
                let low = state.index[next].min(state.low[node]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(top) = state.stack.pop() {
                state.on_stack.remove(top);
                component.push(top.clone());
                if top == node {
                    break;
                }
            }
            component.sort();
            state.components.push(component);
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for node in edges.keys() {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    state.components
}

/// A shortest cycle through the component's first module, staying inside the component.
fn shortest_cycle(
    edges: &BTreeMap<ModPath, BTreeMap<ModPath, Site>>,
    component: &[ModPath],
) -> Cycle {
    let inside: BTreeSet<&ModPath> = component.iter().collect();
    let start = &component[0];
    let mut came_from: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    'search: while let Some(node) = queue.pop_front() {
        for next in edges[node].keys().filter(|n| inside.contains(n)) {
            if next == start {
                came_from.insert(start, node);
                break 'search;
            }
            if !came_from.contains_key(next) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    let mut path = vec![start];
    let mut node = came_from[start];
    while node != start {
        path.push(node);
        node = came_from[node];
    }
    path.reverse();
    // `path` ends with the start's predecessor; rotate so the cycle reads start → … → start.
    path.rotate_right(1);
    let modules = path
        .iter()
        .enumerate()
        .map(|(i, module)| {
            let next = path[(i + 1) % path.len()];
            ((*module).clone(), edges[*module][next].clone())
        })
        .collect();
    let edges = component
        .iter()
        .flat_map(|from| {
            edges[from]
                .iter()
                .filter(|(to, _)| inside.contains(to))
                .map(move |(to, site)| (from.clone(), to.clone(), site.clone()))
        })
        .collect();
    Cycle { modules, edges }
}

/// Gathers the `use` imports and every path one module's (non-test) items write.
struct Collector<'f> {
    file: &'f Path,
    module: Module,
}

impl Collector<'_> {
    fn site(&self, line: usize, path: &[String]) -> Site {
        Site {
            file: self.file.to_path_buf(),
            line,
            path: path.join("::"),
        }
    }

    fn reference(&mut self, path: Vec<String>, line: usize) {
        let site = self.site(line, &path);
        self.module.references.push((path, site));
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                let mut full = prefix.clone();
                if name != "self" {
                    full.push(name.clone());
                }
                let line = n.ident.span().start().line;
                let alias = full.last().cloned().unwrap_or(name);
                self.module.imports.insert(alias, full.clone());
                self.reference(full, line);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                let line = r.ident.span().start().line;
                self.module
                    .imports
                    .insert(r.rename.to_string(), full.clone());
                self.reference(full, line);
            }
            syn::UseTree::Glob(g) => {
                let line = g.star_token.spans[0].start().line;
                self.reference(prefix.clone(), line);
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test_only(item_attrs(item)) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => return syn::visit::visit_impl_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // A module inside a function body or the like; modules are read by `Crate::read_items`.
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        self.use_tree(&mut prefix, &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        // A single name can be a local binding that happens to share a module's name; only
        // names brought in by `use` count (and those already made their edge at the `use`).
        if segments.len() > 1 {
            let line = path.segments[0].ident.span().start().line;
            self.reference(segments, line);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        self.macro_tokens(mac.tokens.clone());
    }
}

impl Collector<'_> {
    /// Paths inside a macro's arguments (`format!("{}", crate::x::f())`), which `syn` does not
    /// parse: every `a::b::…` run of tokens.
    fn macro_tokens(&mut self, tokens: proc_macro2::TokenStream) {
        use proc_macro2::TokenTree;
        let mut run: Vec<String> = Vec::new();
        let mut line = 0;
        let mut colons = 0;
        let flush = |this: &mut Self, run: &mut Vec<String>, line: usize| {
            if run.len() > 1 {
                this.reference(std::mem::take(run), line);
            }
            run.clear();
        };
        for token in tokens {
            match token {
                TokenTree::Ident(ident) => {
                    if run.is_empty() || colons != 2 {
                        flush(self, &mut run, line);
                        line = ident.span().start().line;
                    }
                    run.push(ident.to_string());
                    colons = 0;
                }
                TokenTree::Punct(p) if p.as_char() == ':' && !run.is_empty() && colons < 2 => {
                    colons += 1;
                }
                TokenTree::Group(group) => {
                    flush(self, &mut run, line);
                    colons = 0;
                    self.macro_tokens(group.stream());
                }
                TokenTree::Punct(_) | TokenTree::Literal(_) => {
                    flush(self, &mut run, line);
                    colons = 0;
                }
            }
        }
        flush(self, &mut run, line);
    }
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// `#[cfg(test)]`, or `#[cfg(all(test, …))]`.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| match &attr.meta {
        syn::Meta::List(list) if list.path.is_ident("cfg") => {
            let condition = list.tokens.to_string().replace(' ', "");
            condition == "test" || condition.starts_with("all(test,")
        }
        _ => false,
    })
}

/// `#[path = "…"]` on a `mod` declaration.
fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|attr| match &attr.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// The root files of the workspace's crates: each member's `src/lib.rs`, `src/main.rs` and
/// `src/bin/*.rs`, and the examples (`examples/*.rs`, `examples/*/main.rs`).
fn workspace_crates(workspace: &Path) -> Vec<PathBuf> {
    let manifest = fs::read_to_string(workspace.join("Cargo.toml")).unwrap();
    // `members = [ "a", "b", ... ]`, on one line or several.
    let start = manifest
        .find("members")
        .expect("the workspace Cargo.toml has a `members = [...]` list");
    let list = &manifest[start..];
    let list = &list[..list.find(']').expect("the members list is closed")];
    let members: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
    let mut roots = Vec::new();
    for member in members {
        let dir = if member == "." {
            workspace.to_path_buf()
        } else {
            workspace.join(member)
        };
        for root in ["src/lib.rs", "src/main.rs"] {
            if dir.join(root).exists() {
                roots.push(dir.join(root));
            }
        }
        for sub in ["src/bin", "examples", "benches"] {
            let Ok(entries) = fs::read_dir(dir.join(sub)) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .map(|e| e.unwrap().path())
                .filter_map(|p| {
                    if p.extension().is_some_and(|e| e == "rs") {
                        Some(p)
                    } else if p.join("main.rs").exists() {
                        Some(p.join("main.rs"))
                    } else {
                        None
                    }
                })
                .collect();
            found.sort();
            roots.extend(found);
        }
    }
    roots
}

/// Dependencies that close a cycle and existed when this check was written, in files other work
/// on issue #17 is rewriting (the lifetime policy, which becomes a stage of the issuance
/// pipeline): left out of the graph until then. Each entry: the crate's root file, the module
/// that depends, the module it depends on. The rest of the graph must be acyclic, so a new
/// cycle fails; an entry whose dependency is gone fails too, so that the list only shrinks.
const KNOWN_CYCLE_EDGES: &[(&str, &str, &str)] = &[];

#[test]
fn no_crate_in_the_workspace_has_a_module_cycle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let roots = workspace_crates(workspace);
    // The walk found the crates: a vacuous pass over nothing would prove nothing.
    for expected in [
        "src/lib.rs",
        "providers/tresor/src/lib.rs",
        "providers/core/src/lib.rs",
    ] {
        assert!(
            roots.contains(&workspace.join(expected)),
            "{expected} is not among the crate roots found: {roots:?}"
        );
    }
    let mut report = String::new();
    let mut modules = 0;
    for root in &roots {
        let relative = root.strip_prefix(workspace).unwrap_or(root);
        let mut krate = Crate::read(root);
        modules += krate.modules.len();
        for (file, from, to) in KNOWN_CYCLE_EDGES {
            if Path::new(file) != relative {
                continue;
            }
            if !krate.ignore_edge(from, to) {
                report.push_str(&format!(
                    "{file}: {from} no longer depends on {to}: remove that entry from \
                     KNOWN_CYCLE_EDGES\n"
                ));
            }
        }
        for cycle in krate.cycles() {
            report.push_str(&format!("{}: {cycle}", relative.display()));
        }
    }
    assert!(modules > 50, "only {modules} modules read");
    let report = report.replace(&format!("{}/", workspace.display()), "");
    assert!(
        report.is_empty(),
        "module import cycles (move what both sides need into a lower module):\n{report}"
    );
}

// The checker itself, on small crates written to a temporary directory.

fn crate_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Crate) {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    let krate = Crate::read(&dir.path().join("lib.rs"));
    (dir, krate)
}

fn cycle_names(krate: &Crate) -> Vec<Vec<String>> {
    krate
        .cycles()
        .iter()
        .map(|c| c.modules.iter().map(|(m, _)| name(m)).collect())
        .collect()
}

#[test]
fn finds_a_cycle_between_two_sibling_modules() {
    let (_dir, krate) = crate_with(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use crate::b::B;\npub struct A(B);\n"),
        (
            "b.rs",
            "pub struct B;\nfn f() -> Option<super::a::A> { None }\n",
        ),
    ]);
    let cycles = krate.cycles();
    assert_eq!(cycle_names(&krate), [["crate::a", "crate::b"]]);
    let text = cycles[0].to_string();
    assert!(text.contains("a.rs:1 `crate::b::B`"), "{text}");
    assert!(text.contains("b.rs:2 `super::a::A`"), "{text}");
}

#[test]
fn follows_re_exports_imports_and_macro_arguments() {
    // c → a through the root's re-export; a → b through an imported module name used in a
    // macro; b → c through a child-module path written from the root's `use`.
    let (_dir, krate) = crate_with(&[
        (
            "lib.rs",
            "mod a;\nmod b;\nmod c;\npub use a::A;\npub(crate) use c::helper;\n",
        ),
        (
            "a.rs",
            "use crate::b;\npub struct A;\nfn f() { println!(\"{}\", b::B); }\n",
        ),
        (
            "b.rs",
            "pub const B: u8 = 0;\nfn g() { crate::helper(); }\n",
        ),
        ("c.rs", "pub fn helper() { let _ = crate::A; }\n"),
    ]);
    assert_eq!(cycle_names(&krate), [["crate::a", "crate::b", "crate::c"]]);
}

#[test]
fn test_code_and_a_dag_are_not_cycles() {
    let (_dir, krate) = crate_with(&[
        ("lib.rs", "mod a;\nmod b;\npub use b::B;\n"),
        (
            "a.rs",
            "use crate::b::B;\npub fn f(_: B) {}\n#[cfg(test)]\nmod tests { use super::*; }\n",
        ),
        (
            "b/mod.rs",
            "mod inner;\npub use inner::B;\n#[cfg(test)]\nmod tests { use crate::a::f; }\n",
        ),
        ("b/inner.rs", "pub struct B;\n"),
    ]);
    assert!(cycle_names(&krate).is_empty(), "{:?}", cycle_names(&krate));
    // The edges it did see, so that the empty answer is not an empty graph.
    let edges = krate.edges();
    let a = vec!["a".to_owned()];
    let inner = vec!["b".to_owned(), "inner".to_owned()];
    assert!(edges[&a].contains_key(&inner), "{edges:?}");
}
