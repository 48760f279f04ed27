//! `slapos console [SCRIPT]`: a Rhai console bound to a master, in the
//! spirit of the reference's `slapos console` (a Python shell with
//! `request`, `supply` and the catalog's names as variables).
//!
//! Interactive on a terminal (rustyline: line editing, history in a file);
//! reads commands line by line when standard input is not a terminal; runs a
//! script file non-interactively when one is given.
//!
//! Rhai functions are synchronous: the session runs on a blocking thread and
//! drives the async client through the runtime's handle.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rhai::{Dynamic, Engine, EvalAltResult, Map, Position, Scope, AST};
use slapos_client::{ClientError, RequestSpec, RequestedInstance, SlapClient};
use tokio::runtime::Handle;

use crate::cmd::client::Session;

type RhaiResult<T> = std::result::Result<T, Box<EvalAltResult>>;

/// What `help()` prints.
const HELP: &str = "\
Variables: every catalog release and alias (hello, redis, mariadb, mysql, kvm, ...)
  and every alias of the configuration hold their URL; master_url.
Functions:
  request(software, reference [, params_map [, software_type [, options_map]]]) -> Instance
      options: #{ shared: bool, state: \"started\"|\"stopped\"|\"destroyed\", sla: #{ computer_guid: ... } }
  supply(software, computer)   remove(software, computer)   sleep(seconds)   print(value)
Instance:
  .reference  .software
  .getParameter(name)                 connection parameter, or () if not published
  .getConnectionParameter(name)       the same, an error if absent
  .getConnectionParameterDict()       .getInstanceParameterDict()
  .getState()  requested state        .getStatus()  reported state
  .waitParameter(name [, timeout_s])  waits until published (default 300 s)
  .start()  .stop()  .destroy()
Ctrl-C stops a running entry, Ctrl-D quits. See docs/console.md.";

/// How often `waitParameter` asks the master.
const POLL: Duration = Duration::from_secs(1);
/// `waitParameter(name)` without a timeout.
const DEFAULT_WAIT: f64 = 300.0;

/// What every binding shares: the client and the runtime to drive it.
struct Ctx {
    client: SlapClient,
    runtime: Handle,
    /// Set by Ctrl-C while an entry runs (interactive mode): the entry stops.
    interrupted: Arc<AtomicBool>,
}

const INTERRUPTED: &str = "interrupted (Ctrl-C)";

impl Ctx {
    /// Runs a call of the client, unless Ctrl-C comes first.
    fn block_on<F: std::future::Future>(&self, future: F) -> RhaiResult<F::Output> {
        let flag = self.interrupted.clone();
        self.runtime.block_on(async move {
            let interrupted = async {
                while !flag.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                value = future => Ok(value),
                _ = interrupted => Err(rt_error(INTERRUPTED)),
            }
        })
    }

