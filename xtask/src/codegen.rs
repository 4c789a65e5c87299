//! `cargo xtask codegen`: writes `crates/apiserver/src/schema/k8s.schema`, the apiserver's table of the
//! built-in Kubernetes types. It joins two published crates' sources, read as text (nothing is compiled):
//! `k8s-pb` (prost types generated from upstream's `generated.proto`: protobuf tags, wire types, and the
//! `+patchMergeKey`/`+patchStrategy`/`+listType`/`+listMapKey` markers kept in their doc comments) and
//! `k8s-openapi` (serde names: the JSON name of every Rust field).
//!
//! Output format, one type per block:
//! ```text
//! T io.k8s.api.apps.v1.DeploymentSpec
//! S atomic
//! F <tag> <jsonName> <kind> [<ref>] [*] [pmk=<key>] [ps=<strategy>] [lt=<listType>] [lmk=<k1,k2>] [mt=atomic] [req]
//! ```
//! `S atomic` marks a `+structType=atomic` type (server-side apply owns and replaces it whole).
//! `kind` is one of `string bool int32 int64 double float bytes message map:<valuekind>`; `*` marks a
//! repeated field; `<ref>` names the message (or map value message) type; `req` marks a field Go always
//! serializes (k8s-openapi declares it without `Option`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

const K8S_PB: &str = "0.9.0";
const K8S_OPENAPI: &str = "0.29.0";
/// The Kubernetes version whose types are used (k8s-openapi's module).
const KUBE: &str = "v1_33";

/// Types without serde structs in k8s-openapi that the apiserver transcodes by hand.
const WRAPPERS: &[&str] = &[
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
    "io.k8s.apimachinery.pkg.runtime.Unknown",
    "io.k8s.apimachinery.pkg.runtime.TypeMeta",
    "io.k8s.apimachinery.pkg.runtime.RawExtension",
];

/// Downloads the two crates (through a throwaway manifest) and returns their source directories.
fn crate_sources() -> Result<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join("k3rs-codegen");
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"k3rs-codegen-fetch\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[dependencies]\nk8s-pb = \"={K8S_PB}\"\nk8s-openapi = {{ version = \"={K8S_OPENAPI}\", features = [\"{KUBE}\"] }}\n\n[workspace]\n"
        ),
    )?;
    std::fs::write(dir.join("src/lib.rs"), "")?;
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |name: &str, version: &str| -> Result<PathBuf> {
        let needle = format!("{name}-{version}/Cargo.toml");
        text.split('"')
            .find(|s| s.ends_with(&needle))
            .map(|s| Path::new(s).parent().unwrap_or(Path::new(s)).to_path_buf())
            .with_context(|| format!("{name} {version} not found in cargo metadata"))
    };
    Ok((find("k8s-pb", K8S_PB)?, find("k8s-openapi", K8S_OPENAPI)?))
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rs_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// The OpenAPI definition prefix of a module path relative to the crate's type root
/// (`api/apps/v1` → `io.k8s.api.apps.v1`, `apiextensions_apiserver/…` → `io.k8s.apiextensions-apiserver.…`).
fn package(rel: &Path) -> String {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().replace('_', "-"))
        .collect();
    format!("io.k8s.{}", parts.join("."))
}

/// serde names per type from k8s-openapi: definition → (rust field → JSON name).
/// Descriptions from k8s-openapi's doc comments: definition → ("" for the type, else the normalized Rust
/// field name) → text.
type Docs = HashMap<String, HashMap<String, String>>;

/// Undoes rustdoc's escaping of Markdown punctuation (`\<`, `\[`…).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|n| n.is_ascii_punctuation()) {
            continue;
        }
        out.push(c);
    }
    out
}

