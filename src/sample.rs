//! The built-in hello sample: a static linux/amd64 binary compiled into `emulate` by build.rs,
//! turned into a `FROM scratch` image on first use. Nothing is pulled.

use std::hash::{Hash, Hasher};

use crate::runtime::{Runtime, RuntimeError};

const HELLO_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello"));
const DOCKERFILE: &str = include_str!("../docker/hello/Dockerfile");
/// The sample's image repository; the tag is a hash of the binary, so a changed sample is
/// rebuilt and an unchanged one is reused.
pub const REPOSITORY: &str = "emulate-sample/hello";

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("this build of emulate has no built-in sample (it could not be compiled for x86_64-unknown-linux-gnu); name an image: emulate run IMAGE")]
    Unavailable,
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The sample image's reference, building the image if the engine does not have it yet.
pub async fn ensure_image(runtime: &Runtime) -> Result<String, SampleError> {
    if HELLO_BINARY.is_empty() {
        return Err(SampleError::Unavailable);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    HELLO_BINARY.hash(&mut hasher);
    DOCKERFILE.hash(&mut hasher);
    let image = format!("{REPOSITORY}:{:016x}", hasher.finish());
    if runtime.inspect_image(&image).await?.is_none() {
        runtime.build_image(&image, build_context()).await?;
    }
    Ok(image)
}

/// A tar build context: the Dockerfile and the binary.
fn build_context() -> Vec<u8> {
    let mut archive = tar::Builder::new(Vec::new());
    for (path, data, mode) in [
        ("Dockerfile", DOCKERFILE.as_bytes(), 0o644),
        ("hello", HELLO_BINARY, 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        archive
            .append_data(&mut header, path, data)
            .expect("writing a tar into memory cannot fail");
    }
    archive
        .into_inner()
        .expect("writing a tar into memory cannot fail")
}
