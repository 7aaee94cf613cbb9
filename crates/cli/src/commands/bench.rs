//! `cram bench`: timings of the workload of cramming.
//!
//! Two benchmarks, both printing one JSON line per configuration with
//! `--json` (the schema `scripts/bench_torch.py` and
//! `scripts/bench_cram_torch.py` print too, so that `scripts/bench.sh` can
//! put both sides in one table; see `docs/benchmarks.md`):
//!
//! - `fwd-bwd`: one forward and one backward pass to the input embeddings of
//!   the frozen model, the inner step of cramming without the optimiser.
//! - `cram`: the real engine ([`Engine::run`]) on texts cut from embedded
//!   public-domain prose, timed step by step through its progress callback.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{Tensor, Var};
use clap::{Args, Subcommand};
use rand::{Rng, SeedableRng};
use serde_json::json;

use cram::engine::{initial_vectors, CramConfig, Engine, OptimizerConfig, StopReason};
use cram::model::{CausalLm, LoadedModel};

use crate::ModelArgs;

/// The first chapter of Jane Austen's *Sense and Sensibility* (1811, public
/// domain, from Project Gutenberg): about 1,000 words, 1,253 SmolLM2 tokens.
/// `cram bench cram` cuts its texts from it.
pub const PROSE: &str = r##"The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was at Norland Park, in the centre of their property, where, for many generations, they had lived in so respectable a manner as to engage the general good opinion of their surrounding acquaintance. The late owner of this estate was a single man, who lived to a very advanced age, and who for many years of his life, had a constant companion and housekeeper in his sister. But her death, which happened ten years before his own, produced a great alteration in his home; for to supply her loss, he invited and received into his house the family of his nephew Mr. Henry Dashwood, the legal inheritor of the Norland estate, and the person to whom he intended to bequeath it. In the society of his nephew and niece, and their children, the old Gentleman's days were comfortably spent. His attachment to them all increased. The constant attention of Mr. and Mrs. Henry Dashwood to his wishes, which proceeded not merely from interest, but from goodness of heart, gave him every degree of solid comfort which his age could receive; and the cheerfulness of the children added a relish to his existence.

By a former marriage, Mr. Henry Dashwood had one son: by his present lady, three daughters. The son, a steady respectable young man, was amply provided for by the fortune of his mother, which had been large, and half of which devolved on him on his coming of age. By his own marriage, likewise, which happened soon afterwards, he added to his wealth. To him therefore the succession to the Norland estate was not so really important as to his sisters; for their fortune, independent of what might arise to them from their father's inheriting that property, could be but small. Their mother had nothing, and their father only seven thousand pounds in his own disposal; for the remaining moiety of his first wife's fortune was also secured to her child, and he had only a life-interest in it.

The old gentleman died: his will was read, and like almost every other will, gave as much disappointment as pleasure. He was neither so unjust, nor so ungrateful, as to leave his estate from his nephew;--but he left it to him on such terms as destroyed half the value of the bequest. Mr. Dashwood had wished for it more for the sake of his wife and daughters than for himself or his son;--but to his son, and his son's son, a child of four years old, it was secured, in such a way, as to leave to himself no power of providing for those who were most dear to him, and who most needed a provision by any charge on the estate, or by any sale of its valuable woods. The whole was tied up for the benefit of this child, who, in occasional visits with his father and mother at Norland, had so far gained on the affections of his uncle, by such attractions as are by no means unusual in children of two or three years old; an imperfect articulation, an earnest desire of having his own way, many cunning tricks, and a great deal of noise, as to outweigh all the value of all the attention which, for years, he had received from his niece and her daughters. He meant not to be unkind, however, and, as a mark of his affection for the three girls, he left them a thousand pounds a-piece.

Mr. Dashwood's disappointment was, at first, severe; but his temper was cheerful and sanguine; and he might reasonably hope to live many years, and by living economically, lay by a considerable sum from the produce of an estate already large, and capable of almost immediate improvement. But the fortune, which had been so tardy in coming, was his only one twelvemonth. He survived his uncle no longer; and ten thousand pounds, including the late legacies, was all that remained for his widow and daughters.