fn docs_of(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut doc: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("///") {
            doc.push(unescape(d.strip_prefix(' ').unwrap_or(d)));
            continue;
        }
        if !doc.is_empty() {
            let text = doc.join("\n").trim().to_string();
            if t.starts_with("pub struct ") {
                out.insert(String::new(), text);
            } else if let Some(decl) = line.strip_prefix("    pub ")
                && let Some((rust, _)) = decl.split_once(": ")
            {
                out.insert(
                    norm(rust.trim_start_matches("r#").trim_end_matches('_')),
                    text,
                );
            }
        }
        if !t.starts_with("#[") {
            doc.clear();
        }
    }
    out
}

fn json_names(root: &Path, docs: &mut Docs) -> Result<HashMap<String, HashMap<String, String>>> {
    let mut files = Vec::new();
    rs_files(root, &mut files)?;
    let mut out = HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let structs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("pub struct "))
            .map(|l| l.split([' ', '{', '(', ';']).next().unwrap_or(""))
            .collect();
        if structs.len() != 1 {
            continue;
        }
        let rel = file
            .parent()
            .and_then(|p| p.strip_prefix(root).ok())
            .unwrap_or(Path::new(""));
        let def = format!("{}.{}", package(rel), structs[0]);
        docs.insert(def.clone(), docs_of(&text));
        let mut fields = HashMap::new();
        // Fields k8s-openapi declares without `Option` are required: Go always writes them, even when empty.
        let mut required = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix("    pub ")
                && let Some((rust, ty)) = decl.split_once(": ")
                && !ty.starts_with("Option<")
            {
                required.insert(norm(rust.trim_start_matches("r#").trim_end_matches('_')));
            }
        }
        for line in text.lines() {
            let line = line.trim();
            if let Some((json, rest)) = line.split_once("\" => Field::Key_") {
                let json = json.trim_start_matches('"');
                // k8s-openapi appends `_` to keywords (`type_`); prost writes `r#type`.
                let rust = rest.trim_end_matches(',').trim_end_matches('_');
                let key = norm(rust);
                let value = if required.contains(&key) {
                    format!("!{json}")
                } else {
                    json.to_string()
                };
                fields.insert(key, value);
            }
        }
        out.insert(def, fields);
    }
    Ok(out)
}

/// Rust field names compared without case or underscores: prost and k8s-openapi snake-case acronyms
/// differently (`pod_cid_rs` / `pod_cidrs`, `u_id` / `uid`).
fn norm(rust: &str) -> String {
    rust.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

#[derive(Debug, Default)]
struct Field {
    tag: u32,
    rust: String,
    kind: String,
    reference: Option<String>,
    repeated: bool,
    markers: Vec<String>,
}

/// Resolves a Rust type path written in module `module` (`super::super::core::v1::PodTemplateSpec`).
fn resolve(module: &[String], ty: &str) -> Option<String> {
    let ty = ty.trim().trim_start_matches("::");
    let mut path: Vec<String> = module.to_vec();
    let mut rest = ty;
    while let Some(r) = rest.strip_prefix("super::") {
        path.pop();
        rest = r;
    }
    let segs: Vec<&str> = rest.split("::").collect();
    let (name, mods) = segs.split_last()?;
    path.extend(mods.iter().map(|s| s.to_string()));
    let rel: PathBuf = path.iter().collect();
    Some(format!("{}.{name}", package(&rel)))
}

/// The innermost generic argument naming a message type (`Option<X>`, `Vec<X>`, `BTreeMap<String, X>`).
fn message_type(ty: &str) -> Option<&str> {
    let inner = ty.rsplit_once('<').map(|(_, r)| r)?;
    let inner = inner.trim_end_matches(['>', ' ', ',']);
    let inner = inner.rsplit(", ").next().unwrap_or(inner);
    let name = inner.trim();
    (!name.contains("::alloc::") && !name.starts_with("::prost")).then_some(name)
}

fn scalar(k: &str) -> Option<&'static str> {
    Some(match k {
        "string" => "string",
        "bool" => "bool",
        "int32" | "sint32" | "sfixed32" | "uint32" | "fixed32" => "int32",
        "int64" | "sint64" | "sfixed64" | "uint64" | "fixed64" => "int64",
        "double" => "double",
        "float" => "float",
        "message" => "message",
        _ if k.starts_with("bytes") => "bytes",
        _ => return None,
    })
}