    /// Sleeps, unless Ctrl-C comes first.
    fn pause(&self, duration: Duration) -> RhaiResult<()> {
        let deadline = Instant::now() + duration;
        loop {
            if self.interrupted.load(Ordering::Relaxed) {
                return Err(rt_error(INTERRUPTED));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

/// An instance requested from the console (Rhai type `Instance`).
#[derive(Clone)]
pub struct Instance {
    ctx: Arc<Ctx>,
    spec: RequestSpec,
    /// The master's answer to the last request (empty while provisioning).
    answer: RequestedInstance,
}

/// What the master knows of an instance now.
#[derive(Default)]
struct Snapshot {
    connection: BTreeMap<String, Option<String>>,
    parameters: BTreeMap<String, Option<String>>,
    requested_state: Option<String>,
    reported_state: Option<String>,
    status_message: Option<String>,
    /// False when the master has no JSON API (the reference): no reported state.
    from_api: bool,
}

fn rt_error(message: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    ))
}

/// A master without `/api/v1` (the reference) answers its paths with a 404
/// page (HTML, "requested URL was not found"), or something not JSON; ours
/// answers an unknown title with "No instance titled ...".
fn no_json_api(e: &ClientError) -> bool {
    match e {
        ClientError::NotFound(m) => !m.contains("No instance titled"),
        ClientError::BadAnswer(_) => true,
        _ => false,
    }
}

fn json_strings(v: &serde_json::Value) -> BTreeMap<String, Option<String>> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let value = match v {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    };
                    (k.clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn to_map(m: &BTreeMap<String, Option<String>>) -> Map {
    m.iter()
        .map(|(k, v)| {
            let value = v.clone().map(Dynamic::from).unwrap_or(Dynamic::UNIT);
            (k.as_str().into(), value)
        })
        .collect()
}

/// Rhai values as the string parameters of the SLAP protocol: maps as JSON.
fn to_strings(map: &Map) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| {
            let value = if let Some(m) = v.read_lock::<Map>() {
                rhai::format_map_as_json(&m)
            } else {
                v.to_string()
            };
            (k.to_string(), value)
        })
        .collect()
}

impl Instance {
    fn request(ctx: Arc<Ctx>, spec: RequestSpec) -> RhaiResult<Instance> {
        let answer = ctx.block_on(ctx.client.request(&spec))?;
        let answer = match answer {
            Ok(a) => a,
            // Accepted, not allocated yet: the reference's client answers the same way.
            Err(ClientError::NotReady) => RequestedInstance::default(),
            Err(e) => return Err(rt_error(format!("request of {:?}: {e}", spec.title))),
        };
        Ok(Instance { ctx, spec, answer })
    }

    /// Asks the JSON API; on a master without one, requests again (idempotent).
    fn snapshot(&mut self) -> RhaiResult<Snapshot> {
        match self
            .ctx
            .block_on(self.ctx.client.instance_by_title(&self.spec.title))?
        {
            Ok(info) => {
                let text = |k: &str| info[k].as_str().map(str::to_string);
                Ok(Snapshot {
                    connection: json_strings(&info["connection_parameters"]),
                    parameters: json_strings(&info["parameters"]),
                    requested_state: text("requested_state"),
                    reported_state: text("reported_state"),
                    status_message: text("status_message"),
                    from_api: true,
                })
            }
            Err(ClientError::NotFound(m)) if m.contains("No instance titled") => Ok(Snapshot {
                from_api: true,
                ..Snapshot::default()
            }),
            Err(e) if no_json_api(&e) => {
                let again = Instance::request(self.ctx.clone(), self.spec.clone())?;
                self.answer = again.answer;
                Ok(Snapshot {
                    connection: self.answer.connection_parameters.clone(),
                    parameters: self.answer.parameters.clone(),
                    requested_state: self.answer.state.clone(),
                    ..Snapshot::default()
                })
            }
            Err(e) => Err(rt_error(format!("{:?}: {e}", self.spec.title))),
        }
    }

    fn parameter(&mut self, name: &str) -> RhaiResult<Option<String>> {
        Ok(self.snapshot()?.connection.get(name).cloned().flatten())
    }

    fn set_state(&mut self, state: &str) -> RhaiResult<()> {
        let mut spec = self.spec.clone();
        spec.state = Some(state.to_string());
        let again = Instance::request(self.ctx.clone(), spec)?;
        *self = again;
        Ok(())
    }

