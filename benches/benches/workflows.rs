//! Criterion benches of the scope workflows on random weights: SAE encode throughput, latent
//! collection, steered greedy generation (batch 1) and the JumpReLU interchange.
//!
//! CPU: the `small` shapes (hidden 512, 8 layers, SAE 4096 at layer 6), f32. With a GPU, the
//! gemma-2-2b shapes (SAE 16384 at layer 20) in bf16 as well. Sample sizes are small so that
//! `cargo bench -p scope-benches` finishes in a few minutes on two cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gemma_model::{Batch, DecodeMode};
use scope_benches::{sync, Size, Workbench, PROMPT_LEN, STEER_LATENT, STEER_MAGNITUDE};
use tch::{Device, Kind, Tensor};

/// Batch x sequence of the collection bench, and tokens generated per steered run.
struct Plan {
    batch: i64,
    seq: i64,
    new: usize,
}

fn targets() -> Vec<(Size, Device, Kind, Plan)> {
    let mut t = vec![(
        Size::Small,
        Device::Cpu,
        Kind::Float,
        Plan {
            batch: 4,
            seq: 128,
            new: 16,
        },
    )];
    if scope_benches::cuda_available() {
        t.push((
            Size::Gemma2b,
            Device::Cuda(0),
            Kind::BFloat16,
            Plan {
                batch: 16,
                seq: 128,
                new: 64,
            },
        ));
    }
    t
}

fn label(size: Size, device: Device, dtype: Kind) -> String {
    let dev = match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda{i}"),
        other => format!("{other:?}"),
    };
    format!(
        "{}-{dev}-{}",
        size.name(),
        gemma_model::device::dtype_name(dtype)
    )
}

fn workflows(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    for (size, device, dtype, plan) in targets() {
        let bench = Workbench::new(size, device, dtype).expect("workbench");
        let name = label(size, device, dtype);
        let tokens = plan.batch * plan.seq;

        // SAE encode of `tokens` activations in the model dtype.
        {
            let d = bench.model.config().hidden_size;
            let x = Tensor::randn([plan.batch, plan.seq, d], (dtype, device));
            let mut g = c.benchmark_group("sae_encode");
            g.throughput(Throughput::Elements(tokens as u64));
            g.bench_function(BenchmarkId::new(&name, tokens), |b| {
                b.iter(|| {
                    let acts = bench.sae.sae.encode(&x).unwrap();
                    sync(device);
                    acts
                })
            });
            g.finish();
        }

        // Latent collection at the SAE layer (stops after it).
        {
            let batch = Batch::new(bench.ids(plan.batch, plan.seq, 2).unwrap());
            let graph = bench.collector().unwrap();
            let mut g = c.benchmark_group("collect_latents");
            g.throughput(Throughput::Elements(tokens as u64));
            g.bench_function(
                BenchmarkId::new(&name, format!("{}x{}", plan.batch, plan.seq)),
                |b| {
                    b.iter(|| {
                        let acts = Workbench::collect_latents(&graph, &batch).unwrap();
                        sync(device);
                        acts
                    })
                },
            );
            g.finish();
        }

        // Steered greedy generation (`scope::steer`, one 14-token prompt; its graph is built
        // in the call).
        {
            let prompt = scope_benches::id_vec(&bench.ids(1, PROMPT_LEN, 3).unwrap()).unwrap();
            let pairs = [(STEER_LATENT, STEER_MAGNITUDE)];
            let mut g = c.benchmark_group("generate_steered");
            g.throughput(Throughput::Elements(plan.new as u64));
            g.bench_function(
                BenchmarkId::new(&name, format!("batch1-new{}", plan.new)),
                |b| {
                    b.iter(|| {
                        let out = bench
                            .generate_steered(&prompt, &pairs, plan.new, DecodeMode::Auto)
                            .unwrap();
                        sync(device);
                        out
                    })
                },
            );
            g.finish();
        }

        // JumpReLU interchange with the clean run (latency).
        {
            let graph = bench.interchanger().unwrap();
            let (base, source) = bench.interchange_inputs(4).unwrap();
            let mut g = c.benchmark_group("interchange");
            g.throughput(Throughput::Elements(1));
            g.bench_function(BenchmarkId::new(&name, "15+12"), |b| {
                b.iter(|| {
                    let diff = Workbench::interchange(&graph, &base, &source).unwrap();
                    sync(device);
                    diff
                })
            });
            g.finish();
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = workflows
}
criterion_main!(benches);