/// k8s-pb's prost messages: fields by definition name, and the messages marked `+structType=atomic`.
type Messages = (
    BTreeMap<String, Vec<Field>>,
    std::collections::HashSet<String>,
);

/// Every k8s-pb message's fields, and the messages marked `+structType=atomic` (apply replaces them whole).
fn proto_messages(root: &Path) -> Result<Messages> {
    let mut files = Vec::new();
    rs_files(root, &mut files)?;
    let mut out = BTreeMap::new();
    let mut atomic = std::collections::HashSet::new();
    for file in files {
        let rel = file
            .parent()
            .and_then(|p| p.strip_prefix(root).ok())
            .unwrap_or(Path::new(""));
        if rel.as_os_str().is_empty() {
            continue;
        }
        let module: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let text = std::fs::read_to_string(&file)?;
        let mut current: Option<(String, Vec<Field>)> = None;
        let mut markers: Vec<String> = Vec::new();
        let mut pending: Option<Field> = None;
        let mut decl = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if let Some(name) = line.strip_prefix("pub struct ") {
                let name = name.split([' ', '{']).next().unwrap_or("").to_string();
                if let Some((n, f)) = current.take() {
                    out.insert(n, f);
                }
                let def = resolve(&module, &name).unwrap_or_default();
                if markers.iter().any(|m| m == "st=atomic") {
                    atomic.insert(def.clone());
                }
                current = Some((def, Vec::new()));
                markers.clear();
                continue;
            }
            if line == "}" {
                if let Some((n, f)) = current.take() {
                    out.insert(n, f);
                }
                continue;
            }
            if let Some(doc) = line.strip_prefix("/// +") {
                for (k, short) in [
                    ("patchMergeKey=", "pmk"),
                    ("patchStrategy=", "ps"),
                    ("listType=", "lt"),
                    ("listMapKey=", "lmk"),
                    ("mapType=", "mt"),
                    ("structType=", "st"),
                ] {
                    if let Some(v) = doc.strip_prefix(k) {
                        markers.push(format!("{short}={v}"));
                    }
                }
                continue;
            }
            if let Some(attr) = line
                .strip_prefix("#[prost(")
                .and_then(|l| l.strip_suffix(")]"))
            {
                if current.is_none() || attr.starts_with("oneof") {
                    continue;
                }
                let tag: u32 = attr
                    .split("tag = \"")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let mut f = Field {
                    tag,
                    ..Field::default()
                };
                if let Some(map) = attr
                    .strip_prefix("btree_map = \"")
                    .or_else(|| attr.strip_prefix("map = \""))
                {
                    let value = map
                        .split('"')
                        .next()
                        .unwrap_or("")
                        .split(", ")
                        .nth(1)
                        .unwrap_or("");
                    f.kind = format!("map:{}", scalar(value).unwrap_or("string"));
                } else {
                    let first = attr.split(',').next().unwrap_or("").trim();
                    f.kind = scalar(first).unwrap_or("string").to_string();
                    f.repeated = attr.contains("repeated");
                }
                // Markers apply to the field they precede; merge them.
                let mut lmk = Vec::new();
                for m in markers.drain(..) {
                    match m.strip_prefix("lmk=") {
                        Some(k) => lmk.push(k.to_string()),
                        None => f.markers.push(m),
                    }
                }
                if !lmk.is_empty() {
                    f.markers.push(format!("lmk={}", lmk.join(",")));
                }
                pending = Some(f);
                decl.clear();
                continue;
            }
            if let Some(f) = pending.as_mut() {
                decl.push_str(line);
                decl.push(' ');
                // A declaration ends at a comma outside any generic brackets (a map's type spans lines).
                let open = decl.matches('<').count();
                let closed = decl.matches('>').count();
                if line.ends_with(',') && open == closed {
                    let (name, ty) = decl
                        .trim()
                        .trim_end_matches(',')
                        .split_once(':')
                        .unwrap_or(("", ""));
                    f.rust = name
                        .trim()
                        .trim_start_matches("pub ")
                        .trim_start_matches("r#")
                        .to_string();
                    if f.kind == "message" || f.kind == "map:message" {
                        f.reference = message_type(ty).and_then(|t| resolve(&module, t));
                    }
                    if let (Some(f), Some((_, fields))) = (pending.take(), current.as_mut()) {
                        fields.push(f);
                    }
                }
                continue;
            }
            if !line.starts_with("///") && !line.starts_with("#[") {
                markers.clear();
            }
        }
    }
    Ok((out, atomic))
}

