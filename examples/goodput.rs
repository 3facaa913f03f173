//! Goodput: the strategies people run today against this crate's layers, side by side, on a
//! quota-limited simulator.
//!
//! `cargo run --release --example goodput` (add `--json` for one JSON object per line,
//! `--quick` for a smaller workload that runs in seconds in a debug build, `--help` for the
//! rest).
//!
//! A deterministic simulation: `MockDashScope` in process, paused tokio time, fixed seeds. Each
//! scenario runs once per strategy, against a fresh simulator:
//!
//! - **strategies**: `none` (one attempt), `tenacity` (Alibaba's recipe), `openai-sdk`,
//!   `litellm`, `retry-only` (`RetryWithJitter::new()` alone) and `tower-dashscope` (the
//!   recommended stack); see `goodput/strategy.rs` for exactly what each one does;
//! - **scenarios**: `quota` (in both enforcement models, with answers' output counted when
//!   generated — the simulator's default — and, as a check, when the request is admitted),
//!   `burst`, `outage`, `flap`, `silent` and `total-outage`; see `goodput/scenario.rs`.
//!
//! What the columns mean is in BENCHMARKS.md. The SVG plots (admitted tokens per second
//! against the quota, for `quota` and `flap`) go to `target/goodput/` unless `--svg-dir` says
//! otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "budget_scenarios/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "support/open_loop.rs"]
mod open_loop;
#[path = "support/tenacity.rs"]
mod tenacity;

#[path = "goodput/plot.rs"]
mod plot;
#[path = "goodput/report.rs"]
mod report;
#[path = "goodput/scenario.rs"]
mod scenario;
#[path = "goodput/strategy.rs"]
mod strategy;

use report::Report;
use scenario::{Kind, Scenario};
use strategy::Strategy;

const USAGE: &str = "\
usage: goodput [--json] [--quick] [--resubmit] [--scenario NAME]... [--seed N]
               [--budget-on-admission] [--svg-dir DIR | --no-svg]

  --json           one JSON object per line per (scenario, strategy), nothing else on stdout
  --quick          a fifth of the requests (CI: seconds in a debug build)
  --resubmit       batch mode: the application sends each failed request through the
                   strategy again, a second later, until it succeeds (at most 100 times), so
                   that every strategy completes the same work
  --scenario NAME  only this scenario (quota, burst, outage, flap, silent, total-outage);
                   may be repeated
  --seed N         the seed of the workload, the simulator and every strategy (default 1)
  --budget-on-admission
                   tower-dashscope's TokenBudget reserves the expected output before sending
                   (OutputCharge::OnAdmission) instead of charging it when reported (default)
  --svg-dir DIR    where the plots go (default target/goodput)
  --no-svg         no plots";

struct Args {
    json: bool,
    quick: bool,
    resubmit: bool,
    budget_charge: tower_dashscope::OutputCharge,
    scenarios: Vec<String>,
    seed: u64,
    svg_dir: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        json: false,
        quick: false,
        resubmit: false,
        budget_charge: tower_dashscope::OutputCharge::WhenGenerated,
        scenarios: Vec::new(),
        seed: 1,
        svg_dir: Some(PathBuf::from("target/goodput")),
    };
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value; see --help"))
        };
        match arg.as_str() {
            "--json" => parsed.json = true,
            "--quick" => parsed.quick = true,
            "--resubmit" => parsed.resubmit = true,
            "--budget-on-admission" => {
                parsed.budget_charge = tower_dashscope::OutputCharge::OnAdmission;
            }
            "--no-svg" => parsed.svg_dir = None,
            "--svg-dir" => parsed.svg_dir = Some(PathBuf::from(value("--svg-dir")?)),
            "--seed" => {
                let text = value("--seed")?;
                parsed.seed = text
                    .parse()
                    .map_err(|_| format!("--seed takes a whole number such as 1, not {text:?}"))?;
            }
            "--scenario" => {
                let name = value("--scenario")?;
                if !Kind::ALL.iter().any(|k| k.name() == name) {
                    return Err(format!(
                        "no scenario {name:?}: use one of quota, burst, outage, flap, silent, \
                         total-outage"
                    ));
                }
                parsed.scenarios.push(name);
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(parsed)
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return if message == USAGE {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    if let Some(dir) = &args.svg_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!(
                "cannot create the plot directory {}: {e}; pass --svg-dir DIR or --no-svg",
                dir.display()
            );
            return ExitCode::from(1);
        }
    }
    if !args.json {
        println!(
            "goodput: {} scenarios x {} strategies, seed {}{}{}",
            Kind::ALL.len(),
            Strategy::ALL.len(),
            args.seed,
            if args.quick { ", quick" } else { "" },
            if args.resubmit {
                ", batch mode (failed requests resubmitted)"
            } else {
                ""
            }
        );
        println!("{}", Report::header());
    }
    for kind in Kind::ALL {
        if !args.scenarios.is_empty() && !args.scenarios.iter().any(|s| s == kind.name()) {
            continue;
        }
        let scenario = Scenario::new(kind, args.quick, args.seed);
        let mut runs = Vec::new();
        for strategy in Strategy::ALL {
            let run = scenario
                .run(strategy, args.seed, args.resubmit, args.budget_charge)
                .await;
            let report = Report::new(&scenario, &run);
            if args.json {
                println!("{}", report.json());
            } else {
                println!("{}", report.row());
            }
            runs.push(run);
        }
        let plotted = matches!(kind, Kind::Quota(..) | Kind::Flap);
        if let Some(dir) = args.svg_dir.as_ref().filter(|_| plotted) {
            let flap = kind == Kind::Flap;
            let lines: Vec<plot::Line<'_>> = runs
                .iter()
                .map(|run| plot::Line {
                    name: run.strategy.name(),
                    per_second: if flap {
                        &run.primary_tokens_per_second
                    } else {
                        &run.tokens_per_second
                    },
                })
                .collect();
            let title = if flap {
                format!(
                    "flap: tokens admitted on {} (down from 10 s to 70 s)",
                    scenario::PRIMARY
                )
            } else {
                format!(
                    "quota ({} enforcement, output counted {}): tokens counted",
                    scenario::enforcement_name(kind.enforcement()),
                    scenario::output_charge_name(kind.output_charge()).replace('-', " ")
                )
            };
            let suffix = if args.resubmit { "-resubmit" } else { "" };
            let path = dir.join(format!("{}{suffix}.svg", kind.label()));
            if let Err(e) = plot::tokens_over_time(&path, &title, scenario.tps(), &lines) {
                eprintln!("cannot write the plot {}: {e}", path.display());
                return ExitCode::from(1);
            }
            if !args.json {
                println!("  plot: {}", path.display());
            }
        }
    }
    ExitCode::SUCCESS
}
