//! `bench_layer`: wall-clock timing of `DlqConv::run` on one clustered Conv layer.
//!
//! Builds a DL layer of the given sizes with seeded random atoms, codes and assignments (the
//! kernel's time depends only on the sizes, never on the values), times `run` on batch 1
//! (warm-up, then the median and minimum of `--reps` runs) and prints one JSON line: the sizes,
//! the times, the paper's counts (multiplications `m²(N·L + α·S·K)`, look-up additions
//! `kh·kw·M·S` per output position), the achieved GFLOP/s (a multiply-add = 2 flops, a look-up
//! add = 1), the time of each phase (Z, R, look-up adds; measured by the crate's hidden
//! `run_timed`, `run` with a clock read between the phases, checked to produce `run`'s output bit
//! for bit), the SIMD level `run` dispatched to, the median of the forced portable path
//! (`run_on` the portable path) and, for orientation only, the crate's *naive* f64 reference `dense_conv`
//! (not a tuned dense convolution).
//!
//! `--ceiling` instead prints this machine's ceilings: FMA throughput (AVX2+FMA intrinsics and
//! AVX-512 inline assembly, each when the CPU has it), copy bandwidth (64 MiB, i.e. DRAM, and
//! 256 KiB, L2), an L2-resident `a[i] += b[i]` rate compiled like the kernel's look-up adds, and
//! (AVX2) the row path's pattern of FMAs with a load each, as one stream and in the kernel's
//! blocks of 18 terms per channel (`fma_load_pattern`).
//!
//! ```text
//! cargo run --release -p dlq-kernels --example bench_layer -- [--m 256 --n 64 --h 13 --w 13
//!     --k 3 --pad 1 --stride 1 --subspace 8 --l 28 --k-reps 345 --alpha 2 --reps 200 --warmup 20
//!     --dense-reps 3 --seed 1 --threads 2] [--ceiling]
//! ```
//!
//! With `--threads T` (default 2; 1 skips it) it also times `run_parallel` on T threads: on a
//! persistent spinning pool (like ONNX Runtime's intra-op pool; the calling thread takes part)
//! and on scoped threads spawned per `par` call, and checks both give `run`'s output bit for bit.
//! Defaults: SqueezeNet `fire8/expand3x3` at ρ = 20 (N′ = 8, c = 3, α = 2).

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dlq_kernels::{dense_conv, Codes, DlqConv, Geometry, KernelPath, PhaseTimes, Subspace};

/// Layer sizes and run counts from the command line.
#[derive(Debug, Clone)]
struct Args {
    m: usize,
    n: usize,
    h: usize,
    w: usize,
    k: usize,
    pad: usize,
    stride: usize,
    subspace: usize,
    l: usize,
    k_reps: usize,
    alpha: usize,
    reps: usize,
    warmup: usize,
    dense_reps: usize,
    seed: u64,
    ceiling: bool,
    threads: usize,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut a = Args {
            m: 256,
            n: 64,
            h: 13,
            w: 13,
            k: 3,
            pad: 1,
            stride: 1,
            subspace: 8,
            l: 28,
            k_reps: 345,
            alpha: 2,
            reps: 200,
            warmup: 20,
            dense_reps: 3,
            seed: 1,
            ceiling: false,
            threads: 2,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--ceiling" {
                a.ceiling = true;
                continue;
            }
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let v: u64 = value
                .parse()
                .map_err(|_| format!("{flag}: not a number: {value}"))?;
            let u = v as usize;
            match flag.as_str() {
                "--m" => a.m = u,
                "--n" => a.n = u,
                "--h" => a.h = u,
                "--w" => a.w = u,
                "--k" => a.k = u,
                "--pad" => a.pad = u,
                "--stride" => a.stride = u,
                "--subspace" => a.subspace = u,
                "--l" => a.l = u,
                "--k-reps" => a.k_reps = u,
                "--alpha" => a.alpha = u,
                "--reps" => a.reps = u,
                "--warmup" => a.warmup = u,
                "--dense-reps" => a.dense_reps = u,
                "--seed" => a.seed = v,
                "--threads" => a.threads = u,
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if a.subspace == 0 || a.reps == 0 || a.stride == 0 {
            return Err("--subspace, --stride and --reps must be at least 1".into());
        }
        Ok(a)
    }
}

