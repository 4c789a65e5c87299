//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0` magic, the
//! `runtime.Unknown` envelope, and the object decoded to JSON with the type table. Go clients (kubectl's
//! typed generators, controller-runtime) send built-in objects this way.
//!
//! Go's protobuf encoding writes non-pointer fields even when empty, while its JSON leaves out empty
//! `omitempty` fields. The wire cannot tell a pointer set to zero from an empty non-pointer field, so: fields
//! Go always serializes (`req` in the table) keep their empty values; other empty strings, zero numbers,
//! `false` and zero timestamps are left out, except for the pointer fields in [`POINTER_SCALARS`], where
//! zero or `false` means something different from absent (`replicas: 0`, `runAsUser: 0`).

use base64::Engine;
use serde_json::{Map, Value};

use crate::schema::{Catalog, Kind, Type, catalog, definition};
use crate::status::ApiError;

/// The 4-byte prefix of every Kubernetes protobuf message.
pub const MAGIC: &[u8] = b"k8s\x00";

/// Optional numeric and boolean fields that Go declares as pointers, where an explicit zero or `false` is a
/// value (it differs from the default or from "unset"); from the Go types of the served API groups.
const POINTER_SCALARS: &[&str] = &[
    "replicas",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "partition",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "deletionGracePeriodSeconds",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "runAsNonRoot",
    "privileged",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "automountServiceAccountToken",
    "shareProcessNamespace",
    "enableServiceLinks",
    "priority",
    "hostUsers",
    "setHostnameAsFQDN",
    "optional",
    "defaultMode",
    "mode",
    "expirationSeconds",
    "backoffLimit",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "completions",
    "parallelism",
    "ttlSecondsAfterFinished",
    "suspend",
    "manualSelector",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "immutable",
    "allowVolumeExpansion",
    "allocateLoadBalancerNodePorts",
    "ready",
    "serving",
    "terminating",
    "started",
    "minDomains",
];

/// Optional strings Go declares as pointers, where `""` differs from absent (a PVC's `storageClassName: ""`
/// asks for no class at all).
const POINTER_STRINGS: &[&str] = &["storageClassName"];

/// Whether a decoded scalar is Go's zero value.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

#[derive(Debug)]
struct Malformed(String);

type Result<T> = std::result::Result<T, Malformed>;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| Malformed("truncated varint".into()))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed("varint too long".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| Malformed("truncated field".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.varint()?).map_err(|_| Malformed("length overflow".into()))?;
        self.take(n)
    }

    /// The next field: (tag, wire type).
    fn key(&mut self) -> Result<(u32, u8)> {
        let k = self.varint()?;
        let tag = u32::try_from(k >> 3).map_err(|_| Malformed("tag overflow".into()))?;
        if tag == 0 {
            return Err(Malformed("field tag 0".into()));
        }
        Ok((tag, (k & 7) as u8))
    }

    fn skip(&mut self, wire: u8) -> Result<()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            w => Err(Malformed(format!("unsupported wire type {w}"))),
        }
    }
}

/// A raw wire value of one field occurrence.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn read_wire<'a>(r: &mut Reader<'a>, wire: u8) -> Result<Wire<'a>> {
    Ok(match wire {
        0 => Wire::Varint(r.varint()?),
        1 => Wire::Fixed64(u64::from_le_bytes(r.take(8)?.try_into().unwrap_or([0; 8]))),
        2 => Wire::Bytes(r.bytes()?),
        5 => Wire::Fixed32(u32::from_le_bytes(r.take(4)?.try_into().unwrap_or([0; 4]))),
        w => return Err(Malformed(format!("unsupported wire type {w}"))),
    })
}

fn scalar(kind: &Kind, w: &Wire<'_>) -> Result<Option<Value>> {
    Ok(match (kind, w) {
        (Kind::String, Wire::Bytes(b)) => {
            let s = std::str::from_utf8(b).map_err(|_| Malformed("string is not UTF-8".into()))?;
            Some(Value::from(s))
        }
        (Kind::Bytes, Wire::Bytes(b)) => Some(Value::from(
            base64::engine::general_purpose::STANDARD.encode(b),
        )),
        (Kind::Bool, Wire::Varint(v)) => Some(Value::from(*v != 0)),
        (Kind::Int32, Wire::Varint(v)) => Some(Value::from(*v as i64 as i32)),
        (Kind::Int64, Wire::Varint(v)) => Some(Value::from(*v as i64)),
        (Kind::Double, Wire::Fixed64(v)) => Some(Value::from(f64::from_bits(*v))),
        (Kind::Float, Wire::Fixed32(v)) => Some(Value::from(f64::from(f32::from_bits(*v)))),
        _ => return Err(Malformed(format!("wire type does not match {kind:?}"))),
    })
}

