//! Times one 3x3 convolution layer (batch 128, 64 -> 64 channels, 32x32, padding 1) forward
//! and backward (data + weight) through the CPU backend, and prints milliseconds.
//!
//! `cargo run --release -p shears-engine --example conv_bench [threads] [reps]`

use std::time::Instant;

use shears_engine::kernels::conv::ConvGeom;
use shears_engine::{Backend, CpuBackend};
use shears_ir::Conv2d;

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// CPU time of the whole process (all threads), milliseconds: on a machine shared with other
/// jobs, CPU time / threads estimates the wall time on idle cores.
fn cpu_ms() -> f64 {
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: plain libc call with a valid out pointer; 2 is CLOCK_PROCESS_CPUTIME_ID on Linux.
    unsafe { clock_gettime(2, &mut t) };
    t.sec as f64 * 1e3 + t.nsec as f64 * 1e-6
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let (n, c, hw) = (128, 64, 32);
    let conv = Conv2d::new(c, c, 3).with_padding(1);
    let g = ConvGeom::new(&conv, hw, hw).expect("geometry");
    let be = CpuBackend;
    let x: Vec<f32> = (0..n * g.in_len())
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let w: Vec<f32> = (0..g.weight_len())
        .map(|i| ((i * 104729) % 1000) as f32 / 20000.0 - 0.025)
        .collect();
    let packed = be.pack_conv(&g, &w);
    let mut y = vec![0.0f32; n * g.out_len()];
    let mut dx = vec![0.0f32; n * g.in_len()];
    let mut dw = vec![0.0f32; g.weight_len()];
    let time = |f: &mut dyn FnMut()| -> f64 {
        f();
        let mut best = f64::MAX;
        let mut total = 0.0;
        let mut best_cpu = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            let c = cpu_ms();
            f();
            let dt = t.elapsed().as_secs_f64() * 1e3;
            best_cpu = best_cpu.min((cpu_ms() - c) / threads as f64);
            best = best.min(dt);
            total += dt;
        }
        println!(
            "    wall best {best:.1} ms, mean {:.1} ms; cpu time / threads best {best_cpu:.1} ms",
            total / reps as f64
        );
        best
    };
    pool.install(|| {
        println!("conv 3x3 {n}x{c}x{hw}x{hw} -> {c}, {threads} threads, {reps} reps");
        println!("forward:");
        let f = time(&mut || be.conv2d_forward(&g, n, &x, &packed, None, false, &mut y));
        println!("backward data:");
        let bd = time(&mut || be.conv2d_backward_data(&g, n, &y, &packed, &mut dx, false));
        println!("backward weight:");
        let bw = time(&mut || be.conv2d_backward_weight(&g, n, &x, &y, &mut dw, None));
        println!(
            "forward {f:.1} ms, backward (data + weight) {:.1} ms",
            bd + bw
        );
    });
}
