//! The CRI v1 client (`runtime.v1.RuntimeService` and `ImageService`, from the `k8s-cri` crate) over a
//! unix socket, as the kubelet reaches containerd.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1 as api;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the CRI socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call}: {status}")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
}

/// Both CRI services on one connection.
#[derive(Debug, Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// `unix:///run/…/containerd.sock` or a plain path → the path.
pub fn socket_path(endpoint: &str) -> &Path {
    Path::new(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}

impl Cri {
    /// Connects to the CRI runtime at `endpoint` (`unix://` path).
    pub async fn connect(endpoint: &str) -> Result<Self, Error> {
        let path = socket_path(endpoint).to_path_buf();
        let dial = path.clone();
        // The URI is a placeholder: the connector dials the socket.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let dial = dial.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(dial).await?,
                    ))
                }
            }))
            .await
            .map_err(|source| Error::Connect { path, source })?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The image the runtime knows by `name` (a reference CRI normalizes), if any.
    pub async fn image_status(&mut self, name: &str) -> Result<Option<api::Image>, Error> {
        self.images
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: name.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map(|r| r.into_inner().image)
            .map_err(|status| Error::Call {
                call: "ImageStatus",
                status,
            })
    }

    /// The runtime's name and version (`Version`), e.g. (`containerd`, `1.6.20~ds1`).
    pub async fn version(&mut self) -> Result<api::VersionResponse, Error> {
        self.runtime
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| Error::Call {
                call: "Version",
                status,
            })
    }
}
