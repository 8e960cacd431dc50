//! Running a dump tool: arguments as a vector (no shell), stdout streamed into the bundle,
//! stderr kept for the error message.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use baluchon_bundle::{BundleWriter, PayloadFile};

use crate::error::CaptureError;

/// Enough of a tool's stderr to explain a failure.
const STDERR_KEEP: usize = 16 * 1024;

pub struct Tool {
    pub id: String,
    pub name: &'static str,
}

impl Tool {
    fn spawn(&self, command: &mut Command) -> Result<(Child, JoinHandle<String>), CaptureError> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CaptureError::Spawn {
                id: self.id.clone(),
                tool: self.name,
                source,
            })?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // Drained on its own thread: a tool blocked on a full stderr pipe would never
        // finish its stdout.
        let errors = std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > STDERR_KEEP {
                    kept.drain(..kept.len() - STDERR_KEEP);
                }
            }
            String::from_utf8_lossy(&kept).trim().to_owned()
        });
        Ok((child, errors))
    }

    fn finish(&self, mut child: Child, errors: JoinHandle<String>) -> Result<(), CaptureError> {
        let status = child.wait()?;
        let stderr = errors.join().unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(CaptureError::Tool {
                id: self.id.clone(),
                tool: self.name,
                status: status.to_string(),
                stderr: if stderr.is_empty() {
                    "(no message)".to_owned()
                } else {
                    stderr
                },
            })
        }
    }

    /// Runs the tool and returns its whole stdout (small outputs: queries).
    pub fn output(&self, command: &mut Command) -> Result<String, CaptureError> {
        let (mut child, errors) = self.spawn(command)?;
        let mut out = String::new();
        let read = child
            .stdout
            .take()
            .expect("stdout is piped")
            .read_to_string(&mut out);
        self.finish(child, errors)?;
        read?;
        Ok(out)
    }

    /// Runs the tool, streaming its stdout into payload file `name`, compressed.
    pub fn stream_into<'k>(
        &self,
        command: &mut Command,
        writer: BundleWriter<'k>,
        name: &str,
        media_type: &str,
    ) -> Result<(BundleWriter<'k>, PayloadFile), CaptureError> {
        let (mut child, errors) = self.spawn(command)?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let added = writer.add_payload(name, media_type, true, &mut stdout);
        drop(stdout);
        if added.is_err() {
            let _ = child.kill();
        }
        // The tool's own failure explains a short or broken stream best.
        self.finish(child, errors)?;
        Ok(added?)
    }
}

/// The options-file escaping of MariaDB and libpq password files differ; both callers
/// write values through this check first.
pub fn refuse_control_chars(id: &str, what: &str, value: &str) -> Result<(), CaptureError> {
    if value.chars().any(char::is_control) {
        return Err(CaptureError::Database {
            id: id.to_owned(),
            reason: format!("the {what} contains a control character"),
        });
    }
    Ok(())
}
