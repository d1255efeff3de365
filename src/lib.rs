//! fcgihost: hosts Python WSGI apps in supervised FastCGI worker processes behind a
//! hyper front door, with a built-in remote-debugging proxy whose DAP monitor stops the
//! request clock while a debugger holds a worker.
//!
//! Module map (one concern each):
//! - [`config`]: layered settings (CLI > env > fcgihost.toml > web.config > defaults).
//! - [`front`]: the HTTP listener and request routing.
//! - [`gateway`]: HTTP ⇄ CGI/FastCGI mapping, no I/O.
//! - [`pool`]: worker processes, their supervision, and request dispatch.
//! - [`debug`]: the `/ptvsd` proxy, DAP monitor, auth, info page, attach client.
//! - [`deadline`]: the pause-aware request clock.
//! - [`serve`]: wires the above together for `fcgihost serve` and `fcgihost check`.
//! - [`systemd`]: sd_notify readiness and socket activation.
//! - [`iis`]: `fcgihost web-config` and `fcgihost migrate` (IIS web.config files).

pub mod config;
pub mod deadline;
pub mod debug;
pub mod error;
pub mod front;
pub mod gateway;
pub mod iis;
pub mod logging;
pub mod pages;
pub mod pool;
pub mod serve;
pub mod systemd;

pub use error::Error;