    fn wait_parameter(&mut self, name: &str, timeout: f64) -> RhaiResult<String> {
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0))
            .map_err(|e| rt_error(format!("waitParameter: bad timeout: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            let snapshot = self.snapshot()?;
            if let Some(Some(value)) = snapshot.connection.get(name) {
                if !value.is_empty() {
                    return Ok(value.clone());
                }
            }
            if Instant::now() >= deadline {
                let mut why = format!(
                    "{:?} did not publish the connection parameter {name:?} within {}s",
                    self.spec.title,
                    timeout.as_secs_f64()
                );
                if let Some(state) = snapshot.reported_state {
                    why.push_str(&format!(" (reported state: {state}"));
                    if let Some(m) = snapshot.status_message.filter(|m| !m.is_empty()) {
                        why.push_str(&format!(": {m}"));
                    }
                    why.push(')');
                }
                let published: Vec<&String> = snapshot.connection.keys().collect();
                if !published.is_empty() {
                    why.push_str(&format!("; published: {published:?}"));
                }
                return Err(rt_error(why));
            }
            self.ctx
                .pause(POLL.min(deadline.saturating_duration_since(Instant::now())))?;
        }
    }

    fn describe(&self) -> String {
        let state = self.spec.state.as_deref().unwrap_or("started");
        format!(
            "Instance({:?}, {}, {state})",
            self.spec.title, self.spec.software_release
        )
    }
}

fn number(v: &Dynamic, what: &str) -> RhaiResult<f64> {
    if let Ok(i) = v.as_int() {
        return Ok(i as f64);
    }
    v.as_float()
        .map_err(|t| rt_error(format!("{what}: expected a number of seconds, not {t}")))
}

/// `request(software, reference, params, type, options)`: options `shared`,
/// `state`, `sla` (a map of placement constraints).
fn apply_options(spec: &mut RequestSpec, options: &Map) -> RhaiResult<()> {
    for (key, value) in options {
        match key.as_str() {
            "shared" | "slave" => {
                spec.shared = value
                    .as_bool()
                    .map_err(|t| rt_error(format!("request: option {key} is a bool, not {t}")))?
            }
            "state" => spec.state = Some(value.to_string()),
            "sla" | "filter" | "node" => {
                let map = value.read_lock::<Map>().ok_or_else(|| {
                    rt_error(format!("request: option {key} is a map of constraints"))
                })?;
                spec.sla = to_strings(&map);
            }
            other => {
                return Err(rt_error(format!(
                    "request: unknown option {other:?} (shared, state, sla)"
                )))
            }
        }
    }
    Ok(())
}

fn build_engine(ctx: Arc<Ctx>, aliases: Arc<BTreeMap<String, String>>) -> Engine {
    let mut engine = Engine::new();
    engine.register_type_with_name::<Instance>("Instance");

    let resolve = move |software: &str| -> String {
        aliases
            .get(software.strip_prefix("product.").unwrap_or(software))
            .cloned()
            .unwrap_or_else(|| software.to_string())
    };
    let supply_resolve = resolve.clone();
    let requester = {
        let ctx = ctx.clone();
        move |software: &str,
              reference: &str,
              params: Option<Map>,
              software_type: Option<String>,
              options: Option<Map>|
              -> RhaiResult<Instance> {
            let mut spec = RequestSpec {
                software_release: resolve(software),
                title: reference.to_string(),
                software_type: software_type.filter(|t| !t.is_empty()),
                parameters: params.as_ref().map(to_strings).unwrap_or_default(),
                ..RequestSpec::default()
            };
            if let Some(options) = &options {
                apply_options(&mut spec, options)?;
            }
            Instance::request(ctx.clone(), spec)
        }
    };
    let r = requester.clone();
    engine.register_fn("request", move |s: &str, t: &str| r(s, t, None, None, None));
    let r = requester.clone();
    engine.register_fn("request", move |s: &str, t: &str, p: Map| {
        r(s, t, Some(p), None, None)
    });
    let r = requester.clone();
    engine.register_fn("request", move |s: &str, t: &str, p: Map, ty: &str| {
        r(s, t, Some(p), Some(ty.to_string()), None)
    });
    let r = requester;
    engine.register_fn(
        "request",
        move |s: &str, t: &str, p: Map, ty: &str, o: Map| {
            r(s, t, Some(p), Some(ty.to_string()), Some(o))
        },
    );

    for (name, state) in [("supply", "available"), ("remove", "destroyed")] {
        let ctx = ctx.clone();
        let resolve = supply_resolve.clone();
        engine.register_fn(
            name,
            move |software: &str, computer: &str| -> RhaiResult<()> {
                let url = resolve(software);
                let url = url.as_str();
                ctx.block_on(ctx.client.supply(url, computer, state))?
                    .map_err(|e| rt_error(format!("{name} of {url} on {computer}: {e}")))
            },
        );
    }
    engine.register_fn("help", || println!("{HELP}"));
    // Rhai's own `sleep(INT|FLOAT)` would not stop on Ctrl-C: these take precedence.
    let sleeper = ctx.clone();
    let sleep = move |seconds: f64| sleeper.pause(Duration::from_secs_f64(seconds.clamp(0.0, 1e9)));
    let s = sleep.clone();
    engine.register_fn("sleep", move |seconds: rhai::INT| s(seconds as f64));
    let s = sleep.clone();
    engine.register_fn("sleep", move |seconds: rhai::FLOAT| s(seconds));
    engine.register_fn("sleep", move |seconds: Dynamic| -> RhaiResult<()> {
        sleep(number(&seconds, "sleep")?)
    });
    let flag = ctx.interrupted.clone();
    engine.on_progress(move |_| {
        flag.load(Ordering::Relaxed)
            .then(|| Dynamic::from(INTERRUPTED.to_string()))
    });

    engine
        .register_get("reference", |i: &mut Instance| i.spec.title.clone())
        .register_get("title", |i: &mut Instance| i.spec.title.clone())
        .register_get("software", |i: &mut Instance| {
            i.spec.software_release.clone()
        })
        .register_fn("getParameter", |i: &mut Instance, name: &str| {
            Ok::<_, Box<EvalAltResult>>(
                i.parameter(name)?
                    .map(Dynamic::from)
                    .unwrap_or(Dynamic::UNIT),
            )
        })
        .register_fn(
            "getConnectionParameter",
            |i: &mut Instance, name: &str| -> RhaiResult<String> {
                i.parameter(name)?.ok_or_else(|| {
                    rt_error(format!(
                        "{:?} has no connection parameter {name:?} (yet?)",
                        i.spec.title
                    ))
                })
            },
        )
        .register_fn(
            "getConnectionParameterDict",
            |i: &mut Instance| -> RhaiResult<Map> { Ok(to_map(&i.snapshot()?.connection)) },
        )
        .register_fn(
            "getInstanceParameterDict",
            |i: &mut Instance| -> RhaiResult<Map> {
                let snapshot = i.snapshot()?;
                if snapshot.from_api {
                    Ok(to_map(&snapshot.parameters))
                } else {
                    Ok(to_map(
                        &i.spec
                            .parameters
                            .iter()
                            .map(|(k, v)| (k.clone(), Some(v.clone())))
                            .collect(),
                    ))
                }
            },
        )
        .register_fn("getState", |i: &mut Instance| -> RhaiResult<String> {
            let snapshot = i.snapshot()?;
            Ok(snapshot
                .requested_state
                .or_else(|| i.spec.state.clone())
                .unwrap_or_else(|| "started".into()))
        })
        .register_fn("getStatus", |i: &mut Instance| -> RhaiResult<Dynamic> {
            let snapshot = i.snapshot()?;
            if !snapshot.from_api {
                return Err(rt_error(
                    "getStatus: this master has no JSON API (needs a slapos-rs master)",
                ));
            }
            Ok(snapshot
                .reported_state
                .map(Dynamic::from)
                .unwrap_or(Dynamic::UNIT))
        })
        .register_fn("destroy", |i: &mut Instance| i.set_state("destroyed"))
        .register_fn("stop", |i: &mut Instance| i.set_state("stopped"))
        .register_fn("start", |i: &mut Instance| i.set_state("started"))
        .register_fn("waitParameter", |i: &mut Instance, name: &str| {
            i.wait_parameter(name, DEFAULT_WAIT)
        })
        .register_fn(
            "waitParameter",
            |i: &mut Instance, name: &str, timeout: Dynamic| -> RhaiResult<String> {
                let t = number(&timeout, "waitParameter")?;
                i.wait_parameter(name, t)
            },
        )
        .register_fn("to_string", |i: &mut Instance| i.describe())
        .register_fn("to_debug", |i: &mut Instance| i.describe());
    engine
}

/// Catalog names and aliases bound to their URLs: those of the configuration
/// (`[slapconsole] alias`, `[slapproxy] software_product_list`, as written
/// by `slapos up`) first, else where `slapos up` keeps the catalog by default.
fn software_names(session: &Session) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let catalog = crate::cmd::up::default_data_dir().join("catalog");
    let default_url = |name: &str| {
        let path = catalog.join(name).join("software.toml");
        format!(
            "file://{}",
            std::path::absolute(&path).unwrap_or(path).display()
        )
    };
    for r in slapos_catalog::RELEASES {
        names.insert(r.name.to_string(), default_url(r.name));
    }
    for (alias, name) in slapos_catalog::ALIASES {
        names.insert(alias.to_string(), default_url(name));
    }
    for (alias, url) in session.config.aliases() {
        names.insert(alias, url);
    }
    names
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An error of the script with where it happened (1-based line and column).
struct Failure {
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

impl Failure {
    fn of(mut err: EvalAltResult) -> Failure {
        let position = err.take_position();
        let message = match &err {
            // `throw "..."` and the bindings' errors: the text alone.
            EvalAltResult::ErrorRuntime(value, _) if value.is_string() => value.to_string(),
            // Stopped by `on_progress` (Ctrl-C): its reason.
            EvalAltResult::ErrorTerminated(value, _) if value.is_string() => value.to_string(),
            _ => err.to_string(),
        };
        Failure {
            line: position.line(),
            column: position.position(),
            message,
        }
    }

