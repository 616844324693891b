//! fm-bench: how fast and lean the host is, measured side by side with
//! lapin consumers (naive, hand-tuned, auto-ack) and with the Python
//! fedora-messaging, on the local RabbitMQ. `scripts/bench` builds what it
//! needs and runs it; see docs/benchmarks.md.
//!
//! - `throughput`: for each prefetch, fill a durable queue with N messages
//!   in fedora-messaging's wire format and drain it with each contender in
//!   turn (A B C A B C …); report median messages/s (from each one's
//!   first delivery to its last settlement), CPU per message, peak RSS and
//!   the ratios; write a CSV, a Markdown table and a PNG chart.
//! - `workers`: a consumer that sleeps per message, one worker against
//!   many.
//! - `bridge`: the Python bridge (1 and 2 workers) against Python
//!   fedora-messaging's CLI on the same callback, and the bridge's
//!   overhead per message beyond the time spent in Python.
//! - `memory`: RSS while draining a long queue, early against late.
//! - `startup`: from the broker accepting the connection to the first
//!   message reaching the consumer.
//! - `traces`: ours with traces off, on and sampled, and on but not
//!   sampled, side by side, exporting to a sink that takes every span.
//! - `fill`: only fill the queue and write the host's configuration, to
//!   run it by hand under a profiler (see docs/benchmarks.md).

mod broker;
mod chart;
mod contender;
mod measure;
mod sink;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::broker::Broker;
use crate::contender::{Contender, Programs, Settings};
use crate::measure::{Measured, measure, median, status_kib};

#[derive(Parser)]
#[command(about = "Benchmarks the host against bare lapin and Python fedora-messaging")]
struct Cli {
    /// Where results, configurations and logs go
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,

    /// The Python fedora-messaging command (its virtual environment's
    /// bin/fedora-messaging); without it Python does not take part
    #[arg(long)]
    python: Option<PathBuf>,

