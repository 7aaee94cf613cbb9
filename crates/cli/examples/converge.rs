//! Convergence experiment: crams texts with given settings and prints the
//! mean accuracy every 10 steps and the steps each text needed.
//! Usage: converge MODEL JSONL LENS(comma list) LOSS LR BETA1 BETA2 WARMUP STEPS NMEM [MIN_LR]
use cram::engine::{CramConfig, Engine, OptimizerConfig};
use cram::model::{load, LoadOptions};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let m = load(&a[1], &LoadOptions::default())?;
    let texts = cram::texts::read_texts(std::path::Path::new(&a[2]), "text")?;
    let lens: Vec<usize> = a[3]
        .split(',')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()?;
    let cfg = CramConfig {
        loss: a[4].parse()?,
        n_mem: a[10].parse()?,
        optimizer: OptimizerConfig {
            lr: a[5].parse()?,
            beta1: a[6].parse()?,
            beta2: a[7].parse()?,
            warmup_steps: a[8].parse()?,
            max_steps: a[9].parse()?,
            min_lr: a.get(11).map(|x| x.parse()).transpose()?,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .zip(lens.iter().cycle())
        .map(|(t, &l)| {
            m.tokenizer.encode(t, true).map(|mut v| {
                v.truncate(l);
                v
            })
        })
        .collect::<Result<_, _>>()?;
    let e = Engine::new(m.model.as_ref(), cfg.clone())?;
    let t0 = std::time::Instant::now();
    let res = e.run(&ids, 0, |r| {
        if r.step % 10 == 0 {
            println!(
                "step {} live {} acc {:.3} loss {:.3} t {:.0}s",
                r.step,
                r.live,
                r.mean_accuracy,
                r.mean_loss,
                t0.elapsed().as_secs_f64()
            );
        }
    })?;
    for r in &res {
        println!(
            "RESULT {:?} steps {} acc {:.3} exact {} mismatch {:?}",
            cfg.loss, r.steps, r.best_accuracy, r.exact, r.first_mismatch
        );
    }
    Ok(())
}