    /// For the interactive console: `column C: message` for one line.
    fn here(&self, multiline: bool) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) if multiline => format!("line {l}, column {c}: {}", self.message),
            (_, Some(c)) => format!("column {c}: {}", self.message),
            _ => self.message.clone(),
        }
    }

    /// `origin:line:column: message`, the line counted from `first_line`.
    fn at(&self, origin: &str, first_line: usize) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{origin}:{}:{c}: {}", l + first_line - 1, self.message),
            (Some(l), None) => format!("{origin}:{}: {}", l + first_line - 1, self.message),
            _ => format!("{origin}: {}", self.message),
        }
    }
}

struct Console {
    engine: Engine,
    scope: Scope<'static>,
    /// Functions defined so far (interactive mode keeps them across lines).
    functions: AST,
    interrupted: Arc<AtomicBool>,
}

impl Console {
    fn new(session: &Session, runtime: Handle, interrupted: Arc<AtomicBool>) -> Console {
        let ctx = Arc::new(Ctx {
            client: session.client.clone(),
            runtime,
            interrupted: interrupted.clone(),
        });
        let names = software_names(session);
        let mut scope = Scope::new();
        for (name, url) in &names {
            if is_identifier(name) {
                scope.push_constant(name.as_str(), url.clone());
            }
        }
        scope.push_constant("master_url", session.client.master_url().to_string());
        Console {
            engine: build_engine(ctx, Arc::new(names)),
            scope,
            functions: AST::empty(),
            interrupted,
        }
    }

