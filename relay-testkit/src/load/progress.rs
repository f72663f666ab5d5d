//! The live progress line: once a second on stderr, rewritten in place on a terminal and one line
//! per second otherwise (so logs of scripted runs stay readable). The modes say what goes in it.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running progress line; [`Progress::finish`] stops it.
pub struct Progress {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Calls `render(elapsed)` once a second and prints the line, if `enabled`.
    pub fn start(
        enabled: bool,
        mut render: impl FnMut(Duration) -> String + Send + 'static,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = enabled.then(|| {
            tokio::spawn(async move {
                let began = Instant::now();
                let tty = std::io::stderr().is_terminal();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await; // the first tick is immediate; nothing to say yet
                let mut printed = false;
                loop {
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => break,
                        _ = tick.tick() => {}
                    }
                    let line = render(began.elapsed());
                    let mut err = std::io::stderr().lock();
                    // Progress is best effort: a closed stderr must not end the run.
                    let _ = if tty {
                        write!(err, "\r\x1b[2K{line}")
                    } else {
                        writeln!(err, "{line}")
                    };
                    let _ = err.flush();
                    printed = true;
                }
                if tty && printed {
                    let _ = writeln!(std::io::stderr());
                }
            })
        });
        Self { stop, task }
    }

    pub async fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