/// Go's `time.Duration` string (`1h2m3.5s`).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let (h, rem) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, rem) = (rem / 60_000_000_000, rem % 60_000_000_000);
    let (s, frac) = (rem / 1_000_000_000, rem % 1_000_000_000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:09}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => format!("{sign}{secs}"),
        (0, m) => format!("{sign}{m}m{secs}"),
        (h, m) => format!("{sign}{h}h{m}m{secs}"),
    }
}

/// Fields of a message by tag, as raw wire values (for the hand-mapped wrapper types).
fn fields_of(buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>> {
    let mut r = Reader::new(buf);
    let mut out = Vec::new();
    while !r.done() {
        let (tag, wire) = r.key()?;
        out.push((tag, read_wire(&mut r, wire)?));
    }
    Ok(out)
}

fn int_of(fields: &[(u32, Wire<'_>)], tag: u32) -> i64 {
    fields
        .iter()
        .rev()
        .find_map(|(t, w)| match (t, w) {
            (t, Wire::Varint(v)) if *t == tag => Some(*v as i64),
            _ => None,
        })
        .unwrap_or(0)
}

fn bytes_of<'a>(fields: &[(u32, Wire<'a>)], tag: u32) -> Option<&'a [u8]> {
    fields.iter().rev().find_map(|(t, w)| match (t, w) {
        (t, Wire::Bytes(b)) if *t == tag => Some(*b),
        _ => None,
    })
}

fn embedded_json(raw: Option<&[u8]>) -> Result<Option<Value>> {
    match raw {
        None | Some([]) => Ok(None),
        Some(b) => serde_json::from_slice(b)
            .map(Some)
            .map_err(|e| Malformed(format!("embedded JSON: {e}"))),
    }
}

struct Decoder<'c> {
    catalog: &'c Catalog,
    depth: usize,
}