    fn run_script(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let origin = path.display().to_string();
        let ast = self
            .engine
            .compile_with_scope(&self.scope, &text)
            .map_err(|e| anyhow::anyhow!(Failure::of(e.into()).at(&origin, 1)))?;
        self.engine
            .run_ast_with_scope(&mut self.scope, &ast)
            .map_err(|e| anyhow::anyhow!(Failure::of(*e).at(&origin, 1)))
    }

    /// Evaluates one entry, keeping its variables and functions for the next.
    fn eval(&mut self, input: &str) -> std::result::Result<Dynamic, Failure> {
        self.interrupted.store(false, Ordering::Relaxed);
        let ast = self
            .engine
            .compile_with_scope(&self.scope, input)
            .map_err(|e| Failure::of(e.into()))?;
        let merged = self.functions.merge(&ast);
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut self.scope, &merged);
        let mut kept = merged;
        kept.clear_statements();
        self.functions = kept;
        result.map_err(|e| Failure::of(*e))
    }

    /// Adds `line` to the entry being typed; the whole entry once it is
    /// complete and not blank (the buffer is then empty again).
    fn complete_entry(&self, buffer: &mut String, line: &str) -> Option<String> {
        join_continuation(buffer, line);
        if self.needs_more(buffer) {
            return None;
        }
        let input = std::mem::take(buffer);
        (!input.trim().is_empty()).then_some(input)
    }

    /// True when `input` cannot be complete yet: unclosed brackets, a
    /// trailing `\\`, or a parser that hit the end too early (`let x = 1 +`).
    fn needs_more(&self, input: &str) -> bool {
        incomplete(input)
            || matches!(
                self.engine.compile_with_scope(&self.scope, input),
                Err(e) if matches!(*e.0, rhai::ParseErrorType::UnexpectedEOF)
            )
    }

    fn show(&self, value: &Dynamic) {
        if value.is_unit() {
            return;
        }
        if let Some(instance) = value.read_lock::<Instance>() {
            println!("{}", instance.describe());
        } else {
            println!("{value:?}");
        }
    }
}