His son was sent for as soon as his danger was known, and to him Mr. Dashwood recommended, with all the strength and urgency which illness could command, the interest of his mother-in-law and sisters.

Mr. John Dashwood had not the strong feelings of the rest of the family; but he was affected by a recommendation of such a nature at such a time, and he promised to do every thing in his power to make them comfortable. His father was rendered easy by such an assurance, and Mr. John Dashwood had then leisure to consider how much there might prudently be in his power to do for them.

He was not an ill-disposed young man, unless to be rather cold hearted and rather selfish is to be ill-disposed: but he was, in general, well respected; for he conducted himself with propriety in the discharge of his ordinary duties. Had he married a more amiable woman, he might have been made still more respectable than he was:--he might even have been made amiable himself; for he was very young when he married, and very fond of his wife. But Mrs. John Dashwood was a strong caricature of himself;--more narrow-minded and selfish.

When he gave his promise to his father, he meditated within himself to increase the fortunes of his sisters by the present of a thousand pounds a-piece. He then really thought himself equal to it. The prospect of four thousand a-year, in addition to his present income, besides the remaining half of his own mother's fortune, warmed his heart, and made him feel capable of generosity.-- "Yes, he would give them three thousand pounds: it would be liberal and handsome! It would be enough to make them completely easy. Three thousand pounds! he could spare so considerable a sum with little inconvenience."-- He thought of it all day long, and for many days successively, and he did not repent.

No sooner was his father's funeral over, than Mrs."##;

/// Which benchmark to run.
#[derive(Subcommand)]
pub enum BenchKind {
    /// Forward + backward to random input embeddings [B, L, H] of the frozen
    /// model (loss: mean cross-entropy against random labels); median time
    /// per step.
    FwdBwd(FwdBwdArgs),
    /// The cramming engine on B prose texts of L tokens, 1 vector each, the
    /// paper's optimiser settings; median time per optimisation step and the
    /// texts per hour it implies.
    Cram(CramBenchArgs),
    /// Peak memory of one cramming step (forward, backward to the inputs) on
    /// B texts of L positions, estimated from the model's shapes for the
    /// composed path (the path a GPU runs); with --measure, also the peak
    /// this process's allocator sees during a real step on the CPU.
    Memory(MemoryArgs),
    /// Logits and input-embedding gradients of one step on --device
    /// (composed kernels, the GPU's path) against the CPU (the default
    /// kernels), both in --dtype, on B prose texts of L tokens: the largest
    /// absolute and the relative (L2) differences, and whether they are
    /// within the tolerances (f32: logits 1e-3 absolute, gradients 1e-3
    /// relative; bf16/f16: both 2e-2 relative). Exits with 1 when outside.
    Compare(CompareArgs),
}

/// Options of `cram bench compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// The model, and the device and dtype to check against the CPU.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Texts in the batch.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Tokens per text.
    #[arg(long, default_value_t = 64)]
    pub len: usize,
    /// Print one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Batch sizes and lengths of a step.
#[derive(Args)]
pub struct Sizes {
    /// Batch sizes B, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Sequence lengths L, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub len: Vec<usize>,
}

/// Options of `cram bench memory`.
#[derive(Args)]
pub struct MemoryArgs {
    /// The model (its weights are loaded; nothing runs without --measure).
    #[command(flatten)]
    pub model: ModelArgs,
    /// The sizes (L: positions, vectors and prefix included).
    #[command(flatten)]
    pub sizes: Sizes,
    /// Also run one step on the CPU and print the peak measured beside the
    /// estimate (needs `--device cpu --kernels composed`, the path the
    /// estimate describes).
    #[arg(long)]
    pub measure: bool,
    /// Print one JSON line per configuration.
    #[arg(long)]
    pub json: bool,
}

