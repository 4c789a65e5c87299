//! `cargo xtask images`: the container images tests and air-gapped nodes use, built here with no
//! registry and no docker, as OCI image-layout tarballs under `target/images/` (K3s's air-gap form: copy
//! them to `<data-dir>/agent/images/`). `pause` is the sandbox process (`deploy/images/pause`, linked
//! statically); `busybox` is Debian's `busybox-static` with its applets. Each layer is an uncompressed,
//! reproducible tar (owner root, mtime 0), so the same inputs give the same digests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::util;

/// The images and the names they are imported under (`io.containerd.image.name`, used verbatim).
pub const PAUSE: &[&str] = &["docker.io/rancher/mirrored-pause:3.6"];
pub const BUSYBOX: &[&str] = &["docker.io/library/busybox:1.35"];

/// One entry of a layer.
enum Entry {
    Dir(&'static str, u32),
    File(String, u32, Vec<u8>),
    Symlink(String, String),
}

/// A ustar archive in memory (names under 100 bytes, which is all these images need).
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(&mut self, name: &str, mode: u32, size: usize, kind: u8, link: &str) -> Result<()> {
        if name.len() >= 100 || link.len() >= 100 {
            bail!("tar entry name too long: {name}");
        }
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
        let octal = |n: u64, width: usize| format!("{n:0w$o}\0", w = width - 1).into_bytes();
        put(&mut h, 0, name.as_bytes());
        put(&mut h, 100, &octal(u64::from(mode), 8));
        put(&mut h, 108, &octal(0, 8));
        put(&mut h, 116, &octal(0, 8));
        put(&mut h, 124, &octal(size as u64, 12));
        put(&mut h, 136, &octal(0, 12));
        put(&mut h, 148, b"        ");
        h[156] = kind;
        put(&mut h, 157, link.as_bytes());
        put(&mut h, 257, b"ustar\0");
        put(&mut h, 263, b"00");
        put(&mut h, 265, b"root");
        put(&mut h, 297, b"root");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
        Ok(())
    }

    fn add(&mut self, e: &Entry) -> Result<()> {
        match e {
            Entry::Dir(name, mode) => self.header(&format!("{name}/"), *mode, 0, b'5', ""),
            Entry::Symlink(name, target) => self.header(name, 0o777, 0, b'2', target),
            Entry::File(name, mode, data) => {
                self.header(name, *mode, data.len(), b'0', "")?;
                self.0.extend_from_slice(data);
                let pad = (512 - data.len() % 512) % 512;
                self.0.extend(std::iter::repeat_n(0u8, pad));
                Ok(())
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI image-layout tarball of one single-layer image under `names`.
fn image(entries: &[Entry], config: serde_like::Json, names: &[&str]) -> Result<Vec<u8>> {
    let mut layer = Tar::default();
    for e in entries {
        layer.add(e)?;
    }
    let layer = layer.finish();
    let layer_digest = sha256(&layer);
    let config = config.with_diff_id(&layer_digest).render();
    let config_digest = sha256(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = sha256(manifest.as_bytes());
    let entries: Vec<String> = names
        .iter()
        .map(|name| {
            let tag = name.rsplit(':').next().unwrap_or("latest");
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"{tag}"}}}}"#,
                manifest.len()
            )
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    );
    let mut out = Tar::default();
    out.add(&Entry::File(
        "oci-layout".into(),
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ))?;
    out.add(&Entry::File("index.json".into(), 0o644, index.into_bytes()))?;
    out.add(&Entry::Dir("blobs", 0o755))?;
    out.add(&Entry::Dir("blobs/sha256", 0o755))?;
    for (digest, data) in [
        (&layer_digest, layer.clone()),
        (&config_digest, config.into_bytes()),
        (&manifest_digest, manifest.into_bytes()),
    ] {
        out.add(&Entry::File(format!("blobs/sha256/{digest}"), 0o644, data))?;
    }
    Ok(out.finish())
}

/// Image configs, written by hand (xtask has no JSON library, and these are small and fixed).
mod serde_like {
    pub struct Json {
        pub entrypoint: Vec<String>,
        pub cmd: Vec<String>,
        pub user: Option<String>,
        pub diff_id: String,
    }

    fn list(v: &[String]) -> String {
        let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", items.join(","))
    }