/// True while brackets opened in `text` are not closed (outside strings).
fn incomplete(text: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '`' | '\'' => quote = Some(c),
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            _ => {}
        }
    }
    depth > 0 || text.trim_end().ends_with('\\')
}

fn join_continuation(buffer: &mut String, line: &str) {
    if buffer.trim_end().ends_with('\\') {
        let trimmed = buffer.trim_end().trim_end_matches('\\').to_string();
        *buffer = trimmed;
    }
    if !buffer.is_empty() {
        buffer.push('\n');
    }
    buffer.push_str(line);
}

/// `$SLAPOS_CONSOLE_HISTORY`, else `$XDG_STATE_HOME/slapos/console_history`,
/// else `~/.local/state/slapos/console_history`.
fn history_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLAPOS_CONSOLE_HISTORY").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("slapos").join("console_history"))
}

fn interactive(console: &mut Console) -> Result<i32> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new().context("cannot set up line editing")?;
    let history = history_file();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "slapos console on {} (Rhai). help() lists the functions; Ctrl-D quits.",
        console.engine_master()
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { ">>> " } else { "... " };
        match editor.readline(prompt) {
            Ok(line) => {
                let Some(input) = console.complete_entry(&mut buffer, &line) else {
                    continue;
                };
                let _ = editor.add_history_entry(input.as_str());
                // Saved at once: a console killed later keeps its history.
                if let Some(h) = &history {
                    if let Some(dir) = h.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    if let Err(e) = editor.save_history(h) {
                        eprintln!("warning: cannot save the history to {}: {e}", h.display());
                    }
                }
                match console.eval(&input) {
                    Ok(value) => console.show(&value),
                    Err(failure) => eprintln!("error: {}", failure.here(input.contains('\n'))),
                }
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                println!("(Ctrl-D quits)");
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("cannot read the console's input"),
        }
    }
    Ok(0)
}