/// xorshift64*, as in the crate's tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> u32 {
        (self.next() % n as u64) as u32
    }

    /// Uniform in [−1, 1).
    fn value(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }
}

/// A DL layer with random values: subspaces of `a.subspace` consecutive channels (the last may be
/// narrower), L atoms, K representatives of α atoms each, a random Γ.
fn random_layer(a: &Args, rng: &mut Rng) -> Result<DlqConv, String> {
    let geometry = Geometry {
        in_channels: a.n,
        out_channels: a.m,
        kernel: [a.k, a.k],
        strides: [a.stride; 2],
        dilations: [1, 1],
        pads: [a.pad; 4],
    };
    let taps = a.m * a.k * a.k;
    let subspaces = (0..a.n)
        .step_by(a.subspace)
        .map(|start| {
            let channels = start..(start + a.subspace).min(a.n);
            Subspace {
                atoms: rng.values(a.l * channels.len()),
                channels,
                num_atoms: a.l,
                codes: Some(Codes {
                    alpha: a.alpha,
                    atoms: (0..a.k_reps * a.alpha).map(|_| rng.below(a.l)).collect(),
                    coefficients: rng.values(a.k_reps * a.alpha),
                }),
                assignment: (0..taps).map(|_| rng.below(a.k_reps)).collect(),
            }
        })
        .collect();
    DlqConv::new(geometry, subspaces, None).map_err(|e| format!("{e:?}"))
}

/// Median and minimum of a list of seconds, in milliseconds.
fn median_min_ms(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2] * 1e3, times[0] * 1e3)
}

// ---------------------------------------------------------------------------------------------
// Machine ceilings.

/// FMA throughput with `ACC` independent 256-bit accumulators; returns GFLOP/s (FMA = 2 flops).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    const ACC: usize = 12;
    let mut acc = [_mm256_set1_ps(1.0); ACC];
    let a = _mm256_set1_ps(black_box(0.999_999_9));
    let b = _mm256_set1_ps(black_box(1e-7));
    let t = Instant::now();
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    black_box(acc);
    (iters * ACC * 8 * 2) as f64 / secs / 1e9
}

/// As [`fma_avx2`] with 14 independent 512-bit accumulators, in inline assembly (written when
/// the crate's MSRV was 1.85, below the AVX-512 intrinsics' 1.89; kept as the same measurement).
/// Only zmm0–zmm15 are used; `clobber_abi("C")` declares them (all caller-saved) clobbered.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
unsafe fn fma_avx512(iters: usize) -> f64 {
    const ACC: usize = 14;
    let (a, b) = (black_box(0.999_999_9f32), black_box(1e-7f32));
    let t = Instant::now();
    std::arch::asm!(
        "vbroadcastss zmm14, dword ptr [{a}]",
        "vbroadcastss zmm15, dword ptr [{b}]",
        "vmovaps zmm0, zmm15", "vmovaps zmm1, zmm15", "vmovaps zmm2, zmm15",
        "vmovaps zmm3, zmm15", "vmovaps zmm4, zmm15", "vmovaps zmm5, zmm15",
        "vmovaps zmm6, zmm15", "vmovaps zmm7, zmm15", "vmovaps zmm8, zmm15",
        "vmovaps zmm9, zmm15", "vmovaps zmm10, zmm15", "vmovaps zmm11, zmm15",
        "vmovaps zmm12, zmm15", "vmovaps zmm13, zmm15",
        "2:",
        "vfmadd213ps zmm0, zmm14, zmm15", "vfmadd213ps zmm1, zmm14, zmm15",
        "vfmadd213ps zmm2, zmm14, zmm15", "vfmadd213ps zmm3, zmm14, zmm15",
        "vfmadd213ps zmm4, zmm14, zmm15", "vfmadd213ps zmm5, zmm14, zmm15",
        "vfmadd213ps zmm6, zmm14, zmm15", "vfmadd213ps zmm7, zmm14, zmm15",
        "vfmadd213ps zmm8, zmm14, zmm15", "vfmadd213ps zmm9, zmm14, zmm15",
        "vfmadd213ps zmm10, zmm14, zmm15", "vfmadd213ps zmm11, zmm14, zmm15",
        "vfmadd213ps zmm12, zmm14, zmm15", "vfmadd213ps zmm13, zmm14, zmm15",
        "dec rcx",
        "jnz 2b",
        "vzeroupper",
        a = in(reg) &a,
        b = in(reg) &b,
        inout("rcx") iters.max(1) => _,
        clobber_abi("C"),
        options(nostack),
    );
    let secs = t.elapsed().as_secs_f64();
    (iters.max(1) * ACC * 16 * 2) as f64 / secs / 1e9
}

