//! The `cram` command-line program.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use cram::model::{self, LoadOptions, LoadedModel};

mod commands;
mod settings;

/// Counts the bytes in use, for `cram bench memory --measure`.
#[global_allocator]
static ALLOC: cram::alloc::Counting = cram::alloc::Counting;

#[derive(Parser)]
#[command(
    name = "cram",
    version,
    about = "Cram text into the input embeddings of a language model, and back"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print only errors.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(flatten)]
    kernels: settings::KernelArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Download a packaged model (smollm2-135m, gemma3-270m) into the model cache.
    Fetch {
        /// Which models (one or more names).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Describe a model: architecture, sizes, and the capacity of one vector.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cram texts into [mem] vectors and write them to .safetensors files.
    Compress {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        args: Box<commands::compress::CompressArgs>,
    },
    /// Find how many tokens each text's vectors hold: the horizon, the
    /// longest prefix greedy decoding reproduces, by a resumable stage
    /// search (gallop, climb or step:K) with warm starts.
    Capacity {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        args: Box<commands::capacity::CapacityArgs>,
    },
    /// Regenerate the text from a file written by `cram compress`.
    Decompress {
        #[command(flatten)]
        model: ModelArgs,
        /// The .safetensors file.
        file: std::path::PathBuf,
        /// Print JSON: token_ids, text, matches_original.
        #[arg(long)]
        json: bool,
    },
    /// Time forward+backward and the cramming engine (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        kind: commands::bench::BenchKind,
    },
    /// Run a sweep configuration's grid of cells into a run folder (resumable).
    Sweep {
        #[command(flatten)]
        args: commands::sweep::SweepArgs,
    },
    /// Write a run's cells as a table (csv, jsonl, parquet), one row per cell.
    Export {
        #[command(flatten)]
        args: commands::sweep::ExportArgs,
    },
    /// Combine runs of one configuration (e.g. shards) into one run folder.
    Merge {
        #[command(flatten)]
        args: commands::sweep::MergeArgs,
    },
    /// Check a run folder: database integrity, no duplicates, and with
    /// --config a complete grid.
    Check {
        #[command(flatten)]
        args: commands::sweep::CheckArgs,
    },
    /// Tables, figures and one index.html from the results of runs.
    Report {
        #[command(flatten)]
        args: commands::report::ReportArgs,
    },
    /// Greedy generation with a KV cache.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// How many tokens to generate at most.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Print JSON: prompt_ids, token_ids (generated only), text.
        #[arg(long)]
        json: bool,
    },
}

