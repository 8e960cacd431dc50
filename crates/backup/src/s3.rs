//! S3 through `object_store`, driven by a private single-threaded tokio runtime: the rest
//! of baluchon stays synchronous, and the async code ends at this file.

use std::io::{Read as _, Write as _};
use std::path::Path;

use baluchon_bundle::Progress;
use futures::TryStreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutPayload, WriteMultipart};

use crate::destination::Object;
use crate::BackupError;

/// Multipart part size: Garage stores 1 MiB blocks and took 8 MiB parts well; S3 wants at
/// least 5 MiB for every part but the last.
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once; with the buffer read and the part being filled, memory stays
/// under 4 × PART_SIZE.
const PARTS_IN_FLIGHT: usize = 2;

/// S3 endpoint, region, credentials and options, as the caller gathered them.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// `AWS_*` environment variables: those object_store does not know are ignored.
    pub environment: Vec<(String, String)>,
    /// A configuration file's keys (`endpoint`, `region`, `access_key_id`,
    /// `secret_access_key`, `allow_http`, …, with or without `aws_`); they win over the
    /// environment, and an unknown one is an error.
    pub file: Vec<(String, String)>,
    /// Bytes per second that uploads may average.
    pub limit_rate: Option<u64>,
}

pub(crate) struct S3Store {
    store: AmazonS3,
    prefix: String,
    runtime: tokio::runtime::Runtime,
    limit_rate: Option<u64>,
}

impl S3Store {
    pub(crate) fn open(
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
    ) -> Result<Self, BackupError> {
        let mut builder = AmazonS3Builder::new();
        // As object_store's `from_env`: the environment holds variables for other tools too.
        for (key, value) in &settings.environment {
            if let Ok(config) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(config, value);
            }
        }
        for (key, value) in &settings.file {
            let lower = key.to_ascii_lowercase();
            // Both spellings: `endpoint`, or `aws_endpoint` as in the environment.
            let config: AmazonS3ConfigKey = lower
                .parse()
                .or_else(|_| format!("aws_{lower}").parse())
                .map_err(|_| BackupError::S3Setting { key: key.clone() })?;
            builder = builder.with_config(config, value);
        }
        let store =
            builder
                .with_bucket_name(bucket)
                .build()
                .map_err(|source| BackupError::S3Open {
                    bucket: bucket.to_owned(),
                    source: Box::new(source),
                })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            store,
            prefix: prefix.to_owned(),
            runtime,
            limit_rate: settings.limit_rate,
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn error(
        destination: &str,
        operation: &'static str,
        key: &str,
    ) -> impl FnOnce(object_store::Error) -> BackupError {
        let destination = destination.to_owned();
        let key = key.to_owned();
        move |source| BackupError::S3 {
            destination,
            operation,
            key,
            source: Box::new(source),
        }
    }

    /// A multipart upload, fed chunk by chunk from the file: memory is bounded by the part
    /// size, not the bundle's. An upload that fails is aborted; one that is killed never
    /// completes, so no object appears under `key` (its parts stay until the bucket's
    /// lifecycle rule for incomplete uploads removes them; see docs/backups.md).
    pub(crate) fn put_file(
        &self,
        destination: &str,
        key: &str,
        local: &Path,
        progress: &dyn Progress,
    ) -> Result<(), BackupError> {
        let mut file = fs_err::File::open(local)?;
        let path = self.path(key);
        let error = |op| Self::error(destination, op, key);
        self.runtime.block_on(async {
            let upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(error("upload"))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut pacer = self.limit_rate.map(baluchon_transport::Pacer::new);
            let mut buf = vec![0u8; PART_SIZE];
            let sent = loop {
                let n = match file.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => break Err(BackupError::Io(e)),
                };
                if n == 0 {
                    break Ok(());
                }
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    break Err(error("upload")(e));
                }
                writer.write(&buf[..n]);
                progress.advance(n as u64);
                if let Some(pacer) = &mut pacer {
                    // Parts go out while the next one is awaited: the average holds.
                    pacer.pace(n as u64);
                }
            };
            match sent {
                Ok(()) => writer.finish().await.map(drop).map_err(error("upload")),
                Err(e) => {
                    // The original error matters; a failed abort only leaves parts behind.
                    let _ = writer.abort().await;
                    Err(e)
                }
            }
        })
    }

    pub(crate) fn put_bytes(
        &self,
        destination: &str,
        key: &str,
        bytes: &[u8],
    ) -> Result<(), BackupError> {
        let path = self.path(key);
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(bytes.to_vec())))
            .map(drop)
            .map_err(Self::error(destination, "upload", key))
    }

    /// Objects under `within` (a tenant's directory, or `""` for all), with keys relative
    /// to the destination.
    pub(crate) fn list(&self, destination: &str, within: &str) -> Result<Vec<Object>, BackupError> {
        let prefix = match (self.prefix.is_empty(), within.is_empty()) {
            (true, true) => None,
            (false, true) => Some(ObjectPath::from(self.prefix.as_str())),
            (_, false) => Some(self.path(within)),
        };
        let metas: Vec<_> = self
            .runtime
            .block_on(self.store.list(prefix.as_ref()).try_collect())
            .map_err(Self::error(destination, "listing", &self.prefix))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        Ok(metas
            .into_iter()
            .filter_map(|meta| {
                let key = meta.location.as_ref().strip_prefix(&strip)?.to_owned();
                Some(Object {
                    key,
                    size: meta.size,
                    modified: jiff::Timestamp::from_second(meta.last_modified.timestamp()).ok(),
                })
            })
            .collect())
    }

    pub(crate) fn get(
        &self,
        destination: &str,
        key: &str,
        local: &Path,
        progress: &dyn Progress,
    ) -> Result<(), BackupError> {
        let path = self.path(key);
        let error = Self::error(destination, "download", key);
        let mut output = fs_err::File::create_new(local)?;
        self.runtime.block_on(async {
            let result = self.store.get(&path).await.map_err(error)?;
            let mut stream = result.into_stream();
            while let Some(chunk) =
                stream
                    .try_next()
                    .await
                    .map_err(Self::error(destination, "download", key))?
            {
                output.write_all(&chunk)?;
                progress.advance(chunk.len() as u64);
            }
            Ok::<_, BackupError>(())
        })?;
        output.sync_all()?;
        Ok(())
    }

    pub(crate) fn get_bytes(&self, destination: &str, key: &str) -> Result<Vec<u8>, BackupError> {
        let path = self.path(key);
        let error = Self::error(destination, "download", key);
        self.runtime.block_on(async {
            let result = self.store.get(&path).await.map_err(error)?;
            let error = Self::error(destination, "download", key);
            Ok(result.bytes().await.map_err(error)?.to_vec())
        })
    }

    pub(crate) fn delete(&self, destination: &str, key: &str) -> Result<(), BackupError> {
        let path = self.path(key);
        self.runtime
            .block_on(self.store.delete(&path))
            .map_err(Self::error(destination, "deletion", key))
    }
}