/// The row path's access pattern, idealised: 14 ymm accumulators (7 rows × 2 vectors, the
/// second at column 5 as at fire8's 13 columns), each term one broadcast coefficient and 14
/// fused multiply-adds whose second operand is a 32-byte load from one of 8 L1-resident planes
/// (a 64-byte row pitch, a column shift of 0–2: no load splits a line). With `block` = 0 the
/// terms form one endless stream; otherwise every `block` terms the accumulators are stored and
/// another channel's loaded (from a ring of 64, L1-resident), as the kernel does per channel
/// and band. Returns GFLOP/s (FMA = 2 flops): the most this pattern of loads and FMAs reaches.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_load_pattern(terms: usize, block: usize) -> f64 {
    use std::arch::x86_64::*;
    const PLANE: usize = 240; // 15 rows of 16 floats
    let planes: Vec<f32> = (0..8 * PLANE + 64).map(|i| (i % 7) as f32 * 1e-3).collect();
    let lead = (64 - planes.as_ptr() as usize % 64) % 64 / 4;
    let z = planes.as_ptr().add(lead);
    let mut ring = vec![0.0f32; 64 * 14 * 8];
    let coefs: Vec<f32> = (0..64).map(|i| 0.5 + i as f32 * 1e-3).collect();
    // Per term (as the kernel's term tables): a plane, a row shift 0–2, a column shift 0–2.
    let offsets: Vec<usize> = (0..64)
        .map(|e| (e * 5 % 8) * PLANE + (e / 3 % 3) * 16 + e % 3)
        .collect();
    let mut out = [_mm256_setzero_ps(); 14];
    let t = Instant::now();
    for e in 0..terms {
        if block > 0 && e % block == 0 {
            let slot = ring.as_mut_ptr().add(e / block % 64 * 14 * 8);
            for (i, x) in out.iter_mut().enumerate() {
                _mm256_storeu_ps(slot.add(8 * i), *x);
                *x = _mm256_loadu_ps(slot.add((8 * i + 14 * 8) % (64 * 14 * 8)));
            }
        }
        let src = z.add(*offsets.get_unchecked(e % 64));
        let c = _mm256_set1_ps(*coefs.get_unchecked(e % 64));
        for r in 0..7 {
            for q in 0..2 {
                let x = &mut out[2 * r + q];
                *x = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(16 * r + 5 * q)), *x);
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    black_box((&out, &ring));
    (terms * 14 * 8 * 2) as f64 / secs / 1e9
}

/// Best of `tries` calls of `f` (each returning a rate): the machine is shared, so the best is the
/// closest to the ceiling.
fn best_of(tries: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..tries).map(|_| f()).fold(0.0, f64::max)
}

