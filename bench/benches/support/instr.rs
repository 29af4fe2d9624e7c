//! Shared by every criterion bench of the workspace (included with `#[path]`): each case is
//! declared once and runs either under criterion (wall clock) or, with `V2SP_BENCH_ITERS=N`
//! set, exactly N times inside [`instr_measured`] with no criterion at all — the mode
//! `scripts/instr-count.sh` runs under `valgrind --tool=callgrind
//! --toggle-collect='*instr_measured*'`, so only the N measured iterations are counted (setup,
//! one warm-up call and the harness are not) and instructions ÷ N is the cost of one iteration.
//!
//! * `V2SP_BENCH_ITERS=N`: fixed-iteration mode.
//! * `V2SP_BENCH_CASE=group/id`: run only that case (exact name); unset = all cases.
//! * `V2SP_BENCH_LIST=1`: print the case names (one per line) and run nothing.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput};

/// Fixed-iteration mode, from the environment (`None` = criterion).
pub(crate) struct Fixed {
    iters: u64,
    case: Option<String>,
    list: bool,
}

impl Fixed {
    pub(crate) fn from_env() -> Option<Fixed> {
        let list = std::env::var_os("V2SP_BENCH_LIST").is_some();
        let iters = std::env::var("V2SP_BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok());
        if iters.is_none() && !list {
            return None;
        }
        Some(Fixed {
            iters: iters.unwrap_or(0),
            case: std::env::var("V2SP_BENCH_CASE").ok().filter(|c| !c.is_empty()),
            list,
        })
    }

    /// Whether `name` is to run (after listing it in list mode).
    fn wants(&self, name: &str) -> bool {
        if self.list {
            println!("{name}");
            return false;
        }
        self.case.as_deref().is_none_or(|c| c == name)
    }
}

/// The measured loop: callgrind collects inside this function only.
#[inline(never)]
pub(crate) fn instr_measured(iters: u64, f: &mut dyn FnMut()) {
    for _ in 0..iters {
        f();
    }
}

/// The measured loop over prepared inputs (one per iteration).
#[inline(never)]
pub(crate) fn instr_measured_batched<I>(inputs: Vec<I>, f: &mut dyn FnMut(I)) {
    for i in inputs {
        f(i);
    }
}

/// Where cases run: criterion, or the fixed-iteration mode.
pub(crate) struct Runner<'a> {
    pub(crate) c: &'a mut Criterion,
    pub(crate) fixed: Option<Fixed>,
    /// Criterion group settings for the cases that follow: (sample size, warm-up, measurement).
    tune: Option<(usize, Duration, Duration)>,
}

impl<'a> Runner<'a> {
    pub(crate) fn new(c: &'a mut Criterion) -> Self {
        Runner {
            c,
            fixed: Fixed::from_env(),
            tune: None,
        }
    }

    /// Fewer samples / shorter windows for slow cases (criterion mode only).
    pub(crate) fn tune(&mut self, samples: usize, warm_up: Duration, measurement: Duration) {
        self.tune = Some((samples, warm_up, measurement));
    }

    fn group(&mut self, group: &str, tput: Option<Throughput>) -> BenchmarkGroup<'_, WallTime> {
        let mut g = self.c.benchmark_group(group);
        if let Some(t) = tput {
            g.throughput(t);
        }
        if let Some((n, w, m)) = self.tune {
            g.sample_size(n).warm_up_time(w).measurement_time(m);
        }
        g
    }

    /// One case: `f` is one iteration.
    pub(crate) fn case(&mut self, group: &str, id: &str, tput: Option<Throughput>, mut f: impl FnMut()) {
        let name = format!("{group}/{id}");
        match &self.fixed {
            Some(fx) => {
                if fx.wants(&name) {
                    f(); // warm-up (lazy allocations, first-use tables)
                    instr_measured(fx.iters, &mut f);
                    println!("ran {name} x{}", fx.iters);
                }
            }
            None => {
                let mut g = self.group(group, tput);
                g.bench_function(id, |b| b.iter(&mut f));
                g.finish();
            }
        }
    }

    /// One case whose iterations each consume an input made by `setup` (not measured); inputs
    /// are made and consumed in order.
    pub(crate) fn case_batched<I>(
        &mut self,
        group: &str,
        id: &str,
        tput: Option<Throughput>,
        mut setup: impl FnMut() -> I,
        mut f: impl FnMut(I),
    ) {
        let name = format!("{group}/{id}");
        match &self.fixed {
            Some(fx) => {
                if fx.wants(&name) {
                    f(setup());
                    let inputs: Vec<I> = (0..fx.iters).map(|_| setup()).collect();
                    instr_measured_batched(inputs, &mut f);
                    println!("ran {name} x{}", fx.iters);
                }
            }
            None => {
                let mut g = self.group(group, tput);
                g.bench_function(id, |b| {
                    b.iter_batched(&mut setup, |i| f(black_box(i)), BatchSize::SmallInput)
                });
                g.finish();
            }
        }
    }
}

/// `main` of a bench: criterion's, or the fixed-iteration mode (no criterion output).
pub(crate) fn main(benches: &[fn(&mut Runner)]) {
    let mut c = if Fixed::from_env().is_some() {
        Criterion::default()
    } else {
        Criterion::default().configure_from_args()
    };
    for b in benches {
        let mut r = Runner::new(&mut c);
        b(&mut r);
    }
    if Fixed::from_env().is_none() {
        c.final_summary();
    }
}