/// Options of `cram bench fwd-bwd`.
#[derive(Args)]
pub struct FwdBwdArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The sizes.
    #[command(flatten)]
    pub sizes: Sizes,
    /// Timed steps per configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Print one JSON line per configuration.
    #[arg(long)]
    pub json: bool,
}

/// Options of `cram bench cram`.
#[derive(Args)]
pub struct CramBenchArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes B (texts optimised together), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Text lengths L in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,128")]
    pub len: Vec<usize>,
    /// Timed optimisation steps per configuration (after 1 untimed warm-up step).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Steps one text is assumed to need, for the texts-per-hour figure.
    #[arg(long, default_value_t = 1000)]
    pub steps_per_text: usize,
    /// [mem] vectors per text.
    #[arg(long, default_value_t = 1)]
    pub mem: usize,
    /// Also write the texts' token ids to this file, one JSON line per text:
    /// {"len": L, "index": i, "ids": [...]} (the PyTorch benchmark reads it).
    #[arg(long)]
    pub dump_texts: Option<PathBuf>,
    /// Print one JSON line per configuration.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cram bench`.
pub fn run(kind: &BenchKind, quiet: bool) -> anyhow::Result<()> {
    match kind {
        BenchKind::FwdBwd(a) => fwd_bwd(a, quiet),
        BenchKind::Cram(a) => cram_bench(a, quiet),
        BenchKind::Memory(a) => memory_bench(a, quiet),
        BenchKind::Compare(a) => compare_bench(a, quiet),
    }
}

/// Median of a non-empty list.
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn check_sizes(batch: &[usize], len: &[usize]) -> anyhow::Result<()> {
    if batch.is_empty() || batch.contains(&0) {
        anyhow::bail!("--batch: give batch sizes of at least 1");
    }
    if len.is_empty() || len.contains(&0) {
        anyhow::bail!("--len: give lengths of at least 1");
    }
    Ok(())
}

/// Prints the header every benchmark starts with (to stderr).
fn header(m: &LoadedModel, quiet: bool) {
    if quiet {
        return;
    }
    let info = m.model.info();
    eprintln!(
        "model {} ({} parameters, compute {}), matmul backend: {}, threads: {}",
        m.spec,
        info.num_parameters,
        info.compute_dtype,
        info.kernels.record(),
        candle_core::utils::get_num_threads()
    );
}

