//! ImageLocality: prefers nodes that already have the pod's images, weighted by image size and by how
//! many nodes have them (upstream's `imagelocality`).

use crate::cache::{Cache, NodeInfo};
use crate::framework::{CycleState, MAX_NODE_SCORE, Plugin, point};
use crate::pod::PodInfo;

const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

#[derive(Debug)]
pub struct ImageLocality;

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }
    fn points(&self) -> u32 {
        point::SCORE
    }
    fn score(&self, cache: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let images = &pod.pending().images;
        let total_nodes = cache.node_count().max(1) as f64;
        let sum: i64 = images
            .iter()
            .filter_map(|img| {
                let size = *node.images.get(img)?;
                Some((size as f64 * cache.image_node_count(img) as f64 / total_nodes) as i64)
            })
            .sum();
        let max = MAX_CONTAINER_THRESHOLD * images.len().max(1) as i64;
        let clamped = sum.clamp(MIN_THRESHOLD, max);
        MAX_NODE_SCORE * (clamped - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}
