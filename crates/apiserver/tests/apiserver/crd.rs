//! CustomResourceDefinitions: a CRD's resources are served at once and after a restart, custom resources
//! are defaulted, pruned and validated by the CRD's schema, printed with its columns, scaled through
//! `/scale`, and deleted with the CRD.

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;

use crate::{json, per_backend};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, enum: [red, blue], default: red}
              replicas: {type: integer}
              tags: {type: array, items: {type: string}}
              limits: {type: object, additionalProperties: {type: string}}
          status:
            type: object
            properties:
              replicas: {type: integer}
"#;

const CR: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w1
spec:
  size: 3
  replicas: 1
  tags: [a, b]
  limits: {cpu: "1"}
"#;

async fn custom_resources(mut c: Cluster) -> Result<()> {
    c.kubectl_in(&["apply", "-f", "-"], CRD)?;
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ])?;
    let crd = json(&c, &["get", "crd", "widgets.example.com"])?;
    ensure!(
        crd["status"]["acceptedNames"]["listKind"] == "WidgetList",
        "{}",
        crd["status"]
    );
    let out = c.kubectl_in(&["apply", "-f", "-"], CR)?;
    ensure!(out.contains("widget.example.com/w1 created"), "{out}");
    // Defaulted by the schema, printed with the CRD's columns (dates as ages).
    let table = c.kubectl(&["get", "wd"])?;
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    ensure!(lines[0] == ["NAME", "SIZE", "COLOR", "AGE"], "{table}");
    ensure!(
        lines[1][..3] == ["w1", "3", "red"] && lines[1][3].ends_with('s'),
        "{table}"
    );
    // Re-apply (a JSON merge patch for custom resources), scale, and status kept apart from spec.
    c.kubectl_in(&["apply", "-f", "-"], &CR.replace("size: 3", "size: 5"))?;
    c.kubectl(&["scale", "wd", "w1", "--replicas=4"])?;
    let w = json(&c, &["get", "wd", "w1"])?;
    ensure!(
        w["spec"]["size"] == 5 && w["spec"]["replicas"] == 4 && w["metadata"]["generation"] == 3,
        "{w}"
    );
    ensure!(
        w["spec"]["tags"] == serde_json::json!(["a", "b"]) && w["spec"]["limits"]["cpu"] == "1",
        "{w}"
    );
    // Unknown fields are refused under kubectl's strict validation; schema violations are 422.
    let e = c.kubectl_err(
        &["apply", "-f", "-"],
        Some(&CR.replace("size: 3", "size: 3\n  bogus: 1")),
    )?;
    ensure!(
        e.contains(r#"strict decoding error: unknown field "spec.bogus""#),
        "{e}"
    );
    let e = c.kubectl_err(
        &["apply", "-f", "-"],
        Some(&CR.replace("size: 3", "size: 0")),
    )?;
    ensure!(
        e.contains(
            "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        ),
        "{e}"
    );
    let e = c.kubectl_err(
        &[
            "patch",
            "wd",
            "w1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"color":"green"}}"#,
        ],
        None,
    )?;
    ensure!(
        e.contains(r#"Unsupported value: "green": supported values: "red", "blue""#),
        "{e}"
    );
    let explain = c.kubectl(&["explain", "widget.spec"])?;
    ensure!(
        explain.contains("size") && explain.contains("-required-"),
        "{explain}"
    );
    // A restarted apiserver serves the CRD from storage.
    c.restart_apiserver().await?;
    let size = c.kubectl(&["get", "wd", "w1", "-o", "jsonpath={.spec.size}"])?;
    ensure!(size == "5", "{size}");
    // Deleting the CRD deletes its objects and stops serving them.
    c.kubectl(&["delete", "crd", "widgets.example.com"])?;
    let gone = c.kubectl_err(
        &[
            "get",
            "--raw",
            "/apis/example.com/v1/namespaces/default/widgets",
        ],
        None,
    )?;
    ensure!(gone.contains("NotFound"), "{gone}");
    c.kubectl_in(&["apply", "-f", "-"], CRD)?;
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ])?;
    let items = crate::raw(&c, "/apis/example.com/v1/namespaces/default/widgets")?;
    ensure!(
        items["items"] == serde_json::json!([]),
        "objects outlived their CRD: {items}"
    );
    Ok(())
}
per_backend!(custom_resource_definitions, super::custom_resources);

const GADGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, properties: {spec: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema: {type: object, properties: {spec: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
"#;

/// A CRD served in two versions (conversion strategy None): objects are stored in the storage version and
/// served in whichever version is asked for.
async fn versions(c: Cluster) -> Result<()> {
    c.kubectl_in(&["apply", "-f", "-"], GADGETS)?;
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/gadgets.example.com",
        "--timeout=30s",
    ])?;
    let beta = r#"{"apiVersion":"example.com/v1beta1","kind":"Gadget","metadata":{"name":"g1","namespace":"default"},"spec":{"x":1}}"#;
    c.kubectl_in(&["create", "-f", "-"], beta)?;
    let as_v1 = crate::raw(&c, "/apis/example.com/v1/namespaces/default/gadgets/g1")?;
    let as_beta = crate::raw(
        &c,
        "/apis/example.com/v1beta1/namespaces/default/gadgets/g1",
    )?;
    ensure!(
        as_v1["apiVersion"] == "example.com/v1" && as_beta["apiVersion"] == "example.com/v1beta1",
        "{as_v1} {as_beta}"
    );
    let listed = crate::raw(&c, "/apis/example.com/v1beta1/namespaces/default/gadgets")?;
    ensure!(
        listed["items"][0]["apiVersion"] == "example.com/v1beta1",
        "{listed}"
    );
    let mut etcd = c.store.client().await?;
    let stored = etcd
        .get("/registry/example.com/gadgets/default/g1", None)
        .await?;
    let stored: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value())?;
    ensure!(
        stored["apiVersion"] == "example.com/v1",
        "stored as {stored}"
    );
    Ok(())
}
per_backend!(custom_resources_in_two_versions, super::versions);