/// Copy bandwidth over `bytes`-sized buffers, counting bytes read + written, in GB/s.
fn copy_bandwidth(bytes: usize, repeats: usize) -> f64 {
    let n = bytes / 4;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; n];
    dst.copy_from_slice(&src);
    let t = Instant::now();
    for _ in 0..repeats {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
    (2 * bytes * repeats) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// `a[i] += b[i]` over `bytes`-sized buffers (the look-up adds' operation, compiled with the same
/// flags as the kernel, long contiguous runs), in G adds/s.
fn add_rate(bytes: usize, repeats: usize) -> f64 {
    let n = bytes / 4;
    let b: Vec<f32> = (0..n).map(|i| i as f32 * 1e-9).collect();
    let mut a = vec![0.0f32; n];
    let t = Instant::now();
    for _ in 0..repeats {
        for (x, &y) in a.iter_mut().zip(black_box(&b)) {
            *x += y;
        }
        black_box(&mut a);
    }
    (n * repeats) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn ceiling() {
    let mut fields = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let iters = 20_000_000;
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            let g = best_of(5, || unsafe { fma_avx2(iters) });
            fields.push(format!("\"fma_avx2_gflops\":{g:.1}"));
            // SAFETY (both): the CPU has AVX2 and FMA (checked above).
            let stream = best_of(5, || unsafe { fma_load_pattern(iters / 10, 0) });
            fields.push(format!("\"fma_load_stream_avx2_gflops\":{stream:.1}"));
            let blocks = best_of(5, || unsafe { fma_load_pattern(iters / 10, 18) });
            fields.push(format!("\"fma_load_blocks18_avx2_gflops\":{blocks:.1}"));
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            let g = best_of(5, || unsafe { fma_avx512(iters) });
            fields.push(format!("\"fma_avx512_gflops\":{g:.1}"));
        }
    }
    let dram = best_of(5, || copy_bandwidth(64 << 20, 4));
    fields.push(format!("\"copy_64mib_gbs\":{dram:.1}"));
    let l2 = best_of(5, || copy_bandwidth(256 << 10, 2000));
    fields.push(format!("\"copy_256kib_gbs\":{l2:.1}"));
    let adds = best_of(5, || add_rate(256 << 10, 2000));
    fields.push(format!("\"add_256kib_gadds\":{adds:.2}"));
    println!("{{\"ceiling\":true,{}}}", fields.join(","));
}

/// Median and min in ms of `reps` timed calls of `f` after `warmup` untimed ones.
fn time_ms(warmup: usize, reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let times = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    median_min_ms(times)
}

/// Median ms of each phase (`run_timed` is `run` with a clock read between the phases; their
/// sum approximates `run`), and whether `run_timed` reproduced `out` exactly.
fn time_phases(conv: &DlqConv, a: &Args, x: &[f32], out: &[f32]) -> ([f64; 4], bool) {
    let mut phased = vec![0.0f32; out.len()];
    let mut timed = || {
        let mut p = PhaseTimes::default();
        conv.run_timed(x, 1, a.h, a.w, &mut phased, &mut p)
            .expect("valid sizes");
        p
    };
    for _ in 0..a.warmup {
        timed();
    }
    let phases: Vec<PhaseTimes> = (0..a.reps).map(|_| timed()).collect();
    let phase_ms = |f: fn(&PhaseTimes) -> f64| median_min_ms(phases.iter().map(f).collect()).0;
    let ms = [
        phase_ms(|p| p.init),
        phase_ms(|p| p.z),
        phase_ms(|p| p.r),
        phase_ms(|p| p.taps),
    ];
    (ms, phased == out)
}

/// The naive reference's time (for orientation only: f64 accumulation, no blocking, no SIMD),
/// and the largest |out − reference| with the reference's largest magnitude.
fn reference(conv: &DlqConv, a: &Args, x: &[f32], out: &[f32]) -> (f64, f32, f32) {
    let weight = conv.reconstruct();
    let mut reference = vec![0.0f32; out.len()];
    let (dense_ms, _) = time_ms(0, a.dense_reps.max(1), || {
        dense_conv(
            x,
            1,
            a.n,
            a.h,
            a.w,
            &weight,
            conv.geometry(),
            None,
            &mut reference,
        )
        .expect("valid sizes");
    });
    let scale_ref = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let max_err = out
        .iter()
        .zip(&reference)
        .fold(0.0f32, |m, (o, r)| m.max((o - r).abs()));
    (dense_ms, max_err, scale_ref)
}

// ---------------------------------------------------------------------------------------------
// A persistent thread pool for `run_parallel`, as a host engine would drive it.