    /// The Python callback file
    #[arg(long, default_value = "bench/python_consumer.py")]
    python_consumer: PathBuf,

    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Messages per second, CPU and peak memory: ours, lapin, Python
    Throughput {
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, value_delimiter = ',', default_value = "25,1000")]
        prefetch: Vec<u16>,
    },
    /// A consumer sleeping per message: one worker against --workers
    Workers {
        #[arg(long, default_value_t = 1000)]
        messages: u64,
        #[arg(long, default_value_t = 16)]
        workers: usize,
        #[arg(long, default_value_t = 10)]
        sleep_ms: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The Python bridge against Python fedora-messaging's CLI on the same
    /// callback: 1 and 2 workers, each prefetch, and the bridge's
    /// overhead per message beyond the time spent in Python
    Bridge {
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, value_delimiter = ',', default_value = "25,1000")]
        prefetch: Vec<u16>,
    },
    /// RSS while draining --messages, sampled as the queue empties
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 25)]
        prefetch: u16,
    },
    /// Ours with traces off, on (sampled) and on (not sampled), side by
    /// side, exporting to a local sink
    Traces {
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, value_delimiter = ',', default_value = "25,1000")]
        prefetch: Vec<u16>,
    },
    /// From the broker accepting the connection to the first message
    Startup {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Only empty the queue and fill it with --messages, and write the
    /// host's configuration, for a run by hand (under a profiler)
    Fill {
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        prefetch: u16,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(&cli) {
        eprintln!("fm-bench: {error}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;
    let programs = Programs {
        bin_dir: contender::bin_dir()?,
        python: cli.python.clone(),
        python_consumer: std::fs::canonicalize(&cli.python_consumer)
            .map_err(|e| format!("{}: {e}", cli.python_consumer.display()))?,
        work_dir: cli.out.clone(),
    };
    let broker = Broker::connect().map_err(|e| format!("cannot reach the local broker: {e}"))?;
    match &cli.mode {
        Mode::Throughput {
            messages,
            rounds,
            prefetch,
        } => throughput(&programs, &broker, *messages, *rounds, prefetch),
        Mode::Workers {
            messages,
            workers,
            sleep_ms,
            rounds,
        } => compare_workers(&programs, &broker, *messages, *workers, *sleep_ms, *rounds),
        Mode::Bridge {
            messages,
            rounds,
            prefetch,
        } => bridge(&programs, &broker, *messages, *rounds, prefetch),
        Mode::Memory { messages, prefetch } => memory(&programs, &broker, *messages, *prefetch),
        Mode::Startup { runs } => startup(&programs, &broker, *runs),
        Mode::Traces {
            messages,
            rounds,
            prefetch,
        } => traces(&programs, &broker, *messages, *rounds, prefetch),
        Mode::Fill { messages, prefetch } => {
            broker.fill(*messages)?;
            let settings = Settings {
                prefetch: *prefetch,
                messages: *messages,
                workers: 1,
                sleep_ms: 0,
            };
            let command = programs.command(Contender::Ours, &settings)?;
            println!("{messages} messages queued; the host's command: {command:?}");
            Ok(())
        }
    }
}

/// Long enough for the slowest contender (Python, ~300 messages/s).
fn deadline(messages: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_secs_f64(messages as f64 / 50.0)
}

/// Fills the queue, runs `contender`, and checks that it drained it.
fn one_run(
    programs: &Programs,
    broker: &Broker,
    contender: Contender,
    settings: &Settings,
    label: &str,
) -> Result<Measured, String> {
    let command = programs.command(contender, settings)?;
    run_measured(programs, broker, command, settings, label)
}

/// Fills the queue, runs `command`, and checks that it drained it.
fn run_measured(
    programs: &Programs,
    broker: &Broker,
    mut command: std::process::Command,
    settings: &Settings,
    label: &str,
) -> Result<Measured, String> {
    broker.fill(settings.messages)?;
    let measured = measure(
        &mut command,
        &programs.log(label),
        deadline(settings.messages),
    )?;
    let left = broker.depth()?;
    if left != 0 {
        return Err(format!(
            "{label}: {left} messages left in the queue; see {}",
            programs.log(label).display()
        ));
    }
    println!(
        "{label:<28} {:>9.0} msgs/s {:>7.3} CPU s/1000 {:>7.1} MiB",
        settings.messages as f64 / measured.active_seconds,
        cpu_per_thousand(&measured, settings.messages),
        measured.peak_rss_kib as f64 / 1024.0
    );
    Ok(measured)
}

fn throughput(
    programs: &Programs,
    broker: &Broker,
    messages: u64,
    rounds: usize,
    prefetches: &[u16],
) -> Result<(), String> {
    let mut contenders = vec![
        Contender::Ours,
        Contender::LapinMultiple,
        Contender::LapinThread,
        Contender::LapinEach,
        Contender::LapinAuto,
    ];
    if programs.python.is_some() {
        contenders.push(Contender::Python);
        contenders.push(Contender::PythonBridge);
    } else {
        println!("(no --python: Python fedora-messaging does not take part)");
    }
    let mut csv = String::from(
        "prefetch,round,contender,messages,wall_seconds,active_seconds,msgs_per_s,cpu_s_per_1000,peak_rss_kib\n",
    );
    let mut bars = Vec::new();
    let mut python_ratios = String::new();
    let mut table = String::from(
        "| prefetch | contender | median msgs/s | ours / it | median CPU s per 1,000 msgs | median peak RSS (MiB) |\n|---|---|---|---|---|---|\n",
    );
    for &prefetch in prefetches {
        let settings = Settings {
            prefetch,
            messages,
            workers: 1,
            sleep_ms: 0,
        };
        let mut results: Vec<(Contender, Vec<Measured>)> =
            contenders.iter().map(|c| (*c, Vec::new())).collect();
        for round in 1..=rounds {
            for (contender, measured) in &mut results {
                let label = format!("{}-p{prefetch}-r{round}", contender.name());
                let run = one_run(programs, broker, *contender, &settings, &label)?;
                let _ = writeln!(
                    csv,
                    "{prefetch},{round},{},{messages},{:.4},{:.4},{:.1},{:.4},{}",
                    contender.name(),
                    run.seconds,
                    run.active_seconds,
                    messages as f64 / run.active_seconds,
                    cpu_per_thousand(&run, messages),
                    run.peak_rss_kib
                );
                measured.push(run);
            }
        }
        let medians: Vec<(Contender, [f64; 3])> = results
            .iter()
            .map(|(contender, measured)| {
                let of = |value: &dyn Fn(&Measured) -> f64| {
                    median(&measured.iter().map(value).collect::<Vec<_>>())
                };
                let rate = of(&|m| messages as f64 / m.active_seconds);
                let cpu = of(&|m| cpu_per_thousand(m, messages));
                let rss = of(&|m| m.peak_rss_kib as f64 / 1024.0);
                (*contender, [rate, cpu, rss])
            })
            .collect();
        let ours = medians
            .iter()
            .find(|(contender, _)| *contender == Contender::Ours)
            .map(|(_, [rate, ..])| *rate);
        let rate_of = |wanted: Contender| {
            medians
                .iter()
                .find(|(contender, _)| *contender == wanted)
                .map(|(_, [rate, ..])| *rate)
        };
        if let (Some(bridge), Some(python)) =
            (rate_of(Contender::PythonBridge), rate_of(Contender::Python))
        {
            let _ = writeln!(
                python_ratios,
                "- prefetch {prefetch}: the Python callback through this host's bridge runs at {:.2}× Python fedora-messaging's throughput",
                bridge / python
            );
        }
        for (contender, [rate, cpu, rss]) in &medians {
            let ratio = match ours {
                Some(ours) if *contender != Contender::Ours => format!("{:.2}", ours / rate),
                _ => String::new(),
            };
            let _ = writeln!(
                table,
                "| {prefetch} | {} | {rate:.0} | {ratio} | {cpu:.3} | {rss:.1} |",
                contender.name()
            );
            bars.push(chart::Bar {
                prefetch,
                contender: contender.name(),
                messages_per_second: *rate,
                cpu_seconds_per_thousand: *cpu,
                peak_rss_mib: *rss,
            });
        }
    }
    let summary = format!(
        "{messages} messages, {rounds} round(s), contenders alternating; \
         msgs/s from each one's first delivery to its last settlement, \
         CPU (user + system) of the whole process (with its children: the \
         bridge's Python process); peak RSS of the main process only\n\n{table}\n{python_ratios}"
    );
    println!("\n{summary}");
    write(&programs.work_dir.join("throughput.csv"), &csv)?;
    write(&programs.work_dir.join("throughput.md"), &summary)?;
    let png = programs.work_dir.join("throughput.png");
    match chart::draw(&png, &bars) {
        Ok(()) => println!("wrote {}", png.display()),
        Err(error) => println!("no chart: {error}"),
    }
    Ok(())
}

/// CPU seconds the whole process spent per 1,000 messages.
/// Ours with traces off, on and sampled, and on but not sampled (a
/// parent-based sampler that records nothing: the publisher's messages
/// carry no context), in turn each round, spans going to [`sink`].
fn traces(
    programs: &Programs,
    broker: &Broker,
    messages: u64,
    rounds: usize,
    prefetches: &[u16],
) -> Result<(), String> {
    let (endpoint, taken) = sink::start()?;
    let variants: [(&str, Option<&str>); 3] = [
        ("off", None),
        ("on, sampled", Some("parentbased_always_on")),
        ("on, not sampled", Some("parentbased_always_off")),
    ];
    let mut csv = String::from(
        "prefetch,round,traces,messages,active_seconds,msgs_per_s,cpu_s_per_1000,peak_rss_kib,export_requests\n",
    );
    let mut table = String::from(
        "| prefetch | traces | median msgs/s | / off | median CPU s per 1,000 msgs | / off | median peak RSS (MiB) |\n|---|---|---|---|---|---|---|\n",
    );
    for &prefetch in prefetches {
        let settings = Settings {
            prefetch,
            messages,
            workers: 1,
            sleep_ms: 0,
        };
        let mut results = vec![Vec::new(); variants.len()];
        for round in 1..=rounds {
            for (index, (name, sampler)) in variants.iter().enumerate() {
                let mut command = programs.command(Contender::Ours, &settings)?;
                if let Some(sampler) = sampler {
                    command
                        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
                        .env("OTEL_TRACES_SAMPLER", sampler)
                        .env("OTEL_SERVICE_NAME", "fm-bench");
                }
                let requests = taken.requests.load(std::sync::atomic::Ordering::Relaxed);
                let label = format!(
                    "traces-{}-p{prefetch}-r{round}",
                    name.replace([',', ' '], "-")
                );
                let run = run_measured(programs, broker, command, &settings, &label)?;
                let sent = taken.requests.load(std::sync::atomic::Ordering::Relaxed) - requests;
                let _ = writeln!(
                    csv,
                    "{prefetch},{round},{name},{messages},{:.4},{:.1},{:.4},{},{sent}",
                    run.active_seconds,
                    messages as f64 / run.active_seconds,
                    cpu_per_thousand(&run, messages),
                    run.peak_rss_kib
                );
                results[index].push(run);
            }
        }
        let medians: Vec<[f64; 3]> = results
            .iter()
            .map(|runs| {
                let rates: Vec<f64> = runs
                    .iter()
                    .map(|r| messages as f64 / r.active_seconds)
                    .collect();
                let cpus: Vec<f64> = runs.iter().map(|r| cpu_per_thousand(r, messages)).collect();
                let rss: Vec<f64> = runs
                    .iter()
                    .map(|r| r.peak_rss_kib as f64 / 1024.0)
                    .collect();
                [median(&rates), median(&cpus), median(&rss)]
            })
            .collect();
        for ((name, _), [rate, cpu, rss]) in variants.iter().zip(&medians) {
            let _ = writeln!(
                table,
                "| {prefetch} | {name} | {rate:.0} | {:.3} | {cpu:.3} | {:.3} | {rss:.1} |",
                rate / medians[0][0],
                cpu / medians[0][1],
            );
        }
    }
    let spans_bytes = taken.bytes.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "\n{table}\nThe sink took {} export requests, {spans_bytes} bytes.",
        taken.requests.load(std::sync::atomic::Ordering::Relaxed)
    );
    std::fs::write(cli_out(programs).join("traces.csv"), csv)
        .map_err(|e| format!("traces.csv: {e}"))?;
    std::fs::write(cli_out(programs).join("traces.md"), table)
        .map_err(|e| format!("traces.md: {e}"))?;
    Ok(())
}

fn cli_out(programs: &Programs) -> &std::path::Path {
    &programs.work_dir
}

fn cpu_per_thousand(measured: &Measured, messages: u64) -> f64 {
    measured.cpu_seconds * 1000.0 / messages as f64
}

fn compare_workers(
    programs: &Programs,
    broker: &Broker,
    messages: u64,
    workers: usize,
    sleep_ms: u64,
    rounds: usize,
) -> Result<(), String> {
    let mut one = Vec::new();
    let mut many = Vec::new();
    let mut csv = String::from("round,workers,messages,seconds,msgs_per_s,peak_rss_kib\n");
    for round in 1..=rounds {
        for (count, results) in [(1, &mut one), (workers, &mut many)] {
            let settings = Settings {
                prefetch: 25,
                messages,
                workers: count,
                sleep_ms,
            };
            let label = format!("workers-{count}-r{round}");
            let run = one_run(programs, broker, Contender::Ours, &settings, &label)?;
            let rate = messages as f64 / run.active_seconds;
            let _ = writeln!(
                csv,
                "{round},{count},{messages},{:.4},{rate:.1},{}",
                run.seconds, run.peak_rss_kib
            );
            results.push(rate);
        }
    }
    let (one, many) = (median(&one), median(&many));
    let summary = format!(
        "sleep {sleep_ms} ms per message, {messages} messages, {rounds} round(s)\n\
         1 worker: {one:.0} msgs/s; {workers} workers: {many:.0} msgs/s; ratio {:.1}\n",
        many / one
    );
    println!("\n{summary}");
    write(&programs.work_dir.join("workers.csv"), &csv)?;
    write(&programs.work_dir.join("workers.md"), &summary)
}

/// The Python callback under Python fedora-messaging's CLI and through the
/// bridge with one and two workers, alternating, for each prefetch.
fn bridge(
    programs: &Programs,
    broker: &Broker,
    messages: u64,
    rounds: usize,
    prefetches: &[u16],
) -> Result<(), String> {
    if programs.python.is_none() {
        return Err(
            "the bridge is compared with Python fedora-messaging: pass --python".to_owned(),
        );
    }
    let contenders = [
        ("python", Contender::Python, 1),
        ("bridge-1", Contender::PythonBridge, 1),
        ("bridge-2", Contender::PythonBridge, 2),
    ];
    let mut csv = String::from(
        "prefetch,round,contender,messages,active_seconds,msgs_per_s,cpu_s_per_1000,python_us_per_msg\n",
    );
    let mut table = String::from(
        "| prefetch | contender | median msgs/s | / python | median CPU s per 1,000 msgs | µs per message in Python | hand-off overhead µs per message | of which Python waits for the host µs |\n|---|---|---|---|---|---|---|---|\n",
    );
    for &prefetch in prefetches {
        let mut rates = vec![Vec::new(); contenders.len()];
        let mut cpus = vec![Vec::new(); contenders.len()];
        let mut in_python = vec![Vec::new(); contenders.len()];
        let mut overheads = vec![Vec::new(); contenders.len()];
        let mut waits = vec![Vec::new(); contenders.len()];
        for round in 1..=rounds {
            for (index, (name, contender, workers)) in contenders.iter().enumerate() {
                let settings = Settings {
                    prefetch,
                    messages,
                    workers: *workers,
                    sleep_ms: 0,
                };
                let label = format!("{name}-p{prefetch}-r{round}");
                let run = one_run(programs, broker, *contender, &settings, &label)?;
                let per_message = run.active_seconds / messages as f64 * 1e6;
                let python_us = measure::python_seconds(&programs.log(&label))
                    .map(|seconds| seconds / messages as f64 * 1e6);
                rates[index].push(messages as f64 / run.active_seconds);
                cpus[index].push(cpu_per_thousand(&run, messages));
                if let Some(python_us) = python_us {
                    in_python[index].push(python_us);
                    // With one process, wall time per message less the
                    // time in Python is what the hand-offs cost.
                    if *workers == 1 {
                        overheads[index].push(per_message - python_us);
                        if let Some(waiting) =
                            measure::python_waiting_seconds(&programs.log(&label))
                        {
                            waits[index].push(waiting / messages as f64 * 1e6);
                        }
                    }
                }
                let _ = writeln!(
                    csv,
                    "{prefetch},{round},{name},{messages},{:.4},{:.1},{:.4},{}",
                    run.active_seconds,
                    messages as f64 / run.active_seconds,
                    cpu_per_thousand(&run, messages),
                    python_us.map_or(String::new(), |us| format!("{us:.1}"))
                );
            }
        }
        let python_rate = median(&rates[0]);
        for (index, (name, ..)) in contenders.iter().enumerate() {
            let optional = |values: &Vec<f64>| {
                if values.is_empty() {
                    String::new()
                } else {
                    format!("{:.1}", median(values))
                }
            };
            let rate = median(&rates[index]);
            let _ = writeln!(
                table,
                "| {prefetch} | {name} | {rate:.0} | {:.2} | {:.3} | {} | {} | {} |",
                rate / python_rate,
                median(&cpus[index]),
                optional(&in_python[index]),
                optional(&overheads[index]),
                optional(&waits[index]),
            );
        }
    }
    let summary = format!(
        "{messages} messages, {rounds} round(s), contenders alternating; the same \
         callback file (bench/python_consumer.py) and virtual environment; \
         msgs/s from the first delivery to the last settlement; CPU of the \
         whole process with its children; time in Python as the bridge's \
         driver measures it (building the message and running the callback); \
         of the overhead, the time Python waited for the host to send the next \
         message (the rest is Python reading, decoding and answering)\n\n{table}"
    );
    println!("\n{summary}");
    write(&programs.work_dir.join("bridge.csv"), &csv)?;
    write(&programs.work_dir.join("bridge.md"), &summary)
}

fn memory(
    programs: &Programs,
    broker: &Broker,
    messages: u64,
    prefetch: u16,
) -> Result<(), String> {
    println!("filling the queue with {messages} messages…");
    broker.fill(messages)?;
    let settings = Settings {
        prefetch,
        messages,
        workers: 1,
        sleep_ms: 0,
    };
    let mut command = programs.command(Contender::Ours, &settings)?;
    let log = programs.log("memory");
    let output = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = command
        .stdout(output)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the host: {e}"))?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut samples = Vec::new();
    let started = Instant::now();
    let deadline = deadline(messages);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if started.elapsed() > deadline {
            let _ = child.kill();
            return Err(format!("the host did not finish within {deadline:?}"));
        }
        if let (Some(rss), Ok(depth)) = (status_kib(&status_path, "VmRSS:"), broker.depth()) {
            let consumed = messages.saturating_sub(u64::from(depth));
            samples.push((started.elapsed().as_secs_f64(), consumed, rss));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tenth = messages / 10;
    let peak_in = |range: std::ops::Range<u64>| {
        samples
            .iter()
            .filter(|(_, consumed, _)| range.contains(consumed))
            .map(|(_, _, rss)| *rss)
            .max()
            .unwrap_or(0)
    };
    let early = peak_in(0..tenth);
    let late = peak_in(messages - tenth..messages + 1);
    let peak = samples.iter().map(|(_, _, rss)| *rss).max().unwrap_or(0);
    let summary = format!(
        "{messages} messages, prefetch {prefetch}, {:.0} s\n\
         peak RSS {:.1} MiB; first tenth {:.1} MiB, last tenth {:.1} MiB\n",
        started.elapsed().as_secs_f64(),
        peak as f64 / 1024.0,
        early as f64 / 1024.0,
        late as f64 / 1024.0
    );
    println!("\n{summary}");
    let mut csv = String::from("seconds,consumed,rss_kib\n");
    for (seconds, consumed, rss) in &samples {
        let _ = writeln!(csv, "{seconds:.1},{consumed},{rss}");
    }
    write(&programs.work_dir.join("memory.csv"), &csv)?;
    write(&programs.work_dir.join("memory.md"), &summary)
}

fn startup(programs: &Programs, broker: &Broker, runs: usize) -> Result<(), String> {
    let mut after_connect = Vec::new();
    let mut from_exec = Vec::new();
    for run in 1..=runs {
        broker.fill(1)?;
        let settings = Settings {
            prefetch: 25,
            messages: 1,
            workers: 1,
            sleep_ms: 0,
        };
        let conf = programs.work_dir.join("ours.toml");
        let mut command = programs.command(Contender::Ours, &settings)?;
        // The no-op plugin logs its first message at INFO: let it through.
        let text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
        write(
            &conf,
            &format!("{text}\n[log_config.root]\nlevel = \"INFO\"\n"),
        )?;
        let started = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the host: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut connected = None;
        let mut first = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if connected.is_none() && line.contains("Connected to") {
                connected = Some(started.elapsed());
            }
            if first.is_none() && line.contains("first message") {
                first = Some(started.elapsed());
            }
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        let (Some(connected), Some(first)) = (connected, first) else {
            return Err(format!(
                "run {run}: no 'Connected to' or 'first message' line ({status})"
            ));
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "run {run}: connected at {:.1} ms, first message at {:.1} ms",
            ms(connected),
            ms(first)
        );
        after_connect.push(ms(first - connected));
        from_exec.push(ms(first));
    }
    let summary = format!(
        "{runs} runs: median {:.1} ms from the broker accepting the connection to the first message \
         in the consumer ({:.1} ms from exec)\n",
        median(&after_connect),
        median(&from_exec)
    );
    println!("\n{summary}");
    write(&programs.work_dir.join("startup.md"), &summary)
}

fn write(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
