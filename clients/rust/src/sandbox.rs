//! Running code in the sandbox: output as the guest writes it, then how the run ended.

use bytes::Bytes;
use futures::StreamExt;
use llmesh_proto::sandbox::v1 as pb;
use pb::run_response::Event;

use crate::Client;
use crate::error::{Code, Error, Result};

/// One piece of a run's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Written to standard output.
    Stdout(Bytes),
    /// Written to standard error.
    Stderr(Bytes),
}

/// A run under way: [`Run::next_output`] until `None`, then [`Run::exit`]. Dropping it
/// hangs up, which stops the guest.
pub struct Run {
    stream: tonic::Streaming<pb::RunResponse>,
    exit: Option<pb::RunExit>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("exit", &self.exit).finish()
    }
}

/// What a whole run wrote, and how it ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Everything written to standard output.
    pub stdout: Vec<u8>,
    /// Everything written to standard error.
    pub stderr: Vec<u8>,
    /// How the run ended.
    pub exit: pb::RunExit,
}

impl Finished {
    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Whether the guest exited by itself with code 0.
    pub fn succeeded(&self) -> bool {
        self.exit.status == pb::RunStatus::Exited as i32 && self.exit.exit_code == 0
    }
}

impl Run {
    /// The next piece of output; `None` once the run has ended (then [`Run::exit`] is set).
    pub async fn next_output(&mut self) -> Option<Result<Output>> {
        loop {
            let response = match self.stream.next().await? {
                Ok(r) => r,
                Err(status) => return Some(Err(status.into())),
            };
            match response.event {
                Some(Event::Stdout(b)) => return Some(Ok(Output::Stdout(b.into()))),
                Some(Event::Stderr(b)) => return Some(Ok(Output::Stderr(b.into()))),
                Some(Event::Exit(exit)) => self.exit = Some(exit),
                None => {}
            }
        }
    }

    /// How the run ended (status, exit code, fuel, memory, time, cost), once it has.
    pub fn exit(&self) -> Option<&pb::RunExit> {
        self.exit.as_ref()
    }

    /// Reads the run to its end.
    pub async fn finish(mut self) -> Result<Finished> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(output) = self.next_output().await {
            match output? {
                Output::Stdout(b) => stdout.extend_from_slice(&b),
                Output::Stderr(b) => stderr.extend_from_slice(&b),
            }
        }
        let exit = self
            .exit
            .ok_or_else(|| Error::local(Code::Internal, "the run ended without its exit"))?;
        Ok(Finished {
            stdout,
            stderr,
            exit,
        })
    }
}

impl Client {
    /// Runs Python source with the default limits.
    pub async fn run_python(&self, code: &str) -> Result<Run> {
        self.run(pb::RunRequest {
            runtime: "python".into(),
            code: code.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// Runs code with every field of the request (a WASI module, args, stdin, limits,
    /// persist).
    pub async fn run(&self, request: pb::RunRequest) -> Result<Run> {
        let stream = self.sandbox().run(request).await?.into_inner();
        Ok(Run { stream, exit: None })
    }
}