/// One `par` call's job: the task count, the task (its lifetime erased: it is only called for
/// indices below `n`, all of which finish before the publishing `par` call returns) and the call's
/// own counters. Each call gets a fresh `Job`, so a worker still holding an earlier call's job can
/// only draw indices ≥ n from it and never runs a finished call's task (a single shared pair of
/// counters, reset per call, let a late worker draw index 0 of the next call and run it with the
/// previous call's dangling task: the likely cause of a hang seen once at fire4 ρ = 4).
struct Job {
    n: usize,
    task: *const (dyn Fn(usize) + Sync),
    next: AtomicUsize,
    done: AtomicUsize,
}

// SAFETY: `task` is only dereferenced for an index below `n` drawn from `next`, while the `par`
// call that published it is blocked waiting for `done` to reach `n` (so the task is alive and
// `Sync`).
unsafe impl Sync for Job {}
unsafe impl Send for Job {}

impl Job {
    /// Takes task indices until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.n {
                break;
            }
            // SAFETY: i < n, so the publishing `par` call is still waiting for this task.
            unsafe { (*self.task)(i) };
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

struct Shared {
    generation: AtomicUsize,
    job: Mutex<Option<Arc<Job>>>,
    stop: AtomicBool,
}

/// `threads − 1` spinning workers plus the calling thread; tasks are handed out by an atomic
/// counter.
struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl SpinPool {
    fn new(threads: usize) -> SpinPool {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|_| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while !shared.stop.load(Ordering::Acquire) {
                        let generation = shared.generation.load(Ordering::Acquire);
                        if generation == seen {
                            std::hint::spin_loop();
                            continue;
                        }
                        seen = generation;
                        let job = shared.job.lock().unwrap().clone();
                        if let Some(job) = job {
                            job.work();
                        }
                    }
                })
            })
            .collect();
        SpinPool { shared, workers }
    }

    /// The `par` driver: publishes a fresh job, works on it, waits for every task to finish.
    fn par(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        // SAFETY: erases the lifetime only; the pointer is dereferenced only for indices below
        // n, all finished before this call returns (see `Job`).
        let task: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job {
            n,
            task,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        });
        *self.shared.job.lock().unwrap() = Some(Arc::clone(&job));
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        job.work();
        while job.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A `par` driver spawning `threads` scoped threads per call.
fn scoped_par(threads: usize) -> impl Fn(usize, &(dyn Fn(usize) + Sync)) {
    move |n, f| {
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    f(i);
                });
            }
        });
    }
}

/// `run_parallel` on `a.threads` threads: (pool median, pool min, scoped median, scoped min,
/// both bit-identical to `out`).
fn time_threads(conv: &DlqConv, a: &Args, x: &[f32], out: &[f32]) -> (f64, f64, f64, f64, bool) {
    let mut par_out = vec![0.0f32; out.len()];
    let (pool_med, pool_min, pool_same) = {
        let pool = SpinPool::new(a.threads);
        let par = |n: usize, f: &(dyn Fn(usize) + Sync)| pool.par(n, f);
        let (med, min) = time_ms(a.warmup, a.reps, || {
            conv.run_parallel(black_box(x), 1, a.h, a.w, &mut par_out, &par)
                .expect("valid sizes");
            black_box(&mut par_out);
        });
        (med, min, par_out == out)
    };
    let scoped = scoped_par(a.threads);
    par_out.fill(0.0);
    let (scoped_med, scoped_min) = time_ms(a.warmup, a.reps, || {
        conv.run_parallel(black_box(x), 1, a.h, a.w, &mut par_out, &scoped)
            .expect("valid sizes");
        black_box(&mut par_out);
    });
    let same = pool_same
        && par_out
            .iter()
            .zip(out)
            .all(|(p, q)| p.to_bits() == q.to_bits());
    (pool_med, pool_min, scoped_med, scoped_min, same)
}

