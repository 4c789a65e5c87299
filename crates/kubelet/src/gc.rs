//! Image garbage collection (upstream `images/image_gc_manager.go`): every 5 minutes, when the image
//! filesystem is fuller than `--image-gc-high-threshold` percent, images no container uses are removed,
//! least recently used first (and none younger than `--minimum-image-ttl-duration`), until usage is back
//! under `--image-gc-low-threshold`. The sandbox image is never removed. Dead containers are collected
//! by the pod workers (one kept per container for `--previous` logs) and with their pods.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cri::{Cri, api};

/// How image GC is tuned.
#[derive(Debug, Clone)]
pub struct Settings {
    pub high_percent: u8,
    pub low_percent: u8,
    pub minimum_age: Duration,
    pub period: Duration,
    /// The filesystem images live on (containerd's root).
    pub image_fs: PathBuf,
    pub sandbox_image: String,
}

/// What is remembered about an image between rounds.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub first_detected: Instant,
    pub last_used: Instant,
}

/// The images to remove, in order, to free `to_free` bytes: unused, old enough, least recently used
/// first.
pub fn select(
    images: &[(String, u64)],
    in_use: &HashSet<String>,
    records: &HashMap<String, Record>,
    now: Instant,
    minimum_age: Duration,
    to_free: u64,
) -> Vec<String> {
    let mut candidates: Vec<(&String, u64, Record)> = images
        .iter()
        .filter(|(id, _)| !in_use.contains(id))
        .filter_map(|(id, size)| records.get(id).map(|r| (id, *size, *r)))
        .filter(|(_, _, r)| now.duration_since(r.first_detected) >= minimum_age)
        .collect();
    candidates.sort_by_key(|(_, _, r)| (r.last_used, r.first_detected));
    let mut freed = 0;
    let mut out = Vec::new();
    for (id, size, _) in candidates {
        if freed >= to_free {
            break;
        }
        freed += size;
        out.push(id.clone());
    }
    out
}

/// Runs image GC until `shutdown`.
pub async fn run(mut cri: Cri, s: Settings, shutdown: CancellationToken) {
    let mut records: HashMap<String, Record> = HashMap::new();
    loop {
        if let Err(e) = round(&mut cri, &s, &mut records).await {
            tracing::warn!(error = %e, "image garbage collection");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(s.period) => {}
        }
    }
}

async fn round(
    cri: &mut Cri,
    s: &Settings,
    records: &mut HashMap<String, Record>,
) -> Result<(), crate::cri::Error> {
    let now = Instant::now();
    let images = crate::runtime::list_images(cri).await?;
    let containers = cri
        .runtime
        .list_containers(api::ListContainersRequest { filter: None })
        .await
        .map_err(|status| crate::cri::Error::Call {
            call: "ListContainers",
            status,
        })?
        .into_inner()
        .containers;
    let mut in_use: HashSet<String> = containers
        .iter()
        .flat_map(|c| {
            [
                c.image_ref.clone(),
                c.image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    for i in &images {
        if i.repo_tags.contains(&s.sandbox_image) || i.pinned {
            in_use.insert(i.id.clone());
        }
    }
    let ids: HashSet<&String> = images.iter().map(|i| &i.id).collect();
    records.retain(|id, _| ids.contains(id));
    for i in &images {
        let r = records.entry(i.id.clone()).or_insert(Record {
            first_detected: now,
            last_used: now,
        });
        if in_use.contains(&i.id) {
            r.last_used = now;
        }
    }
    let Ok(fs) = rustix::fs::statvfs(&s.image_fs) else {
        return Ok(());
    };
    let capacity = fs.f_blocks * fs.f_frsize;
    let used = capacity.saturating_sub(fs.f_bavail * fs.f_frsize);
    if capacity == 0 || used * 100 < capacity * u64::from(s.high_percent) {
        return Ok(());
    }
    let to_free = used.saturating_sub(capacity * u64::from(s.low_percent) / 100);
    let sized: Vec<(String, u64)> = images.iter().map(|i| (i.id.clone(), i.size)).collect();
    let victims = select(&sized, &in_use, records, now, s.minimum_age, to_free);
    tracing::info!(
        used_percent = used * 100 / capacity,
        to_free,
        images = victims.len(),
        "image filesystem over its high threshold"
    );
    for id in victims {
        match cri
            .images
            .remove_image(api::RemoveImageRequest {
                image: Some(api::ImageSpec {
                    image: id.clone(),
                    ..Default::default()
                }),
            })
            .await
        {
            Ok(_) => {
                tracing::info!(image = %id, "removed unused image");
                records.remove(&id);
            }
            Err(e) => tracing::warn!(image = %id, error = %e.message(), "removing an image"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_unused_and_old_enough() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let images = vec![
            ("a".to_string(), 100),
            ("b".to_string(), 100),
            ("c".to_string(), 100),
            ("d".to_string(), 100),
        ];
        let records = HashMap::from([
            (
                "a".to_string(),
                Record {
                    first_detected: at(0),
                    last_used: at(50),
                },
            ),
            (
                "b".to_string(),
                Record {
                    first_detected: at(0),
                    last_used: at(10),
                },
            ),
            (
                "c".to_string(),
                Record {
                    first_detected: at(0),
                    last_used: at(5),
                },
            ),
            (
                "d".to_string(),
                Record {
                    first_detected: at(290),
                    last_used: at(290),
                },
            ),
        ]);
        let in_use = HashSet::from(["c".to_string()]);
        let now = at(300);
        // c is in use, d too young: b (older use) before a.
        assert_eq!(
            select(
                &images,
                &in_use,
                &records,
                now,
                Duration::from_secs(120),
                150
            ),
            ["b", "a"]
        );
        assert_eq!(
            select(
                &images,
                &in_use,
                &records,
                now,
                Duration::from_secs(120),
                50
            ),
            ["b"]
        );
        assert!(select(&images, &in_use, &records, now, Duration::from_secs(120), 0).is_empty());
    }
}
