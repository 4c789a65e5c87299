//! k3rs-kubelet: runs the pods bound to its node on containerd through CRI. So far the groundwork: the
//! agent's supervised containerd (`containerd`), the CRI v1 client (`cri`) and the air-gap image import
//! (`images`); the pod workers, node registration and the kubelet API follow (issue 7).
#![forbid(unsafe_code)]

pub mod containerd;
pub mod cri;
pub mod images;
