//! The kernel's entry points on arbitrary layers: `DlqConv::new` on a geometry, subspaces,
//! codes and assignments read from the input bytes (small dimensions, any indices), then `run`
//! on a matching input. Each must refuse or compute, never panic; run with `-a` (debug
//! assertions and overflow checks on), an overflow or a failed debug assertion is a crash.
#![no_main]

use dlq_kernels::{Codes, DlqConv, Geometry, Subspace};
use libfuzzer_sys::fuzz_target;

/// Reads small numbers from the input, then zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    /// `0..=max`, and now and then an extreme value.
    fn small(&mut self, max: usize) -> usize {
        match self.byte() {
            255 => usize::MAX,
            254 => 1 << 20,
            b => b as usize % (max + 1),
        }
    }
    fn value(&mut self) -> f32 {
        match self.byte() {
            255 => f32::NAN,
            254 => f32::INFINITY,
            b => b as f32 / 64.0 - 2.0,
        }
    }
}

fn layer(b: &mut Bytes) -> (Geometry, Vec<Subspace>, Option<Vec<f32>>, [usize; 3]) {
    let g = Geometry {
        in_channels: b.small(8),
        out_channels: b.small(8),
        kernel: [b.small(5), b.small(5)],
        strides: [b.small(3), b.small(3)],
        dilations: [b.small(3), b.small(3)],
        pads: [b.small(3), b.small(3), b.small(3), b.small(3)],
    };
    let width = b.small(4).max(1);
    let columns = g.out_channels.min(8) * g.kernel[0].min(5) * g.kernel[1].min(5);
    let mut subspaces = vec![];
    let mut start = 0;
    while start < g.in_channels.min(8) && subspaces.len() < 8 {
        let end = (start + width).min(8);
        let num_atoms = b.small(6);
        let dl = b.byte() % 2 == 1;
        let alpha = b.small(3);
        let reps = b.small(6);
        let atoms = (0..num_atoms.min(6) * (end - start))
            .map(|_| b.value())
            .collect();
        let codes = dl.then(|| Codes {
            alpha,
            atoms: (0..reps.min(6) * alpha.min(3))
                .map(|_| b.small(8) as u32)
                .collect(),
            coefficients: (0..reps.min(6) * alpha.min(3)).map(|_| b.value()).collect(),
        });
        let extra = (b.byte() % 2) as usize;
        let assignment = (0..columns + extra).map(|_| b.small(8) as u32).collect();
        subspaces.push(Subspace {
            channels: start..end,
            atoms,
            num_atoms,
            codes,
            assignment,
        });
        start = end;
    }
    let bias_len = b.byte() as usize % 10;
    let bias = (b.byte() % 2 == 1).then(|| (0..bias_len).map(|_| b.value()).collect());
    let input = [b.small(3), b.small(12), b.small(12)];
    (g, subspaces, bias, input)
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let (g, subspaces, bias, [batch, h, w]) = layer(&mut b);
    let Ok(conv) = DlqConv::new(g, subspaces, bias) else {
        return;
    };
    let g = conv.geometry();
    let Some([oh, ow]) = g.output_size(h, w) else {
        return;
    };
    let (n, m) = (g.in_channels, g.out_channels);
    let Some(out_len) = [batch, m, oh, ow]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&l| l <= 1 << 20)
    else {
        return;
    };
    let Some(x_len) = [batch, n, h, w]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&l| l <= 1 << 20)
    else {
        return;
    };
    let x = vec![0.5f32; x_len];
    let mut out = vec![0f32; out_len];
    let _ = conv.run(&x, batch, h, w, &mut out);
});