fn main() -> ExitCode {
    let a = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_layer: {e}");
            return ExitCode::FAILURE;
        }
    };
    if a.ceiling {
        ceiling();
        return ExitCode::SUCCESS;
    }
    let mut rng = Rng(a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let conv = match random_layer(&a, &mut rng) {
        Ok(conv) => conv,
        Err(e) => {
            eprintln!("bench_layer: invalid layer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some([oh, ow]) = conv.geometry().output_size(a.h, a.w) else {
        eprintln!("bench_layer: the kernel does not fit the input");
        return ExitCode::FAILURE;
    };
    let x = rng.values(a.n * a.h * a.w);
    let mut out = vec![0.0f32; a.m * oh * ow];

    let (median_ms, min_ms) = time_ms(a.warmup, a.reps, || {
        conv.run(black_box(&x), 1, a.h, a.w, &mut out)
            .expect("valid sizes");
        black_box(&mut out);
    });
    let ([init_ms, z_ms, r_ms, taps_ms], phases_match_run) = time_phases(&conv, &a, &x, &out);
    // The portable path (no intrinsics), same warm-up and repetitions, for comparison.
    let mut portable = vec![0.0f32; out.len()];
    let (portable_ms, _) = time_ms(a.warmup, a.reps, || {
        conv.run_on(
            KernelPath::PORTABLE,
            black_box(&x),
            1,
            a.h,
            a.w,
            &mut portable,
        )
        .expect("valid sizes");
        black_box(&mut portable);
    });
    let (dense_ms, max_err, scale_ref) = reference(&conv, &a, &x, &out);
    let (par_ms, par_min_ms, scoped_ms, scoped_min_ms, par_same) = if a.threads > 1 {
        time_threads(&conv, &a, &x, &out)
    } else {
        (median_ms, min_ms, median_ms, min_ms, true)
    };

    let s = a.n.div_ceil(a.subspace);
    let positions = (oh * ow) as f64;
    let multiplications = positions * (a.n * a.l + a.alpha * s * a.k_reps) as f64;
    let additions = positions * (a.k * a.k * a.m * s) as f64;
    let dense_multiplications = positions * (a.k * a.k * a.m * a.n) as f64;
    let gflops = (2.0 * multiplications + additions) / (median_ms * 1e-3) / 1e9;
    println!(
        "{{\"m\":{},\"n\":{},\"h\":{},\"w\":{},\"k\":{},\"pad\":{},\"subspace\":{},\"s\":{},\
         \"l\":{},\"k_reps\":{},\"alpha\":{},\"oh\":{oh},\"ow\":{ow},\"reps\":{},\
         \"median_ms\":{median_ms:.4},\"min_ms\":{min_ms:.4},\
         \"multiplications\":{multiplications},\"additions\":{additions},\
         \"dense_multiplications\":{dense_multiplications},\"gflops\":{gflops:.2},\
         \"phase_init_ms\":{init_ms:.4},\"phase_z_ms\":{z_ms:.4},\"phase_r_ms\":{r_ms:.4},\
         \"phase_taps_ms\":{taps_ms:.4},\"phases_match_run\":{phases_match_run},\
         \"simd\":\"{simd}\",\"portable_ms\":{portable_ms:.4},\
         \"naive_dense_reference_ms\":{dense_ms:.3},\"max_abs_err_vs_reference\":{max_err:.3e},\
         \"reference_max_abs\":{scale_ref:.3e},\"threads\":{threads},\
         \"threads_median_ms\":{par_ms:.4},\"threads_min_ms\":{par_min_ms:.4},\
         \"threads_scoped_median_ms\":{scoped_ms:.4},\"threads_scoped_min_ms\":{scoped_min_ms:.4},\
         \"threads_bit_identical\":{par_same}}}",
        a.m,
        a.n,
        a.h,
        a.w,
        a.k,
        a.pad,
        a.subspace,
        s,
        a.l,
        a.k_reps,
        a.alpha,
        a.reps,
        simd = DlqConv::simd_level(),
        threads = a.threads,
    );
    if phases_match_run && par_same {
        ExitCode::SUCCESS
    } else {
        eprintln!("bench_layer: run_timed or run_parallel does not reproduce run's output");
        ExitCode::FAILURE
    }
}