fn fwd_bwd(a: &FwdBwdArgs, quiet: bool) -> anyhow::Result<()> {
    check_sizes(&a.sizes.batch, &a.sizes.len)?;
    if a.reps == 0 {
        anyhow::bail!("--reps must be at least 1");
    }
    let m = a.model.load()?;
    header(&m, quiet);
    let model = m.model.as_ref();
    let info = model.info();
    let backend = info.kernels.record().to_string();
    for &l in &a.sizes.len {
        if l > info.context_length {
            anyhow::bail!(
                "--len {l} exceeds the context length {}",
                info.context_length
            );
        }
        for &b in &a.sizes.batch {
            let (x, labels) = step_inputs(model, b, l)?;
            let step = || -> anyhow::Result<f64> {
                let t0 = Instant::now();
                fwd_bwd_step(model, &x, &labels)?;
                Ok(t0.elapsed().as_secs_f64())
            };
            for _ in 0..a.warmup {
                step()?;
            }
            let times = (0..a.reps)
                .map(|_| step())
                .collect::<anyhow::Result<Vec<f64>>>()?;
            let s = median(&times);
            let gflops = 4.0 * info.num_parameters as f64 * (b * l) as f64 / s / 1e9;
            if a.json {
                println!(
                    "{}",
                    json!({
                        "impl": "cram", "bench": "fwd_bwd", "batch": b, "len": l,
                        "dtype": info.compute_dtype, "device": info.device,
                        "ms_per_step": round3(s * 1e3), "gflops": round3(gflops),
                        "reps": a.reps, "backend": backend,
                        "threads": candle_core::utils::get_num_threads(),
                        "params": info.num_parameters, "architecture": info.architecture,
                    })
                );
            } else {
                let min = times.iter().copied().fold(f64::INFINITY, f64::min);
                let max = times.iter().copied().fold(0.0, f64::max);
                println!(
                    "cram fwd+bwd B={b} L={l}: {:.1} ms/step (median of {}; min {:.1}, max {:.1}), {:.1} GFLOP/s, {:.0} tokens/s",
                    s * 1e3,
                    a.reps,
                    min * 1e3,
                    max * 1e3,
                    gflops,
                    (b * l) as f64 / s
                );
            }
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}

/// Seeded inputs `[b, l, input_size]` at the scale of real embeddings, and
/// random labels.
fn step_inputs(model: &dyn CausalLm, b: usize, l: usize) -> anyhow::Result<(Var, Vec<u32>)> {
    let info = model.info();
    let (h, v) = (info.input_size, info.vocab_size);
    let x0 = initial_vectors(7, b * 1000 + l, b * l * h, info.embedding_std);
    let x = Var::from_tensor(&Tensor::from_vec(x0, (b, l, h), model.device())?)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((b * 1000 + l) as u64);
    let labels: Vec<u32> = (0..b * l).map(|_| rng.random_range(0..v as u32)).collect();
    Ok((x, labels))
}

/// One forward and backward pass to the inputs `x`, with the engine's loss
/// (the cross-entropy with argmax) against `labels`.
/// Returns the logits and the gradient of the inputs.
fn fwd_bwd_step(model: &dyn CausalLm, x: &Var, labels: &[u32]) -> anyhow::Result<(Tensor, Tensor)> {
    let (b, l, _) = x.as_tensor().dims3()?;
    let v = model.info().vocab_size;
    let xin = x.as_tensor().to_dtype(model.dtype())?;
    let logits = model.forward(&xin, None)?;
    let (nll, _) =
        cram::ops::token_nll_argmax(&model.info().kernels, &logits.reshape((b * l, v))?, labels)?;
    let loss = nll.mean_all()?;
    let grads = loss.backward()?;
    let g = grads
        .get(x.as_tensor())
        .context("no gradient reached the input embeddings")?;
    // Reading a scalar waits for the device (CUDA) to finish.
    let s = g.sum_all()?.to_scalar::<f32>()?;
    anyhow::ensure!(s.is_finite(), "non-finite gradient");
    Ok((logits.detach(), g.clone()))
}

/// `(max |a - b|, ||a - b|| / ||b||)` of two tensors of one shape.
fn differences(a: &Tensor, b: &Tensor) -> anyhow::Result<(f64, f64)> {
    let a = a
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?;
    let b = b
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?;
    let d = (&a - &b)?;
    let max = d.abs()?.max_all()?.to_scalar::<f64>()?;
    let norm =
        |t: &Tensor| -> anyhow::Result<f64> { Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()) };
    Ok((max, norm(&d)? / norm(&b)?.max(f64::MIN_POSITIVE)))
}

fn compare_bench(a: &CompareArgs, quiet: bool) -> anyhow::Result<()> {
    check_sizes(&[a.batch], &[a.len])?;
    let dev_model = a.model.load_with(cram::kernels::Kernels::composed())?;
    let cpu_args = ModelArgs {
        model: a.model.model.clone(),
        dtype: a.model.dtype.clone(),
        device: "cpu".into(),
    };
    let cpu = cpu_args.load()?;
    let info = cpu.model.info();
    if a.len > info.context_length {
        anyhow::bail!(
            "--len {} exceeds the context length {}",
            a.len,
            info.context_length
        );
    }
    header(&dev_model, quiet);
    // Real text: the embeddings of prose, the next tokens as labels.
    let texts = prose_texts(&cpu, a.batch, a.len + 1)?;
    let ids: Vec<u32> = texts
        .iter()
        .flat_map(|t| t[..a.len].iter().copied())
        .collect();
    let labels: Vec<u32> = texts.iter().flat_map(|t| t[1..].iter().copied()).collect();
    let ids = Tensor::from_vec(ids, (a.batch, a.len), &candle_core::Device::Cpu)?;
    let x = cpu.model.embed(&ids)?.to_dtype(candle_core::DType::F32)?;
    // (Both sides take f32 inputs and cast them to their dtype.)
    let (ref_logits, ref_grad) = fwd_bwd_step(cpu.model.as_ref(), &Var::from_tensor(&x)?, &labels)?;
    let model = dev_model.model.as_ref();
    let xd = Var::from_tensor(&x.to_device(model.device())?)?;
    let (logits, grad) = fwd_bwd_step(model, &xd, &labels)?;
    let (logits_abs, logits_rel) = differences(&logits, &ref_logits)?;
    let (grad_abs, grad_rel) = differences(&grad, &ref_grad)?;
    let f32 = model.dtype() == candle_core::DType::F32;
    let pass = if f32 {
        logits_abs <= 1e-3 && grad_rel <= 1e-3
    } else {
        logits_rel <= 2e-2 && grad_rel <= 2e-2
    };
    let sci = |x: f64| format!("{x:.2e}");
    if a.json {
        println!(
            "{}",
            json!({
                "impl": "cram", "bench": "compare", "batch": a.batch, "len": a.len,
                "model": dev_model.spec, "device": model.info().device,
                "dtype": model.info().compute_dtype,
                "backend": model.info().kernels.record().to_string(),
                "logits_max_abs": logits_abs, "logits_rel": logits_rel,
                "grad_max_abs": grad_abs, "grad_rel": grad_rel,
                "tolerance": if f32 { "logits 1e-3 abs, gradients 1e-3 rel" } else { "2e-2 rel" },
                "pass": pass,
            })
        );
    } else {
        println!(
            "compare {} {} vs cpu, B={} L={}: logits max abs {}, rel {}; gradients max abs {}, rel {}: {}",
            model.info().device,
            model.info().compute_dtype,
            a.batch,
            a.len,
            sci(logits_abs),
            sci(logits_rel),
            sci(grad_abs),
            sci(grad_rel),
            if pass { "within tolerance" } else { "OUTSIDE tolerance" }
        );
    }
    std::io::stdout().flush()?;
    if !pass {
        // Not a usage error: the numbers disagree.
        std::process::exit(1);
    }
    Ok(())
}

/// Bytes in MiB, rounded to 0.1.
fn mib(bytes: usize) -> f64 {
    (bytes as f64 / (1 << 20) as f64 * 10.0).round() / 10.0
}

fn memory_bench(a: &MemoryArgs, quiet: bool) -> anyhow::Result<()> {
    check_sizes(&a.sizes.batch, &a.sizes.len)?;
    let m = a.model.load()?;
    let model = m.model.as_ref();
    let info = model.info();
    if model.memory(1, 1).is_none() {
        anyhow::bail!(
            "no memory estimate for the {} architecture",
            info.architecture
        );
    }
    if a.measure {
        if !model.device().is_cpu() {
            anyhow::bail!("--measure: the peak is measured on the cpu (give --device cpu)");
        }
        if info.kernels.fused && model.dtype() == candle_core::DType::F32 {
            anyhow::bail!(
                "--measure: the estimate is of the composed path, but f32 on the cpu runs the \
                 fused kernels (add --kernels composed)"
            );
        }
        if cram::alloc::live_bytes() == 0 {
            anyhow::bail!("--measure: this program does not count its allocations");
        }
    }
    if let Some(l) = a.sizes.len.iter().find(|&&l| l > info.context_length) {
        anyhow::bail!(
            "--len {l} exceeds the context length {}",
            info.context_length
        );
    }
    header(&m, quiet);
    for &l in &a.sizes.len {
        for &b in &a.sizes.batch {
            let est = model.memory(b, l).context("no memory estimate")?;
            let measured = if a.measure {
                let (x, labels) = step_inputs(model, b, l)?;
                // The second of two steps: the first also allocates the
                // thread pools' and the BLAS library's buffers.
                let mut peak = 0;
                for _ in 0..2 {
                    let base = cram::alloc::live_bytes();
                    cram::alloc::reset_peak();
                    fwd_bwd_step(model, &x, &labels)?;
                    peak = cram::alloc::peak_bytes().saturating_sub(base);
                }
                Some(peak)
            } else {
                None
            };
            let ratio = measured.map(|p| round3(est.activations() as f64 / p.max(1) as f64));
            if a.json {
                println!(
                    "{}",
                    json!({
                        "impl": "cram", "bench": "memory", "batch": b, "len": l,
                        "model": m.spec, "architecture": info.architecture,
                        "dtype": info.compute_dtype, "device": info.device,
                        "backend": info.kernels.record().to_string(),
                        "weights_bytes": est.weights, "kept_bytes": est.kept,
                        "transient_bytes": est.transient,
                        "estimate_activation_bytes": est.activations(),
                        "estimate_peak_bytes": est.peak(),
                        "measured_activation_bytes": measured,
                        "estimate_over_measured": ratio,
                    })
                );
            } else {
                let mut line = format!(
                    "memory B={b} L={l}: estimated peak {} MiB = weights {} + kept {} + transient {}",
                    mib(est.peak()),
                    mib(est.weights),
                    mib(est.kept),
                    mib(est.transient)
                );
                if let (Some(p), Some(r)) = (measured, ratio) {
                    line += &format!(
                        "; activations measured {} MiB, estimated {} MiB (ratio {r})",
                        mib(p),
                        mib(est.activations())
                    );
                }
                println!("{line}");
            }
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `b` texts of `l` tokens cut from [`PROSE`]: disjoint windows when the
/// prose is long enough, evenly spread overlapping ones otherwise. A BOS is
/// prepended (and counted in `l`) when the tokenizer adds one.
fn prose_texts(m: &LoadedModel, b: usize, l: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    let all = m.tokenizer.encode(PROSE, false)?;
    let bos = m.tokenizer.bos_id().filter(|_| m.tokenizer.adds_bos());
    let w = l - usize::from(bos.is_some());
    if w > all.len() {
        anyhow::bail!(
            "--len {l}: the embedded prose has only {} tokens",
            all.len()
        );
    }
    let room = all.len() - w;
    Ok((0..b)
        .map(|i| {
            let start = if b * w <= all.len() {
                i * w
            } else {
                room * i / (b - 1).max(1)
            };
            bos.into_iter()
                .chain(all[start..start + w].iter().copied())
                .collect()
        })
        .collect())
}

fn cram_bench(a: &CramBenchArgs, quiet: bool) -> anyhow::Result<()> {
    check_sizes(&a.batch, &a.len)?;
    if a.steps == 0 || a.steps_per_text == 0 {
        anyhow::bail!("--steps and --steps-per-text must be at least 1");
    }
    let m = a.model.load()?;
    header(&m, quiet);
    let model = m.model.as_ref();
    let params = model.info().num_parameters as f64;
    let backend = m.model.info().kernels.record().to_string();
    // The paper's optimiser settings; 1 untimed warm-up step, then `steps`
    // timed ones; no stop for lack of progress.
    let cfg = CramConfig {
        n_mem: a.mem,
        optimizer: OptimizerConfig {
            max_steps: a.steps + 1,
            patience: usize::MAX,
            ..OptimizerConfig::default()
        },
        ..CramConfig::default()
    };
    let engine = Engine::new(&m, cfg)?;
    let mut dump = match &a.dump_texts {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("{}: cannot create", p.display()))?,
        )),
        None => None,
    };
    for &l in &a.len {
        for &b in &a.batch {
            let texts = prose_texts(&m, b, l)?;
            for ids in &texts {
                engine.check_text(ids)?;
            }
            if let Some(f) = dump.as_mut() {
                for (i, ids) in texts.iter().enumerate() {
                    writeln!(f, "{}", json!({"len": l, "index": i, "ids": ids}))?;
                }
            }
            // One timestamp per step, taken in the progress callback; the
            // live count before each step tells whether the whole batch ran.
            let mut marks = Vec::with_capacity(a.steps + 1);
            let mut live_after = Vec::with_capacity(a.steps + 1);
            let t0 = Instant::now();
            let results = engine.run(&texts, 0, |r| {
                marks.push(Instant::now());
                live_after.push(r.live);
            })?;
            let total_s = t0.elapsed().as_secs_f64();
            let last = *marks.last().context("the engine ran no step")?;
            let finish_s = total_s - (last - t0).as_secs_f64();
            let times: Vec<f64> = (1..marks.len())
                .filter(|&i| live_after[i - 1] == b)
                .map(|i| (marks[i] - marks[i - 1]).as_secs_f64())
                .collect();
            if times.is_empty() {
                anyhow::bail!("B={b} L={l}: every text stopped during the warm-up step");
            }
            let converged = results
                .iter()
                .filter(|r| r.stop_reason == StopReason::Converged)
                .count();
            let s = median(&times);
            let tokens = (l + a.mem) * b;
            let gflops = 4.0 * params * tokens as f64 / s / 1e9;
            let per_text_s = s * a.steps_per_text as f64 / b as f64;
            let texts_per_hour = 3600.0 / per_text_s;
            // The same with the per-batch work after the last step (original
            // metrics and greedy decode-back of every text) added.
            let texts_per_hour_with_finish = 3600.0 / (per_text_s + finish_s / b as f64);
            // The decode-back in steps' worth of compute, and as a share of
            // the batch's cramming time at `steps_per_text` steps.
            let finish_steps = finish_s / s;
            let finish_share = finish_s / (s * a.steps_per_text as f64);
            let mean_acc =
                results.iter().map(|r| r.best_accuracy).sum::<f64>() / results.len() as f64;
            if a.json {
                println!(
                    "{}",
                    json!({
                        "impl": "cram", "bench": "cram", "batch": b, "len": l,
                        "dtype": model.info().compute_dtype, "device": model.info().device,
                        "ms_per_step": round3(s * 1e3), "gflops": round3(gflops),
                        "steps_per_text": a.steps_per_text,
                        "texts_per_hour": round3(texts_per_hour),
                        "n_mem": a.mem, "timed_steps": times.len(),
                        "finish_s": round3(finish_s),
                        "finish_steps": round3(finish_steps),
                        "finish_share": round3(finish_share),
                        "texts_per_hour_with_finish": round3(texts_per_hour_with_finish),
                        "converged": converged, "mean_best_accuracy": round3(mean_acc),
                        "backend": backend,
                        "threads": candle_core::utils::get_num_threads(),
                    })
                );
            } else {
                println!(
                    "cram engine B={b} L={l} mem={}: {:.1} ms/step (median of {} steps), {:.1} GFLOP/s; \
                     at {} steps/text: {:.1} texts/hour ({:.1} with the {:.1} s per batch of decode-back, \
                     {:.1} steps' worth, {:.2}% of the cramming time); best accuracy after {} steps {:.3}",
                    a.mem,
                    s * 1e3,
                    times.len(),
                    gflops,
                    a.steps_per_text,
                    texts_per_hour,
                    texts_per_hour_with_finish,
                    finish_s,
                    finish_steps,
                    100.0 * finish_share,
                    a.steps + 1,
                    mean_acc
                );
            }
            if converged > 0 && !quiet {
                eprintln!(
                    "note: B={b} L={l}: {converged} text(s) converged early; only steps with the whole batch live were timed"
                );
            }
            std::io::stdout().flush()?;
        }
    }
    if let Some(mut f) = dump {
        f.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
