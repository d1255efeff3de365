//! Remote debugging: the `/ptvsd` WebSocket proxy to each worker's debugpy, the DAP
//! monitor that tells the pool when a debugger holds a worker paused, the secret check,
//! the info page, and the `fcgihost attach` client.

pub mod attach;
pub mod auth;
pub mod dap;
pub mod info;
pub mod proxy;