/// Standard input that is not a terminal: entries line by line, no prompt;
/// errors are reported and reading goes on; exit code 1 if any failed.
fn piped(console: &mut Console) -> Result<i32> {
    let stdin = std::io::stdin();
    let mut buffer = String::new();
    let mut failed = false;
    let mut line_no = 0usize;
    let mut start = 1usize;
    for line in stdin.lock().lines() {
        let line = line.context("cannot read standard input")?;
        line_no += 1;
        if buffer.is_empty() {
            start = line_no;
        }
        let Some(input) = console.complete_entry(&mut buffer, &line) else {
            continue;
        };
        match console.eval(&input) {
            Ok(value) => console.show(&value),
            Err(failure) => {
                failed = true;
                eprintln!("error: {}", failure.at("stdin", start));
            }
        }
    }
    if !buffer.trim().is_empty() {
        match console.eval(&buffer) {
            Ok(value) => console.show(&value),
            Err(failure) => {
                failed = true;
                eprintln!("error: {}", failure.at("stdin", start));
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

impl Console {
    fn engine_master(&self) -> String {
        self.scope
            .get_value::<String>("master_url")
            .unwrap_or_default()
    }
}

/// `slapos console [--cfg FILE] [SCRIPT]`.
pub async fn run(cfg: Option<PathBuf>, script: Option<PathBuf>) -> Result<i32> {
    let session = Session::open(cfg.as_deref())?;
    let runtime = Handle::current();
    let interactive_mode = script.is_none() && std::io::stdin().is_terminal();
    let interrupted = Arc::new(AtomicBool::new(false));
    if interactive_mode {
        // Ctrl-C stops the running entry, not the console (at the prompt,
        // rustyline reads it as a key).
        // Registered before rustyline's own handler, which it restores after each line.
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot handle Ctrl-C")?;
        let flag = interrupted.clone();
        tokio::spawn(async move {
            while sigint.recv().await.is_some() {
                flag.store(true, Ordering::Relaxed);
            }
        });
    }
    tokio::task::spawn_blocking(move || {
        let mut console = Console::new(&session, runtime, interrupted);
        match script {
            Some(path) => console.run_script(&path).map(|_| 0),
            None if interactive_mode => interactive(&mut console),
            None => piped(&mut console),
        }
    })
    .await
    .context("the console stopped abnormally")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_and_backslashes_continue_an_entry() {
        assert!(incomplete("fn f() {"));
        assert!(incomplete("let x = [1,"));
        assert!(!incomplete("let s = \"{\";"));
        assert!(!incomplete("request(hello, \"h\")"));
        assert!(incomplete("let a = 1 + \\"));
        let mut b = String::from("let a = 1 + \\");
        join_continuation(&mut b, "2;");
        assert_eq!(b, "let a = 1 + \n2;");
    }

    #[test]
    fn which_errors_mean_a_master_without_json_api() {
        assert!(no_json_api(&ClientError::NotFound(
            "<!doctype html>".into()
        )));
        assert!(no_json_api(&ClientError::NotFound(
            "The requested URL was not found on the server.".into()
        )));
        assert!(no_json_api(&ClientError::BadAnswer("not JSON".into())));
        assert!(!no_json_api(&ClientError::NotFound(
            "No instance titled \"x\"".into()
        )));
        assert!(!no_json_api(&ClientError::NotReady));
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("kvm"));
        assert!(is_identifier("my_db2"));
        assert!(!is_identifier("my-db"));
        assert!(!is_identifier("2db"));
    }

    #[test]
    fn parameters_become_strings() {
        let mut inner = Map::new();
        inner.insert("a".into(), Dynamic::from(1_i64));
        let mut m = Map::new();
        m.insert("size".into(), Dynamic::from(3_i64));
        m.insert("name".into(), Dynamic::from("x".to_string()));
        m.insert("ok".into(), Dynamic::from(true));
        m.insert("nested".into(), Dynamic::from(inner));
        let s = to_strings(&m);
        assert_eq!(s["size"], "3");
        assert_eq!(s["name"], "x");
        assert_eq!(s["ok"], "true");
        assert_eq!(s["nested"], "{\"a\":1}");
    }
}