    impl Json {
        pub fn with_diff_id(mut self, digest: &str) -> Self {
            self.diff_id = format!("sha256:{digest}");
            self
        }

        pub fn render(&self) -> String {
            let user = self
                .user
                .as_ref()
                .map(|u| format!(r#""User":{u:?},"#))
                .unwrap_or_default();
            format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{{user}"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":{},"Cmd":{},"WorkingDir":"/"}},"rootfs":{{"type":"layers","diff_ids":["{}"]}},"history":[{{"created_by":"cargo xtask images"}}]}}"#,
                list(&self.entrypoint),
                list(&self.cmd),
                self.diff_id
            )
        }
    }
}

fn out_dir() -> PathBuf {
    util::root().join("target/images")
}

/// The tarballs `build` writes: (file, names).
pub fn tarballs() -> Vec<(PathBuf, &'static [&'static str])> {
    vec![
        (out_dir().join("pause.tar"), PAUSE),
        (out_dir().join("busybox.tar"), BUSYBOX),
    ]
}

fn pause_binary() -> Result<Vec<u8>> {
    eprintln!("images: building the static pause binary");
    let target = util::root().join("target/images/build");
    util::run(
        util::cargo()
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "k3rs-pause",
                "--target",
                "x86_64-unknown-linux-gnu",
            ])
            .arg("--target-dir")
            .arg(&target)
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    let bin = target.join("x86_64-unknown-linux-gnu/release/pause");
    std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))
}

fn busybox_entries() -> Result<Vec<Entry>> {
    let bin = Path::new("/bin/busybox");
    let data = std::fs::read(bin).context("reading /bin/busybox (Debian's busybox-static)")?;
    let list = util::output(Command::new(bin).arg("--list"))?;
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::Dir("etc", 0o755),
        Entry::Dir("tmp", 0o1777),
        Entry::Dir("root", 0o700),
        Entry::File(
            "etc/passwd".into(),
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
        ),
        Entry::File(
            "etc/group".into(),
            0o644,
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        ),
        Entry::File("bin/busybox".into(), 0o755, data),
    ];
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" && !applet.contains('/') {
            entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
        }
    }
    Ok(entries)
}

/// Builds every image into `target/images/`.
pub fn build() -> Result<()> {
    crate::deps::install_only(&["busybox-static"])?;
    std::fs::create_dir_all(out_dir())?;
    let pause = image(
        &[Entry::File("pause".into(), 0o755, pause_binary()?)],
        serde_like::Json {
            entrypoint: vec!["/pause".into()],
            cmd: Vec::new(),
            user: Some("65535:65535".into()),
            diff_id: String::new(),
        },
        PAUSE,
    )?;
    let busybox = image(
        &busybox_entries()?,
        serde_like::Json {
            entrypoint: Vec::new(),
            cmd: vec!["sh".into()],
            user: None,
            diff_id: String::new(),
        },
        BUSYBOX,
    )?;
    let files = tarballs();
    for ((path, names), data) in files.iter().zip([pause, busybox]) {
        std::fs::write(path, &data).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "images: {} ({} KB): {}",
            path.display(),
            data.len() / 1024,
            names.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_checksum_and_pad() {
        let mut t = Tar::default();
        t.add(&Entry::File("a".into(), 0o644, b"hi".to_vec()))
            .unwrap();
        let out = t.finish();
        assert_eq!(out.len(), 512 + 512 + 1024);
        let sum: u32 = out[..512]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(*b)
                }
            })
            .sum();
        let stored = std::str::from_utf8(&out[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&out[257..262], b"ustar");
        assert_eq!(&out[512..514], b"hi");
    }

    #[test]
    fn images_name_every_tag_and_are_reproducible() {
        let make = || {
            image(
                &[Entry::File("x".into(), 0o755, vec![1, 2, 3])],
                serde_like::Json {
                    entrypoint: vec!["/x".into()],
                    cmd: Vec::new(),
                    user: None,
                    diff_id: String::new(),
                },
                &["docker.io/library/x:1", "example.com/x:2"],
            )
            .unwrap()
        };
        let a = make();
        assert_eq!(a, make());
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains(r#""io.containerd.image.name":"docker.io/library/x:1""#));
        assert!(text.contains(r#""io.containerd.image.name":"example.com/x:2""#));
        assert!(text.contains("imageLayoutVersion"));
    }
}