pub fn run() -> Result<()> {
    let (pb, openapi) = crate_sources()?;
    eprintln!("codegen: k8s-pb at {}", pb.display());
    eprintln!("codegen: k8s-openapi at {}", openapi.display());
    let mut docs = Docs::new();
    let names = json_names(&openapi.join("src").join(KUBE), &mut docs)?;
    let (raw_messages, raw_atomic) = proto_messages(&pb.join("src"))?;
    // prost re-cases acronyms in type names (`GcePersistentDiskVolumeSource`): use upstream's names, as
    // k8s-openapi spells them, for definitions and references alike.
    let mut canon: HashMap<String, String> = names.keys().map(|d| (norm(d), d.clone())).collect();
    // Types k8s-openapi models as enums (no serde struct), under upstream's names.
    for name in [
        "JSONSchemaPropsOrArray",
        "JSONSchemaPropsOrBool",
        "JSONSchemaPropsOrStringArray",
    ] {
        let def = format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.{name}");
        canon.insert(norm(&def), def);
    }
    let canonical = |d: &str| {
        canon
            .get(&norm(d))
            .cloned()
            .unwrap_or_else(|| d.to_string())
    };
    let messages: BTreeMap<String, Vec<Field>> = raw_messages
        .into_iter()
        .map(|(def, fields)| {
            let fields = fields
                .into_iter()
                .map(|mut f| {
                    f.reference = f.reference.as_deref().map(canonical);
                    f
                })
                .collect();
            (canonical(&def), fields)
        })
        .collect();
    let mut out = String::from(
        "# Generated by `cargo xtask codegen` from k8s-pb 0.9.0 and k8s-openapi 0.29.0 (Kubernetes 1.33). Do not edit.\n",
    );
    let (mut types, mut fields, mut unnamed) = (0, 0, Vec::new());
    // Types to emit with the serde names to use: k8s-openapi's own, a Go-embedded type's parent's, or
    // none for the wrappers the apiserver maps by hand (their fields keep the proto names).
    let empty = HashMap::new();
    let mut queue: Vec<(String, &HashMap<String, String>)> = messages
        .keys()
        .filter_map(|def| names.get(def).map(|n| (def.clone(), n)))
        .collect();
    for wrapper in WRAPPERS {
        queue.push((wrapper.to_string(), &empty));
    }
    queue.reverse();
    let mut done = std::collections::HashSet::new();
    let mut blocks = BTreeMap::new();
    while let Some((def, json)) = queue.pop() {
        if !done.insert(def.clone()) {
            continue;
        }
        let Some(msg_fields) = messages.get(&def) else {
            bail!("{def} is not a k8s-pb message");
        };
        types += 1;
        let mut block = format!("T {def}\n");
        if raw_atomic.iter().any(|a| canonical(a) == def) {
            block.push_str("S atomic\n");
        }
        let mut sorted: Vec<&Field> = msg_fields.iter().collect();
        sorted.sort_by_key(|f| f.tag);
        for f in sorted {
            let inline = "-".to_string();
            // k8s-openapi calls JSONSchemaProps' `$ref` field `ref_path`.
            let rust = if f.rust == "ref" {
                "ref_path".to_string()
            } else {
                f.rust.clone()
            };
            let name = json
                .get(&norm(&rust))
                .cloned()
                .or_else(|| json.is_empty().then(|| f.rust.clone()));
            let name = name.or_else(|| {
                // A Go-embedded struct (`VolumeSource` in `Volume`): its fields appear inline in the JSON
                // object ("-"), so the parent's serde names include the embedded message's fields.
                let r = f.reference.as_ref()?;
                let sub = messages.get(r)?;
                let inlined = f.kind == "message"
                    && !f.repeated
                    && sub
                        .iter()
                        .filter(|sf| json.contains_key(&norm(&sf.rust)))
                        .count()
                        * 2
                        > sub.len();
                if inlined {
                    queue.push((r.clone(), json));
                }
                inlined.then_some(inline)
            });
            let Some(json_name) = name else {
                // Fields newer than the Kubernetes version served (k8s-pb tracks a later release).
                unnamed.push(format!("{def}.{}", f.rust));
                continue;
            };
            fields += 1;
            let (json_name, required) = match json_name.strip_prefix('!') {
                Some(n) => (n.to_string(), true),
                None => (json_name, false),
            };
            let mut line = format!("F {} {} {}", f.tag, json_name, f.kind);
            if let Some(r) = &f.reference {
                line.push(' ');
                line.push_str(r);
                if !json_name.starts_with('-')
                    && !names.contains_key(r)
                    && !WRAPPERS.contains(&r.as_str())
                    && messages.contains_key(r)
                {
                    // A type k8s-openapi inlines everywhere: emit it with the proto names.
                    queue.push((r.clone(), &empty));
                }
            }
            if f.repeated {
                line.push_str(" *");
            }
            for m in &f.markers {
                line.push(' ');
                line.push_str(m);
            }
            if required {
                line.push_str(" req");
            }
            block.push_str(&line);
            block.push('\n');
        }
        blocks.insert(def, block);
    }
    for block in blocks.values() {
        out.push_str(block);
    }
    if !unnamed.is_empty() {
        eprintln!(
            "codegen: skipped {} proto fields that Kubernetes 1.33 does not have:",
            unnamed.len()
        );
        for u in &unnamed {
            eprintln!("  {u}");
        }
    }
    // Descriptions (for OpenAPI and `kubectl explain`) go to a file of their own, read only when a
    // document is built.
    let mut doc_out = String::from(
        "# Generated by `cargo xtask codegen` from k8s-openapi 0.29.0 doc comments (Kubernetes 1.33). Do not edit.\n",
    );
    for (def, block) in &blocks {
        let Some(d) = docs.get(def) else { continue };
        doc_out.push_str(&format!("T {def}\n"));
        if let Some(t) = d.get("") {
            doc_out.push_str(&format!("D {}\n", t.replace('\n', "\\n")));
        }
        for line in block.lines().filter_map(|l| l.strip_prefix("F ")) {
            let json = line.split(' ').nth(1).unwrap_or("");
            if json == "-" {
                continue;
            }
            let rust_norm: String = json
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect();
            let text = d
                .get(&rust_norm)
                .or_else(|| (json == "$ref").then(|| d.get("refpath")).flatten());
            if let Some(text) = text {
                doc_out.push_str(&format!("F {json} {}\n", text.replace('\n', "\\n")));
            }
        }
    }
    let docs_path = util::root().join("crates/apiserver/src/schema/k8s.docs");
    std::fs::write(&docs_path, doc_out)?;
    let path = util::root().join("crates/apiserver/src/schema/k8s.schema");
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(&path, out)?;
    eprintln!(
        "codegen: wrote {types} types, {fields} fields to {}",
        path.display()
    );
    Ok(())
}
