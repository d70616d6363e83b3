//! Criterion benches: score + per-row mask + N:M mask + DSnoT on LLaMA-7B shapes.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use symprune_core::dsnot::{self, Layout, RefineStats};
use symprune_core::{mask, score, ActStats, MatRef, Pattern, Score};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut g = symprune_core::rng::SplitMix64::stream(seed, symprune_core::rng::Axis::Row, 0);
    (0..n)
        .map(|_| (g.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("llama7b");
    group.sample_size(10);
    for &(rows, cols) in &[(4096usize, 4096usize), (4096, 11008)] {
        let w = random(rows * cols, 1);
        let sq: Vec<f32> = random(cols, 2).iter().map(|v| v.abs() * 10.0).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let id = format!("{rows}x{cols}");
        group.throughput(Throughput::Elements((rows * cols) as u64));
        let m = MatRef::new(&w, rows, cols, "w").unwrap();
        let mb = MatRef::new(&wb, rows, cols, "w").unwrap();
        let stats = ActStats {
            in_sq: Some(&sq),
            out_sq: None,
        };
        group.bench_function(BenchmarkId::new("wanda_score_f32", &id), |b| {
            b.iter(|| score::compute(m, stats, &Score::Wanda, "w").unwrap())
        });
        group.bench_function(BenchmarkId::new("ria_score_bf16", &id), |b| {
            b.iter(|| score::compute(mb, stats, &Score::Ria { a: 0.5 }, "w").unwrap())
        });
        let s = score::compute(m, stats, &Score::Wanda, "w").unwrap();
        let sm = MatRef::new(&s, rows, cols, "s").unwrap();
        group.bench_function(BenchmarkId::new("per_row_mask_50", &id), |b| {
            b.iter(|| mask::compute(sm, Pattern::PerRow { sparsity: 0.5 }, "s").unwrap())
        });
        let sb: Vec<bf16> = s.iter().map(|&v| bf16::from_f32(v)).collect();
        let smb = MatRef::new(&sb, rows, cols, "s").unwrap();
        group.bench_function(BenchmarkId::new("per_row_mask_50_bf16", &id), |b| {
            b.iter(|| mask::compute(smb, Pattern::PerRow { sparsity: 0.5 }, "s").unwrap())
        });
        group.bench_function(BenchmarkId::new("nm_mask_2_4", &id), |b| {
            b.iter(|| mask::compute(sm, Pattern::NM { n: 2, m: 4 }, "s").unwrap())
        });
        group.bench_function(BenchmarkId::new("nm_mask_4_8_bf16", &id), |b| {
            b.iter(|| mask::compute(smb, Pattern::NM { n: 4, m: 8 }, "s").unwrap())
        });
        group.bench_function(BenchmarkId::new("per_matrix_mask_50", &id), |b| {
            b.iter(|| mask::compute(sm, Pattern::PerMatrix { sparsity: 0.5 }, "s").unwrap())
        });
        let start = mask::compute(sm, Pattern::PerRow { sparsity: 0.6 }, "s").unwrap();
        let sum: Vec<f32> = random(cols, 3).iter().map(|v| v * 10.0).collect();
        let var: Vec<f32> = random(cols, 4).iter().map(|v| v.abs() + 0.01).collect();
        let rs = RefineStats {
            in_sq: &sq,
            sum: &sum,
            var: &var,
        };
        group.bench_function(BenchmarkId::new("dsnot_60_wanda_start", &id), |b| {
            b.iter(|| {
                let p = dsnot::Dsnot::default();
                dsnot::dsnot(m, rs, &start, Layout::PerRow, None, &p, "w").unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("r2dsnot_60_wanda_start", &id), |b| {
            b.iter(|| {
                let p = dsnot::R2Dsnot::default();
                dsnot::r2dsnot(m, rs, &start, Layout::PerRow, None, &p, "w").unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(core, benches);
criterion_main!(core);