/// Options shared by every command that loads a model.
#[derive(Args, Clone)]
struct ModelArgs {
    /// A GGUF file, a Hugging Face model folder, a hub id, or a packaged
    /// model name (smollm2-135m, gemma3-270m).
    #[arg(long)]
    model: String,
    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Device: cpu, or cuda[:N] when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl ModelArgs {
    fn load(&self) -> anyhow::Result<LoadedModel> {
        self.load_with(settings::kernels())
    }

    /// [`ModelArgs::load`] with the given kernels instead of the flags'.
    fn load_with(&self, kernels: cram::kernels::Kernels) -> anyhow::Result<LoadedModel> {
        let dtype = match self.dtype.as_str() {
            "f32" => candle_core::DType::F32,
            "bf16" => candle_core::DType::BF16,
            "f16" => candle_core::DType::F16,
            other => anyhow::bail!("--dtype: unknown dtype `{other}` (expected f32, bf16 or f16)"),
        };
        let device = model::open_device(&self.device).context("--device")?;
        Ok(model::load(
            &self.model,
            &LoadOptions {
                device,
                dtype,
                kernels,
            },
        )?)
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fetch { names } => {
            for name in &names {
                let path = cram::fetch::fetch(name, !cli.quiet)?;
                println!("{}", path.display());
            }
        }
        Command::Inspect { model, json } => {
            let m = model.load()?;
            let info = m.model.info();
            // The trained vectors are input embeddings (narrower than the
            // residual stream for OPT's `word_embed_proj_dim`).
            let capacity = model::theoretical_capacity(info.input_size, info.vocab_size, 1, 16.0);
            let layout = cram::layout::Sink::Auto.resolve(&m.tokenizer)?;
            if json {
                let mut v = serde_json::to_value(info)?;
                v["model"] = m.spec.clone().into();
                v["capacity_tokens_per_vector"] = capacity.into();
                v["bos_id"] = m.tokenizer.bos_id().into();
                v["eos_id"] = m.tokenizer.eos_id().into();
                v["adds_bos"] = m.tokenizer.adds_bos().into();
                v["auto_layout"] = serde_json::to_value(&layout)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("model:            {}", m.spec);
                println!("architecture:     {}", info.architecture);
                println!("layers:           {}", info.num_layers);
                println!("hidden size:      {}", info.hidden_size);
                if info.input_size != info.hidden_size {
                    println!("input size:       {}", info.input_size);
                }
                if info.num_heads == 0 {
                    println!("heads:            none (attention-free)");
                } else {
                    println!(
                        "heads:            {} (key/value heads: {})",
                        info.num_heads, info.num_kv_heads
                    );
                }
                println!("vocabulary:       {}", info.vocab_size);
                println!("context length:   {}", info.context_length);
                println!("parameters:       {}", info.num_parameters);
                println!("weights dtype:    {}", info.weights_dtype);
                println!("compute dtype:    {}", info.compute_dtype);
                println!("device:           {}", info.device);
                println!("kernels:          {}", info.kernels.record());
                println!("embedding std:    {:.6}", info.embedding_std);
                println!(
                    "BOS/EOS:          {:?} / {:?} (BOS prepended: {})",
                    m.tokenizer.bos_id(),
                    m.tokenizer.eos_id(),
                    m.tokenizer.adds_bos()
                );
                println!("sink (auto):      {}", layout.describe());
                println!("capacity:         {capacity:.1} tokens per 16-bit vector (input size * 16 / log2(vocab))");
            }
        }
        Command::Compress { model, args } => {
            let m = model.load()?;
            commands::compress::compress(&m, &args, cli.quiet)?;
        }
        Command::Capacity { model, args } => {
            let m = model.load()?;
            commands::capacity::capacity(&m, &args, cli.quiet)?;
        }
        Command::Decompress { model, file, json } => {
            let m = model.load()?;
            commands::compress::decompress(&m, &file, json)?;
        }
        Command::Bench { kind } => commands::bench::run(&kind, cli.quiet)?,
        Command::Sweep { args } => commands::sweep::sweep(&args, cli.quiet)?,
        Command::Export { args } => commands::sweep::export(&args, cli.quiet)?,
        Command::Merge { args } => commands::sweep::merge(&args, cli.quiet)?,
        Command::Check { args } => commands::sweep::check(&args, cli.quiet)?,
        Command::Report { args } => commands::report::run(&args, cli.quiet)?,
        Command::Generate {
            model,
            prompt,
            max_new_tokens,
            json,
        } => {
            let m = model.load()?;
            let prompt_ids = m.tokenizer.encode(&prompt, true)?;
            if prompt_ids.is_empty() {
                anyhow::bail!("--prompt: the prompt has no tokens");
            }
            let ctx = m.model.info().context_length;
            if prompt_ids.len() + max_new_tokens > ctx {
                anyhow::bail!(
                    "--max-new-tokens: prompt ({} tokens) plus {max_new_tokens} new tokens exceeds the context length {ctx}",
                    prompt_ids.len()
                );
            }
            let ids = cram::generate::greedy(
                m.model.as_ref(),
                &prompt_ids,
                max_new_tokens,
                m.tokenizer.eos_ids(),
            )?;
            let text = m.tokenizer.decode(&ids, true)?;
            if json {
                let v =
                    serde_json::json!({"prompt_ids": prompt_ids, "token_ids": ids, "text": text});
                println!("{v}");
            } else {
                println!("{prompt}{text}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    settings::setup_process();
    let cli = Cli::parse();
    let filter = if cli.quiet { "error" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = settings::init_kernels(&cli.kernels) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    cram::blas::restart_with_better_core(settings::kernels().blas());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
