//! The Swagger 2.0 document in protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`):
//! gnostic's `openapi.v2.Document`, which kubectl reads to validate Lists. The JSON document is encoded
//! field by field; extension and default values travel as YAML text, as gnostic keeps them.

use serde_json::Value;

/// Protobuf wire writing: just what these messages need.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn message(&mut self, field: u32, m: Writer) {
        self.bytes(field, &m.0);
    }

    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }

    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// `openapi.v2.Any` with its value as YAML.
fn any(v: &Value) -> Writer {
    let mut w = Writer::default();
    w.string(2, &serde_yaml_ng::to_string(v).unwrap_or_default());
    w
}

/// `openapi.v2.NamedAny` (a vendor extension).
fn named_any(name: &str, v: &Value) -> Writer {
    let mut w = Writer::default();
    w.string(1, name);
    w.message(2, any(v));
    w
}

fn named_schema(name: &str, v: &Value) -> Writer {
    let mut w = Writer::default();
    w.string(1, name);
    w.message(2, schema(v));
    w
}

/// `openapi.v2.Schema`.
fn schema(v: &Value) -> Writer {
    let mut w = Writer::default();
    let Some(obj) = v.as_object() else {
        return w;
    };
    // A single-element allOf around a $ref is the $ref (with the description beside it).
    if let Some([inner]) = obj
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        && inner.get("$ref").is_some()
        && obj.get("type").is_none()
    {
        let mut merged = inner.clone();
        for (k, val) in obj {
            if k != "allOf" {
                merged[k.as_str()] = val.clone();
            }
        }
        return schema(&merged);
    }
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
    let f = |k: &str| obj.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let i = |k: &str| obj.get(k).and_then(Value::as_i64).unwrap_or(0);
    let b = |k: &str| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
    w.string(1, s("$ref"));
    w.string(2, s("format"));
    w.string(3, s("title"));
    w.string(4, s("description"));
    if let Some(d) = obj.get("default") {
        w.message(5, any(d));
    }
    w.double(6, f("multipleOf"));
    w.double(7, f("maximum"));
    w.boolean(8, b("exclusiveMaximum"));
    w.double(9, f("minimum"));
    w.boolean(10, b("exclusiveMinimum"));
    w.int64(11, i("maxLength"));
    w.int64(12, i("minLength"));
    w.string(13, s("pattern"));
    w.int64(14, i("maxItems"));
    w.int64(15, i("minItems"));
    w.boolean(16, b("uniqueItems"));
    w.int64(17, i("maxProperties"));
    w.int64(18, i("minProperties"));
    for r in obj
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.string(19, r.as_str().unwrap_or(""));
    }
    for e in obj
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.message(20, any(e));
    }
    match obj.get("additionalProperties") {
        Some(Value::Bool(allowed)) => {
            let mut item = Writer::default();
            item.key(2, 0);
            item.varint(u64::from(*allowed));
            w.message(21, item);
        }
        Some(ap @ Value::Object(_)) => {
            let mut item = Writer::default();
            item.message(1, schema(ap));
            w.message(21, item);
        }
        _ => {}
    }
    let types: Vec<&str> = match obj.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let mut item = Writer::default();
        for t in types {
            item.string(1, t);
        }
        w.message(22, item);
    }
    match obj.get("items") {
        Some(items @ Value::Object(_)) => {
            let mut item = Writer::default();
            item.message(1, schema(items));
            w.message(23, item);
        }
        Some(Value::Array(list)) => {
            let mut item = Writer::default();
            for s in list {
                item.message(1, schema(s));
            }
            w.message(23, item);
        }
        _ => {}
    }
    for a in obj
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.message(24, schema(a));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        let mut p = Writer::default();
        for (name, prop) in props {
            p.message(1, named_schema(name, prop));
        }
        w.message(25, p);
    }
    w.boolean(27, b("readOnly"));
    if let Some(e) = obj.get("example") {
        w.message(30, any(e));
    }
    for (k, val) in obj {
        if k.starts_with("x-") {
            w.message(31, named_any(k, val));
        }
    }
    w
}

/// The document: version, info and the definitions (what clients read from the protobuf form).
pub fn document(doc: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Writer::default();
    info.string(1, doc["info"]["title"].as_str().unwrap_or(""));
    info.string(2, doc["info"]["version"].as_str().unwrap_or(""));
    w.message(2, info);
    if let Some(defs) = doc.get("definitions").and_then(Value::as_object) {
        let mut d = Writer::default();
        for (name, s) in defs {
            d.message(1, named_schema(name, s));
        }
        w.message(9, d);
    }
    w.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reads (field, wire type, payload) triples of one message level.
    fn fields(mut b: &[u8]) -> Vec<(u32, u8, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
            let payload = match wire {
                0 => varint(&mut b).to_le_bytes().to_vec(),
                1 => {
                    let (p, rest) = b.split_at(8);
                    b = rest;
                    p.to_vec()
                }
                _ => {
                    let n = varint(&mut b) as usize;
                    let (p, rest) = b.split_at(n);
                    b = rest;
                    p.to_vec()
                }
            };
            out.push((field, wire, payload));
        }
        out
    }

    #[test]
    fn documents_encode_as_gnostic_reads_them() {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "definitions": {"io.k8s.api.core.v1.ConfigMap": {"type": "object", "description": "d",
                "properties": {"data": {"type": "object", "additionalProperties": {"type": "string"}},
                    "metadata": {"allOf": [{"$ref": "#/definitions/meta"}], "description": "m"}},
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "ConfigMap", "version": "v1"}]}}});
        let top = fields(&document(&doc));
        assert_eq!((top[0].0, top[0].2.as_slice()), (1, b"2.0".as_slice()));
        let info = fields(&top[1].2);
        assert_eq!(info[1].2, b"v1.32.0");
        let defs = fields(&top[2].2);
        assert_eq!(top[2].0, 9);
        let named = fields(&defs[0].2);
        assert_eq!(named[0].2, b"io.k8s.api.core.v1.ConfigMap");
        let schema = fields(&named[1].2);
        let by = |f: u32| schema.iter().find(|(n, _, _)| *n == f).unwrap().2.clone();
        assert_eq!(by(4), b"d");
        assert_eq!(fields(&by(22))[0].2, b"object");
        // The extension is YAML text in NamedAny.value.yaml.
        let ext = fields(&by(31));
        assert_eq!(ext[0].2, b"x-kubernetes-group-version-kind");
        let yaml = String::from_utf8(fields(&ext[1].2)[0].2.clone()).unwrap();
        assert!(yaml.contains("kind: ConfigMap"), "{yaml}");
        // metadata: the allOf around a $ref became the $ref.
        let props = fields(&by(25));
        let meta = props
            .iter()
            .map(|p| fields(&p.2))
            .find(|p| p[0].2 == b"metadata")
            .unwrap();
        let meta_schema = fields(&meta[1].2);
        assert_eq!(
            (meta_schema[0].0, meta_schema[0].2.as_slice()),
            (1, b"#/definitions/meta".as_slice())
        );
    }
}