impl Decoder<'_> {
    /// A message of type `def`; `None` when it maps to an absent JSON value.
    fn message(&mut self, def: &str, buf: &[u8]) -> Result<Option<Value>> {
        const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";
        const EXT: &str = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.";
        let special = |name: &str| def.strip_prefix(META) == Some(name);
        if special("Time") || special("MicroTime") {
            let f = fields_of(buf)?;
            let (secs, nanos) = (int_of(&f, 1), int_of(&f, 2));
            if secs == 0 && nanos == 0 {
                return Ok(None);
            }
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
            let base = crate::meta::rfc3339(t);
            return Ok(Some(Value::from(if special("MicroTime") {
                format!("{}.{:06}Z", base.trim_end_matches('Z'), nanos / 1000)
            } else {
                base
            })));
        }
        if special("Duration") {
            return Ok(Some(Value::from(go_duration(int_of(&fields_of(buf)?, 1)))));
        }
        if special("FieldsV1")
            || def == "io.k8s.apimachinery.pkg.runtime.RawExtension"
            || def == format!("{EXT}JSON")
        {
            return embedded_json(bytes_of(&fields_of(buf)?, 1));
        }
        match def {
            "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
                let f = fields_of(buf)?;
                let s = bytes_of(&f, 1).map(|b| String::from_utf8_lossy(b).into_owned());
                return Ok(Some(Value::from(s.unwrap_or_else(|| "0".into()))));
            }
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
                let f = fields_of(buf)?;
                return Ok(Some(if int_of(&f, 1) == 1 {
                    Value::from(
                        bytes_of(&f, 3)
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default(),
                    )
                } else {
                    Value::from(int_of(&f, 2) as i32)
                }));
            }
            _ => {}
        }
        if let Some(which) = def
            .strip_prefix(EXT)
            .filter(|d| d.starts_with("JSONSchemaPropsOr"))
        {
            let f = fields_of(buf)?;
            let props = format!("{EXT}JSONSchemaProps");
            return match which {
                "JSONSchemaPropsOrBool" => match bytes_of(&f, 2) {
                    Some(s) => self.message(&props, s),
                    None => Ok(Some(Value::from(int_of(&f, 1) != 0))),
                },
                "JSONSchemaPropsOrArray" => {
                    if let Some(s) = bytes_of(&f, 1) {
                        return self.message(&props, s);
                    }
                    let mut items = Vec::new();
                    for (tag, w) in &f {
                        if let (2, Wire::Bytes(b)) = (tag, w) {
                            items.push(
                                self.message(&props, b)?
                                    .unwrap_or(Value::Object(Map::new())),
                            );
                        }
                    }
                    Ok(Some(Value::Array(items)))
                }
                _ => match bytes_of(&f, 1) {
                    Some(s) => self.message(&props, s),
                    None => Ok(Some(Value::Array(
                        f.iter()
                            .filter_map(|(t, w)| match (t, w) {
                                (2, Wire::Bytes(b)) => {
                                    Some(Value::from(String::from_utf8_lossy(b).into_owned()))
                                }
                                _ => None,
                            })
                            .collect(),
                    ))),
                },
            };
        }
        let ty = self
            .catalog
            .get(def)
            .ok_or_else(|| Malformed(format!("no protobuf schema for {def}")))?;
        self.object(ty, buf).map(|m| Some(Value::Object(m)))
    }

    fn object(&mut self, ty: &Type, buf: &[u8]) -> Result<Map<String, Value>> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(Malformed("nesting too deep".into()));
        }
        let mut out = Map::new();
        let mut r = Reader::new(buf);
        while !r.done() {
            let (tag, wire) = r.key()?;
            let Some(field) = ty.by_tag(tag) else {
                r.skip(wire)?;
                continue;
            };
            let w = read_wire(&mut r, wire)?;
            let value = match (&field.kind, &w) {
                (Kind::Message, Wire::Bytes(b)) => {
                    let def = field.reference.as_deref().unwrap_or("");
                    self.message(def, b)?
                }
                (Kind::Map(vk), Wire::Bytes(b)) => {
                    let f = fields_of(b)?;
                    let key = bytes_of(&f, 1)
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default();
                    let value = match (vk.as_ref(), f.iter().rev().find(|(t, _)| *t == 2)) {
                        (Kind::Message, Some((_, Wire::Bytes(v)))) => {
                            self.message(field.reference.as_deref().unwrap_or(""), v)?
                        }
                        (Kind::String, None) => Some(Value::from("")),
                        (Kind::Bytes, None) => Some(Value::from("")),
                        // Map values keep empty strings: a key with an empty value is data.
                        (k, Some((_, v))) => scalar(k, v)?,
                        (_, None) => None,
                    };
                    let entry = out
                        .entry(field.json.clone().unwrap_or_default())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let (Some(map), Some(v)) = (entry.as_object_mut(), value) {
                        map.insert(key, v);
                    }
                    continue;
                }
                (Kind::Int32 | Kind::Int64 | Kind::Bool, Wire::Bytes(b)) if field.repeated => {
                    // Packed repeated numbers.
                    let mut pr = Reader::new(b);
                    let list = out
                        .entry(field.json.clone().unwrap_or_default())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    while !pr.done() {
                        let v = pr.varint()?;
                        if let (Some(a), Some(x)) =
                            (list.as_array_mut(), scalar(&field.kind, &Wire::Varint(v))?)
                        {
                            a.push(x);
                        }
                    }
                    continue;
                }
                (kind, w) => {
                    let v = scalar(kind, w)?;
                    let name = field.json.as_deref().unwrap_or("");
                    let keep = field.required
                        || field.repeated
                        || match v.as_ref() {
                            Some(Value::String(_)) => POINTER_STRINGS.contains(&name),
                            _ => POINTER_SCALARS.contains(&name),
                        };
                    v.filter(|v| keep || !is_zero(v))
                }
            };
            match (&field.json, value) {
                // A Go-embedded struct: its fields go into this object.
                (None, Some(Value::Object(inner))) => out.extend(inner),
                (None, _) => {}
                (Some(name), Some(v)) if field.repeated => {
                    let list = out
                        .entry(name.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Some(a) = list.as_array_mut() {
                        a.push(v);
                    }
                }
                (Some(name), Some(v)) => {
                    out.insert(name.clone(), v);
                }
                (Some(_), None) => {}
            }
        }
        self.depth -= 1;
        Ok(out)
    }
}

