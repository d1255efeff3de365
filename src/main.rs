//! The `fcgihost` command line: parses arguments and calls the library.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fcgihost::config::{self, CliOverrides};

/// Hosts Python WSGI apps in supervised FastCGI workers, with remote debugging.
#[derive(Parser)]
#[command(name = "fcgihost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host (the built-in welcome app when no app is configured).
    Serve(HostArgs),
    /// Validate the config, show where each value comes from, and import the app once.
    Check(HostArgs),
    /// Ask a running host to re-read its config and replace its workers one by one (what
    /// SIGHUP does; works on Windows too). Needs `status_path`.
    Reload(HostArgs),
    /// Tunnel a local port to a server's /ptvsd debug proxy, for VS Code or Visual Studio.
    Attach(AttachArgs),
    /// Print the IIS web.config (HttpPlatformHandler) for an app, or write it with
    /// Web.Debug.config and Web.Release.config into a directory.
    WebConfig(WebConfigArgs),
    /// Convert a wfastcgi web.config to fcgihost, keeping every appSetting.
    Migrate(MigrateArgs),
}

/// `fcgihost web-config [--debug] [--app X] [--python PATH] [--out DIR] [--force]`.
#[derive(Args)]
struct WebConfigArgs {
    /// Also put a fresh debug secret into web.config itself (remote debugging on).
    #[arg(long)]
    debug: bool,
    /// The WSGI app (WSGI_HANDLER): `pkg.mod.app`, `pkg.mod:app` or `pkg.mod.create_app()`.
    #[arg(long)]
    app: Option<String>,
    /// Python interpreter on the server (passed to `fcgihost serve` as --python).
    #[arg(long)]
    python: Option<String>,
    /// Write web.config, Web.Debug.config and Web.Release.config into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite those files when they exist.
    #[arg(long, requires = "out")]
    force: bool,
}

/// `fcgihost migrate WEB_CONFIG [--write]`.
#[derive(Args)]
struct MigrateArgs {
    /// The wfastcgi-era web.config.
    web_config: PathBuf,
    /// Replace the file (the original goes to <file>.wfastcgi.bak) instead of printing.
    #[arg(long)]
    write: bool,
}

/// Runs `fcgihost web-config`.
fn web_config(args: WebConfigArgs) -> ExitCode {
    let options = fcgihost::iis::WebConfigOptions {
        app: args.app,
        python: args.python,
        debug: args.debug,
    };
    iis_exit(fcgihost::iis::web_config_command(
        &options,
        args.out.as_deref(),
        args.force,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ))
}

/// Runs `fcgihost migrate`.
fn migrate(args: MigrateArgs) -> ExitCode {
    iis_exit(fcgihost::iis::migrate_command(
        &args.web_config,
        args.write,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ))
}

/// The exit code of `web-config` and `migrate`, after printing their error.
fn iis_exit(result: Result<(), fcgihost::iis::IisError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fcgihost: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `fcgihost attach URL [--listen 127.0.0.1:5678] [--insecure]`.
#[derive(Args)]
struct AttachArgs {
    /// The server's debug endpoint: wss://SECRET@mysite.example.com/ptvsd (ws:// for plain HTTP).
    #[arg(env = "FCGIHOST_ATTACH_URL", hide_env_values = true)]
    url: String,
    /// Local address the debugger connects to.
    #[arg(long, default_value = "127.0.0.1:5678")]
    listen: std::net::SocketAddr,
    /// Skip TLS certificate verification (self-signed certificates).
    #[arg(long)]
    insecure: bool,
}

/// Runs `fcgihost attach` until Ctrl-C.
fn attach(args: AttachArgs) -> ExitCode {
    if let Err(err) = fcgihost::logging::init("info", None) {
        eprintln!("fcgihost: cannot set up logging: {err}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fcgihost: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let options = fcgihost::debug::attach::AttachOptions {
        url: args.url,
        listen: args.listen,
        insecure: args.insecure,
    };
    match runtime.block_on(fcgihost::debug::attach::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fcgihost attach: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Settings shared by `serve` and `check`; each overrides the environment and config files.
#[derive(Args)]
struct HostArgs {
    /// Config file (default: ./fcgihost.toml when present).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// The WSGI app: `pkg.mod:app`, `pkg.mod.app` or `pkg.mod.create_app()`.
    #[arg(long)]
    app: Option<String>,
    /// Directory of the app (working directory and first sys.path entry of workers).
    #[arg(long)]
    app_dir: Option<PathBuf>,
    /// Number of worker processes.
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// Address to listen on (default 127.0.0.1:8000, or %HTTP_PLATFORM_PORT%).
    #[arg(long, short = 'l')]
    listen: Option<String>,
    /// Also accept FastCGI (from nginx, Apache, lighttpd) on IP:PORT or a Unix socket path.
    #[arg(long, value_name = "ADDR")]
    fastcgi_listen: Option<String>,
    /// Python interpreter for workers (a virtualenv's python works).
    #[arg(long)]
    python: Option<String>,
    /// Pause-aware request timeout, e.g. "90s"; 0 disables.
    #[arg(long)]
    request_timeout: Option<String>,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long)]
    log_level: Option<String>,
}

impl HostArgs {
    fn overrides(self) -> CliOverrides {
        CliOverrides {
            config_file: self.config,
            app: self.app,
            app_dir: self.app_dir,
            python: self.python,
            listen: self.listen,
            fastcgi_listen: self.fastcgi_listen,
            workers: self.workers,
            request_timeout: self.request_timeout,
            log_level: self.log_level,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let (args, is_check) = match cli.command {
        Command::Serve(args) => (args, false),
        Command::Check(args) => (args, true),
        Command::Reload(args) => return reload(args, &env),
        Command::Attach(args) => return attach(args),
        Command::WebConfig(args) => return web_config(args),
        Command::Migrate(args) => return migrate(args),
    };
    let overrides = args.overrides();
    let loaded = match config::load(&overrides, &env) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("fcgihost: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) =
        fcgihost::logging::init(&loaded.config.log.level, loaded.config.log.file.as_deref())
    {
        eprintln!("fcgihost: cannot open the log file: {err}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fcgihost: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if is_check {
            fcgihost::serve::check(loaded).await
        } else {
            fcgihost::serve::serve(loaded, overrides).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fcgihost: {err}");
            match err {
                fcgihost::Error::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `fcgihost reload`: finds the running host from the same config and asks it to reload.
fn reload(args: HostArgs, env: &HashMap<String, String>) -> ExitCode {
    let loaded = match config::load(&args.overrides(), env) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("fcgihost: {err}");
            return ExitCode::from(2);
        }
    };
    match fcgihost::serve::request_reload(&loaded.config) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fcgihost: {err}");
            ExitCode::FAILURE
        }
    }
}