/// Decodes a protobuf request body into the JSON object it encodes.
pub fn decode(body: &[u8]) -> std::result::Result<Value, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("error decoding protobuf body: {m}"));
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the Kubernetes protobuf prefix".into()))?;
    let f = fields_of(rest).map_err(|Malformed(m)| bad(m))?;
    let type_meta = bytes_of(&f, 1).unwrap_or_default();
    let tm = fields_of(type_meta).map_err(|Malformed(m)| bad(m))?;
    let text = |tag| {
        bytes_of(&tm, tag)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let (api_version, kind) = (text(1), text(2));
    if kind.is_empty() {
        return Err(bad("the envelope names no kind".into()));
    }
    if let Some(enc) = bytes_of(&f, 3).filter(|e| !e.is_empty()) {
        return Err(bad(format!(
            "unsupported content encoding {:?}",
            String::from_utf8_lossy(enc)
        )));
    }
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let def = definition(group, version, &kind);
    let raw = bytes_of(&f, 2).unwrap_or_default();
    let mut decoder = Decoder {
        catalog: catalog(),
        depth: 0,
    };
    let ty = catalog().get(&def).ok_or_else(|| {
        ApiError::bad_request(format!(
            "no kind {kind:?} is registered for version {api_version:?}"
        ))
    })?;
    let mut obj = decoder.object(ty, raw).map_err(|Malformed(m)| bad(m))?;
    obj.insert("apiVersion".into(), Value::from(api_version));
    obj.insert("kind".into(), Value::from(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn num(tag: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3, out);
        varint(v, out);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        field(1, api_version.as_bytes(), &mut tm);
        field(2, kind.as_bytes(), &mut tm);
        let mut unknown = Vec::new();
        field(1, &tm, &mut unknown);
        field(2, raw, &mut unknown);
        field(3, b"", &mut unknown);
        field(4, b"", &mut unknown);
        let mut body = MAGIC.to_vec();
        body.extend(unknown);
        body
    }

    #[test]
    fn decodes_a_configmap_as_go_encodes_it() {
        // ObjectMeta{name: "c", namespace: "", labels: {a: b}, creationTimestamp: zero}
        let mut meta = Vec::new();
        field(1, b"c", &mut meta);
        field(3, b"", &mut meta);
        let mut entry = Vec::new();
        field(1, b"a", &mut entry);
        field(2, b"b", &mut entry);
        field(11, &entry, &mut meta);
        field(8, b"", &mut meta); // zero Time
        let mut cm = Vec::new();
        field(1, &meta, &mut cm);
        let mut data = Vec::new();
        field(1, b"k", &mut data);
        field(2, b"", &mut data);
        field(2, &data, &mut cm);
        let obj = decode(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            obj,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "labels": {"a": "b"}}, "data": {"k": ""}})
        );
    }

    #[test]
    fn decodes_wrappers_and_inline_structs() {
        // Deployment.spec.{replicas: 0, strategy.rollingUpdate.maxSurge: "25%", template.spec.volumes[0] (inline source)}
        let mut ios = Vec::new();
        num(1, 1, &mut ios);
        field(3, b"25%", &mut ios);
        let mut ru = Vec::new();
        field(2, &ios, &mut ru);
        let mut strategy = Vec::new();
        field(1, b"RollingUpdate", &mut strategy);
        field(2, &ru, &mut strategy);
        let mut empty_dir = Vec::new();
        field(1, b"Memory", &mut empty_dir);
        let mut source = Vec::new();
        field(2, &empty_dir, &mut source);
        let mut volume = Vec::new();
        field(1, b"scratch", &mut volume);
        field(2, &source, &mut volume);
        let mut pod_spec = Vec::new();
        field(1, &volume, &mut pod_spec);
        let mut template = Vec::new();
        field(2, &pod_spec, &mut template);
        let mut spec = Vec::new();
        num(1, 0, &mut spec);
        field(3, &template, &mut spec);
        field(4, &strategy, &mut spec);
        let mut d = Vec::new();
        field(2, &spec, &mut d);
        let obj = decode(&envelope("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(obj["spec"]["replicas"], 0);
        assert_eq!(obj["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            obj["spec"]["template"]["spec"]["volumes"][0],
            serde_json::json!({"name": "scratch", "emptyDir": {"medium": "Memory"}})
        );
    }

    #[test]
    fn rejects_garbage_with_bad_request() {
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
        let mut body = MAGIC.to_vec();
        body.extend([0x0a, 0xff]);
        assert_eq!(decode(&body).unwrap_err().code, 400);
        assert_eq!(
            decode(&envelope("v1", "Widget", b"")).unwrap_err().code,
            400
        );
        assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
    }
}
