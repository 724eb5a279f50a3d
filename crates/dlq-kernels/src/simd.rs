//! The hot loops of `DlqConv::run`, each as a portable version and an explicit x86-64 AVX2 + FMA
//! version (the look-up adds also in AVX-512F), picked at run time ([`Isa::detect`],
//! `is_x86_feature_detected!`; AVX-512 intrinsics need Rust 1.89, the crate's MSRV).
//!
//! Every entry point here is safe: it checks the lengths the SIMD code relies on (a few compares
//! per call, never per element) and panics on a violation — which `run` never causes, because it
//! sizes every buffer itself and `DlqConv::new` validated every index. `unsafe` appears only in
//! the `x86` module, whose functions state their preconditions and are called only after the
//! checks and the CPU-feature test.
//!
//! All lengths are multiples of [`BLOCK`] floats (the scratch planes are padded to it), so the
//! SIMD loops have no tails. The portable and SIMD versions differ only by float rounding:
//! `accumulate` sums in the same order in both (bitwise equal); `accumulate_scaled`,
//! `atom_responses` and `representatives` use fused multiply-adds in the SIMD versions.

/// Granularity of every vector loop: 16 floats (two AVX2 vectors, one AVX-512 vector).
pub(crate) const BLOCK: usize = 16;

/// Sources of at least this many floats (32 KiB, more than L1 holds next to the rest) are read
/// by the AVX-512 look-up adds as aligned vectors shifted in registers; smaller ones stay in L1,
/// where plain unaligned loads measured about 10% faster than the extra permutes (ResNet-20
/// layer3's Z), while on fire8's R (0.33 MiB, in L2) the aligned reads cut the adds by 30%.
const ALIGNED_MIN_LEN: usize = 8192;

/// Which implementation of the hot loops to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Plain Rust loops (autovectorised to the compile target's baseline).
    Portable,
    /// x86-64 AVX2 + FMA intrinsics; only ever chosen after the CPU reported both features.
    Avx2Fma,
    /// As `Avx2Fma`, with the look-up adds in AVX-512F (up to 16 zmm accumulators); only ever
    /// chosen after the CPU reported AVX-512F, AVX2 and FMA.
    Avx512,
}

impl Isa {
    /// The best implementation this CPU supports.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            return Isa::Avx2Fma;
        }
        Isa::Portable
    }

    /// Every implementation, whether this CPU can run it or not.
    pub(crate) const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2Fma, Isa::Avx512];

    /// Whether this CPU can run `self`.
    pub(crate) fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        #[cfg(target_arch = "x86_64")]
        let avx512 = avx2 && std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let (avx2, avx512) = (false, false);
        match self {
            Isa::Portable => true,
            Isa::Avx2Fma => avx2,
            Isa::Avx512 => avx512,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Avx512 => "avx512f+avx2+fma",
        }
    }
}

/// `acc[p] += r[offsets[0] + p] + r[offsets[1] + p] + …` for every `p < acc.len()`, summed left
/// to right. Panics unless `acc.len()` is a multiple of [`BLOCK`] and every
/// `offset + acc.len() <= r.len()`.
pub(crate) fn accumulate(isa: Isa, acc: &mut [f32], r: &[f32], offsets: &[usize]) {
    let len = acc.len();
    assert!(
        len.is_multiple_of(BLOCK),
        "accumulate: length {len} not a multiple of {BLOCK}"
    );
    for &o in offsets {
        assert!(
            o.checked_add(len).is_some_and(|end| end <= r.len()),
            "accumulate: run out of bounds"
        );
    }
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: CPU features checked by `detect`; lengths (and, for the aligned version, the
        // block before and after every run) checked just above and in `aligned_reads_fit`.
        Isa::Avx512 if r.len() >= ALIGNED_MIN_LEN && aligned_reads_fit(r, offsets, len) => {
            return unsafe { x86::accumulate_avx512_aligned(acc, r, offsets, None) }
        }
        Isa::Avx512 => return unsafe { x86::accumulate_avx512(acc, r, offsets, None) },
        Isa::Avx2Fma => return unsafe { x86::accumulate(acc, r, offsets) },
        Isa::Portable => {}
    }
    let _ = isa;
    for &o in offsets {
        for (a, &s) in acc.iter_mut().zip(&r[o..o + len]) {
            *a += s;
        }
    }
}

/// Whether every run `r[o..o + len]` can be read as whole 64-byte-aligned blocks: from the
/// aligned block containing `r[o]` (inside `r`) up to one block past `o + len` (inside `r`).
/// The AVX-512 look-up adds then load only aligned vectors (no cache-line splits) and shift
/// them into place in registers.
fn aligned_reads_fit(r: &[f32], offsets: &[usize], len: usize) -> bool {
    let misalignment = (r.as_ptr() as usize / 4) % BLOCK;
    (r.as_ptr() as usize).is_multiple_of(4)
        && offsets.iter().all(|&o| {
            (misalignment + o) % BLOCK <= o
                && o.checked_add(len + BLOCK).is_some_and(|end| end <= r.len())
        })
}

/// For every output channel `k < gamma.len() / origins.len()`: [`accumulate`] into the first
/// `run` floats of `acc[k·acc_stride..]` the runs of `r` at offsets
/// `gamma[k·taps + t]·stride + origins[t]` (`taps = origins.len()`), in tap order. One call for
/// all channels, so the checks run once per subspace, not once per channel. `offsets` is a
/// buffer of `taps` entries. Panics unless `run` is a multiple of [`BLOCK`], `run <= acc_stride`,
/// `acc` holds every channel's slice, and every run lies inside `r`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate_channels(
    isa: Isa,
    acc: &mut [f32],
    acc_stride: usize,
    run: usize,
    r: &[f32],
    gamma: &[u32],
    origins: &[usize],
    stride: usize,
    offsets: &mut [usize],
) {
    let taps = origins.len();
    assert!(taps >= 1 && offsets.len() == taps && gamma.len().is_multiple_of(taps));
    assert!(run.is_multiple_of(BLOCK) && run <= acc_stride);
    let channels = gamma.len() / taps;
    assert!(channels
        .checked_mul(acc_stride)
        .is_some_and(|n| n <= acc.len()));
    let max_rep = gamma.iter().max().map_or(0, |&g| g as usize);
    let end = max_rep
        .checked_mul(stride)
        .and_then(|o| o.checked_add(origins.iter().max()?.checked_add(run)?));
    assert!(
        end.is_some_and(|end| end <= r.len()),
        "accumulate_channels: run out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        let aligned = r.len() >= ALIGNED_MIN_LEN && end.is_some_and(|e| e + BLOCK <= r.len());
        // SAFETY: CPU features checked by `detect`; every run (plus one block if `aligned`)
        // lies inside `r` and every channel's slice inside `acc`, checked just above.
        return unsafe {
            x86::accumulate_channels_avx512(
                acc, acc_stride, run, r, gamma, origins, stride, aligned,
            )
        };
    }
    let slices = acc.chunks_exact_mut(acc_stride);
    for (a, column) in slices.zip(gamma.chunks_exact(taps)) {
        for ((o, &g), &origin) in offsets.iter_mut().zip(column).zip(origins) {
            *o = g as usize * stride + origin;
        }
        accumulate(isa, &mut a[..run], r, offsets);
    }
}

/// Most zmm vectors one band of [`accumulate_rows`] keeps per channel: `N` output vectors plus
/// `N` vectors of one shift group, the coefficient, the shift index and a zero (2·13 + 3 = 29 of
/// the 32 zmm registers).
pub(crate) const ROW_VECTORS: usize = 13;

/// Most ymm accumulators one band of the AVX2 [`accumulate_rows`] keeps per channel (8 floats
/// each): with the coefficient broadcast that leaves 1 of the 16 ymm registers spare (every
/// term's load is the memory operand of its FMA). 14 measured 5% faster than 12 on fire8.
pub(crate) const ROW_VECTORS_AVX2: usize = 14;

/// The row layout's vector count per output row: `cols` floats in 8-float ymm vectors (AVX2)
/// or in the pitch's 16-float zmm vectors (AVX-512).
pub(crate) fn row_vectors(isa: Isa, pitch: usize, cols: usize) -> usize {
    match isa {
        Isa::Avx2Fma => cols.div_ceil(8),
        _ => pitch / BLOCK,
    }
}

/// Most vectors one band of [`accumulate_rows`] holds in registers on `isa`.
pub(crate) fn row_band_vectors(isa: Isa) -> usize {
    match isa {
        Isa::Avx2Fma => ROW_VECTORS_AVX2,
        _ => ROW_VECTORS,
    }
}

/// One subspace's look-up terms in the order [`accumulate_rows`] sums them: per output channel
/// k, per kernel column v (a shift group), per kernel row u, the α `(atom, coefficient)` pairs of
/// representative `Γ[k][u][v]` (VQ: the atom `Γ[k][u][v]` with coefficient 1). Built once per
/// layer; `max_atom` bounds every atom index (so one compare per call bounds every read).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowTerms {
    atoms: Vec<u32>,
    coefs: Vec<f32>,
    /// kh·kw·α: terms per output channel.
    per_channel: usize,
    alpha: usize,
    max_atom: usize,
}

impl RowTerms {
    /// The terms of a validated subspace with a `kh × kw` kernel (`assignment.len()` a multiple
    /// of kh·kw, every representative and code atom in range: checked by `DlqConv::new`).
    pub(crate) fn new(sub: &crate::conv::Subspace, [kh, kw]: [usize; 2]) -> RowTerms {
        let taps = kh * kw;
        let alpha = sub.codes.as_ref().map_or(1, |c| c.alpha);
        let (mut atoms, mut coefs) = (Vec::new(), Vec::new());
        for column in sub.assignment.chunks_exact(taps) {
            for v in 0..kw {
                for u in 0..kh {
                    let rep = column[u * kw + v];
                    match &sub.codes {
                        Some(codes) => {
                            let code = rep as usize * alpha;
                            atoms.extend_from_slice(&codes.atoms[code..code + alpha]);
                            coefs.extend_from_slice(&codes.coefficients[code..code + alpha]);
                        }
                        None => {
                            atoms.push(rep);
                            coefs.push(1.0);
                        }
                    }
                }
            }
        }
        let max_atom = atoms.iter().max().map_or(0, |&a| a as usize);
        RowTerms {
            atoms,
            coefs,
            per_channel: taps * alpha,
            alpha,
            max_atom,
        }
    }
}

/// The shape of one [`accumulate_rows`] call: the planes of `z` (`stride` floats apart) have
/// rows of `pitch` floats (a multiple of [`BLOCK`]); each channel's accumulator holds `oh` such
/// rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowShape {
    /// Floats per row (of Z and of the accumulator), a multiple of [`BLOCK`].
    pub pitch: usize,
    /// Distance between Z planes.
    pub stride: usize,
    /// Output rows.
    pub oh: usize,
    /// Kernel size `[kh, kw]`; column v is shift group v, read `v·shift` floats to the right.
    pub kernel: [usize; 2],
    /// Floats between kernel rows: `dh·pitch`.
    pub row_step: usize,
    /// Floats between kernel columns (the column dilation); `(kw − 1)·shift` must be below
    /// [`BLOCK`].
    pub shift: usize,
    /// Most output rows per band (so a band of Z stays in L1); `band_rows` times
    /// [`row_vectors`] at most [`row_band_vectors`].
    pub band_rows: usize,
    /// Output columns that must come out right (`≤ pitch − (kw − 1)·shift`; the crop's `ow`).
    /// AVX-512 computes every column of the pitch; AVX2 only the 8-float vectors covering
    /// these (the accumulator's columns from `max(cols, 8)` on are left as they were).
    pub cols: usize,
    /// Strides other than 1 (AVX2 and portable only): Z is laid out in phase planes, and
    /// `row_step` and `shift` are unused.
    pub phases: Option<Phases>,
}

/// The phase layout of a strided Conv's padded planes: padded row `py` and column `px` live in
/// phase plane `(py mod sh, px mod sw)` at row `py / sh`, column `px / sw` (rows of `pitch`
/// floats). A stride-(sh, sw) tap then reads each phase plane at unit stride: output `(y, x)`
/// of tap `(u, v)` is phase plane `(u·dh mod sh, v·dw mod sw)` at `(y + u·dh / sh,
/// x + v·dw / sw)`, so the row path runs strided layers too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Phases {
    /// The Conv's strides `[sh, sw]`.
    pub strides: [usize; 2],
    /// The Conv's dilations `[dh, dw]`.
    pub dilations: [usize; 2],
    /// Floats between row phases (`sw` phase planes).
    pub row_phase: usize,
    /// Floats between column phases (one phase plane).
    pub col_phase: usize,
}

impl Phases {
    /// Where padded row `py`, column `px` lives in a plane of rows of `pitch` floats.
    pub fn at(&self, pitch: usize, py: usize, px: usize) -> usize {
        let [sh, sw] = self.strides;
        (py % sh) * self.row_phase + (px % sw) * self.col_phase + (py / sh) * pitch + px / sw
    }
}

impl RowShape {
    /// Where kernel row `u` starts reading a plane (without the column's part).
    fn row_offset(&self, u: usize) -> usize {
        match self.phases {
            None => u * self.row_step,
            Some(p) => p.at(self.pitch, u * p.dilations[0], 0),
        }
    }

    /// The address part of kernel column `v`: its column phase plane.
    fn col_base(&self, v: usize) -> usize {
        match self.phases {
            None => 0,
            Some(p) => v * p.dilations[1] % p.strides[1] * p.col_phase,
        }
    }

    /// Kernel column `v`'s shift in floats within a row.
    fn col_shift(&self, v: usize) -> usize {
        match self.phases {
            None => v * self.shift,
            Some(p) => v * p.dilations[1] / p.strides[1],
        }
    }

    /// Where tap `(u, v)` starts reading a plane.
    fn tap_offset(&self, u: usize, v: usize) -> usize {
        self.row_offset(u) + self.col_base(v) + self.col_shift(v)
    }

    /// The largest column shift (the last kernel column's).
    fn max_shift(&self) -> usize {
        self.col_shift(self.kernel[1] - 1)
    }

    /// How far past a plane's start its reads without the column shift may go: the farthest
    /// row and column-phase offset of any tap plus `oh` rows.
    fn span(&self) -> Option<usize> {
        let [kh, kw] = self.kernel;
        let rows = (0..kh).map(|u| self.row_offset(u)).max()?;
        let cols = (0..kw).map(|v| self.col_base(v)).max()?;
        rows.checked_add(cols)?
            .checked_add(self.oh.checked_mul(self.pitch)?)
    }
}

/// Look-up adds in the row layout, AVX-512 or AVX2 (the portable loop is the tests'
/// reference), at stride 1 or (AVX2, portable) over the phase planes of [`Phases`], where every
/// `u·row_step` and `v·shift` below reads as the tap's phase-plane offset: for the output
/// channels `channels` (accumulator slice `i` belongs to channel `channels.start + i`), every
/// output row `y < oh` and column `c < pitch − (kw − 1)·shift` (AVX2: `c < cols`, see below):
///
/// ```text
/// acc[i·acc_stride + y·pitch + c] += Σ_v Σ_u Σ_t coef · z[atom·stride + u·row_step + y·pitch + c + v·shift]
/// ```
///
/// over the terms of [`RowTerms`], summed per kernel column v first (column 0 straight into the
/// accumulator, in term order; column v ≥ 1 in registers, then shifted by `v·shift` lanes and
/// added, in column order). Every Z load is a whole aligned vector of one row; the column shift
/// is applied once per column to the partial sums (`vpermt2ps`), not to every load. Columns
/// `≥ pitch − (kw − 1)·shift` of the accumulator receive junk (callers crop them).
///
/// AVX2 has neither the registers nor a two-source permute for that: it keeps up to
/// [`ROW_VECTORS_AVX2`] ymm accumulators (the 8-float vectors covering `cols` columns of each
/// band row) and fuses every term straight into them, the column shift applied to the load
/// address (the loads are unaligned; the FMA takes them as memory operands; the last vector of
/// a row ends at column `cols`, so rows of up to 16 padded columns never split a cache line). So
/// it sums in term order, not per column (the same sums to rounding), and may read up to
/// `(kw − 1)·shift` floats past the last plane a term names, which `z` must hold. Columns from
/// `max(cols, 8)` on keep what the accumulator held.
///
/// Panics unless the shape is consistent, `acc` holds every channel's `oh` rows and `z` every
/// plane a term names up to row `(kh − 1)·dh + oh` (plus AVX2's overhang).
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate_rows(
    isa: Isa,
    acc: &mut [f32],
    acc_stride: usize,
    z: &[f32],
    terms: &RowTerms,
    channels: std::ops::Range<usize>,
    shape: RowShape,
    ends: RowEnds,
) {
    check_rows(
        isa,
        acc.len(),
        acc_stride,
        z.len(),
        terms,
        &channels,
        shape,
        &ends,
    );
    let (per, count) = (terms.per_channel, channels.len());
    let atoms = &terms.atoms[channels.start * per..channels.end * per];
    let coefs = &terms.coefs[channels.start * per..channels.end * per];
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: the CPU features checked by `detect`; shape, accumulator, output and source
        // bounds (AVX2's overhang included) checked just above (every atom ≤ max_atom).
        Isa::Avx512 => {
            return unsafe {
                x86::accumulate_rows_avx512(
                    acc,
                    acc_stride,
                    z,
                    atoms,
                    coefs,
                    terms.alpha,
                    shape,
                    ends,
                )
            }
        }
        Isa::Avx2Fma => {
            return unsafe {
                x86::accumulate_rows_avx2(
                    acc,
                    acc_stride,
                    z,
                    atoms,
                    coefs,
                    terms.alpha,
                    shape,
                    ends,
                )
            }
        }
        Isa::Portable => {}
    }
    let _ = isa;
    accumulate_rows_portable(
        acc,
        acc_stride,
        z,
        (atoms, coefs, terms.alpha),
        count,
        shape,
        ends,
    );
}

/// The checks of [`accumulate_rows`] (see there): every bound its SIMD versions rely on.
#[allow(clippy::too_many_arguments)]
fn check_rows(
    isa: Isa,
    acc_len: usize,
    acc_stride: usize,
    z_len: usize,
    terms: &RowTerms,
    channels: &std::ops::Range<usize>,
    shape: RowShape,
    ends: &RowEnds,
) {
    let RowShape {
        pitch,
        stride,
        oh,
        kernel: [kh, kw],
        band_rows,
        cols,
        phases,
        ..
    } = shape;
    assert!(pitch.is_multiple_of(BLOCK) && pitch >= BLOCK && kh >= 1 && kw >= 1);
    assert!(
        phases.is_none() || isa != Isa::Avx512,
        "AVX-512 rows run stride 1 only"
    );
    assert!(phases.is_none_or(|p| p.strides[0] >= 1 && p.strides[1] >= 1));
    let max_shift = shape.max_shift();
    assert!(max_shift < BLOCK && band_rows >= 1);
    assert!(cols <= pitch - max_shift);
    assert!(
        isa == Isa::Portable || band_rows * row_vectors(isa, pitch, cols) <= row_band_vectors(isa)
    );
    assert_eq!(terms.per_channel, kh * kw * terms.alpha);
    let per = terms.per_channel;
    assert!(channels.start <= channels.end && channels.end * per <= terms.atoms.len());
    let count = channels.len();
    let rows_len = oh * pitch;
    assert!(
        count == 0 || (rows_len <= acc_stride && (count - 1) * acc_stride + rows_len <= acc_len)
    );
    // The last float any term reads without its column shift: atom·stride + span − 1.
    assert!(
        shape.span().is_some_and(|s| s <= stride),
        "accumulate_rows: rows past the plane"
    );
    // AVX2 reads up to the largest column shift past a plane's last row.
    let overhang = if isa == Isa::Avx2Fma { max_shift } else { 0 };
    let planes = terms
        .max_atom
        .checked_add(1)
        .and_then(|n| n.checked_mul(stride))
        .and_then(|end| end.checked_add(overhang));
    assert!(
        planes.is_some_and(|end| end <= z_len),
        "accumulate_rows: plane out of bounds"
    );
    if let Some(Some(init)) = ends.init {
        assert_eq!(
            init.len(),
            count,
            "accumulate_rows: one initial value per channel"
        );
    }
    if let Some((dst, ow)) = &ends.crop {
        assert!(*ow == cols && dst.len() == count * oh * ow);
    }
}

/// The portable loops of [`accumulate_rows`] (its checks done): per channel, the terms of each
/// kernel column summed into a row buffer, shifted into the accumulator once per column.
fn accumulate_rows_portable(
    acc: &mut [f32],
    acc_stride: usize,
    z: &[f32],
    (atoms, coefs, alpha): (&[u32], &[f32], usize),
    count: usize,
    shape: RowShape,
    ends: RowEnds,
) {
    let RowShape {
        pitch,
        stride,
        oh,
        kernel: [kh, kw],
        ..
    } = shape;
    let per = kh * kw * alpha;
    let rows_len = oh * pitch;
    let width = pitch - shape.max_shift();
    let mut part = vec![0.0f32; rows_len];
    let RowEnds { init, mut crop } = ends;
    for i in 0..count {
        let a = &mut acc[i * acc_stride..][..rows_len];
        if let Some(init) = init {
            a.fill(init.map_or(0.0, |b| b[i]));
        }
        for v in 0..kw {
            part.fill(0.0);
            for u in 0..kh {
                for t in 0..alpha {
                    let j = i * per + (v * kh + u) * alpha + t;
                    let start = atoms[j] as usize * stride + shape.row_offset(u);
                    let src = &z[start + shape.col_base(v)..][..rows_len];
                    for (p, &s) in part.iter_mut().zip(src) {
                        *p += coefs[j] * s;
                    }
                }
            }
            let shift = shape.col_shift(v);
            for y in 0..oh {
                for c in 0..width {
                    a[y * pitch + c] += part[y * pitch + c + shift];
                }
            }
        }
        if let Some((dst, ow)) = &mut crop {
            let planes = dst[i * oh * *ow..][..oh * *ow].chunks_exact_mut((*ow).max(1));
            for (y, row) in planes.enumerate() {
                row.copy_from_slice(&a[y * pitch..][..*ow]);
            }
        }
    }
}

/// How an [`accumulate_rows`] call starts and ends (the first and the last subspace of an
/// image): `init = Some(values)`, one value per channel (`None`: zeros), replaces the
/// accumulator's contents as the starting value (the bias: no separate initialisation pass); `crop = (dst, ow)` writes columns
/// `c < ow` of every row straight into the channels' `oh × ow` output planes in `dst` instead of
/// storing the accumulator (no separate crop pass).
#[derive(Debug, Default)]
pub(crate) struct RowEnds<'a> {
    pub init: Option<Option<&'a [f32]>>,
    pub crop: Option<(&'a mut [f32], usize)>,
}

/// `acc[p] += c[0]·z[offsets[0] + p] + c[1]·z[offsets[1] + p] + …` for every `p < acc.len()`,
/// term by term (the SIMD version fuses each multiply-add). Panics unless `acc.len()` is a
/// multiple of [`BLOCK`], `coefs` is as long as `offsets` and every `offset + acc.len() <= z.len()`.
pub(crate) fn accumulate_scaled(
    isa: Isa,
    acc: &mut [f32],
    z: &[f32],
    offsets: &[usize],
    coefs: &[f32],
) {
    let len = acc.len();
    assert!(len.is_multiple_of(BLOCK) && coefs.len() == offsets.len());
    for &o in offsets {
        assert!(
            o.checked_add(len).is_some_and(|end| end <= z.len()),
            "accumulate_scaled: run out of bounds"
        );
    }
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: CPU features checked by `detect`; lengths checked just above and in
        // `aligned_reads_fit`.
        Isa::Avx512 if z.len() >= ALIGNED_MIN_LEN && aligned_reads_fit(z, offsets, len) => {
            return unsafe { x86::accumulate_avx512_aligned(acc, z, offsets, Some(coefs)) }
        }
        Isa::Avx512 => return unsafe { x86::accumulate_avx512(acc, z, offsets, Some(coefs)) },
        Isa::Avx2Fma => return unsafe { x86::accumulate_scaled(acc, z, offsets, coefs) },
        Isa::Portable => {}
    }
    let _ = isa;
    for (&o, &c) in offsets.iter().zip(coefs) {
        for (a, &s) in acc.iter_mut().zip(&z[o..o + len]) {
            *a += c * s;
        }
    }
}

/// `z[i·stride + p] = Σ_j atoms[i·width + j] · x[j·stride + p]` for `i < atoms.len() / width`
/// (an L × width by width × stride product). Panics unless `stride` is a multiple of
/// [`BLOCK`], `width ≥ 1`, `atoms.len()` a multiple of `width`, `x` holds `width` planes and `z`
/// at least L planes of `stride` floats.
pub(crate) fn atom_responses(
    isa: Isa,
    z: &mut [f32],
    atoms: &[f32],
    width: usize,
    x: &[f32],
    stride: usize,
) {
    assert!(width >= 1 && atoms.len().is_multiple_of(width) && stride.is_multiple_of(BLOCK));
    let l = atoms.len() / width;
    assert!(x.len() >= width * stride && z.len() >= l * stride);
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: CPU features checked by `detect`; lengths checked just above.
        Isa::Avx512 => return unsafe { x86::atom_responses_avx512(z, atoms, width, x, stride) },
        Isa::Avx2Fma => return unsafe { x86::atom_responses(z, atoms, width, x, stride) },
        Isa::Portable => {}
    }
    let _ = isa;
    for (zl, atom) in z.chunks_exact_mut(stride).zip(atoms.chunks_exact(width)) {
        for (j, (&a, xj)) in atom.iter().zip(x.chunks_exact(stride)).enumerate() {
            if j == 0 {
                for (d, &s) in zl.iter_mut().zip(xj) {
                    *d = a * s;
                }
            } else {
                for (d, &s) in zl.iter_mut().zip(xj) {
                    *d += a * s;
                }
            }
        }
    }
}

/// `r[i·stride + p] = Σ_t coef[i·α + t] · z[idx[i·α + t]·stride + p]` for the K = `idx.len() / α`
/// representatives. Panics unless `alpha ≥ 1`, `idx` and `coef` have the same length, a multiple
/// of α, `stride` is a multiple of [`BLOCK`], `r` holds K planes and `z` every plane `idx` names.
pub(crate) fn representatives(
    isa: Isa,
    r: &mut [f32],
    z: &[f32],
    idx: &[u32],
    coef: &[f32],
    alpha: usize,
    stride: usize,
) {
    assert!(alpha >= 1 && idx.len() == coef.len() && idx.len().is_multiple_of(alpha));
    assert!(stride.is_multiple_of(BLOCK) && r.len() >= idx.len() / alpha * stride);
    let planes = z.len() / stride;
    assert!(
        idx.iter().all(|&i| (i as usize) < planes),
        "representatives: atom index"
    );
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: CPU features checked by `detect`; lengths and indices checked just above.
        Isa::Avx512 => {
            return unsafe { x86::representatives_avx512(r, z, idx, coef, alpha, stride) }
        }
        Isa::Avx2Fma => return unsafe { x86::representatives(r, z, idx, coef, alpha, stride) },
        Isa::Portable => {}
    }
    let _ = isa;
    let codes = idx.chunks_exact(alpha).zip(coef.chunks_exact(alpha));
    for (ri, (idx, coef)) in r.chunks_exact_mut(stride).zip(codes) {
        for (t, (&atom, &c)) in idx.iter().zip(coef).enumerate() {
            let zt = &z[atom as usize * stride..][..stride];
            if t == 0 {
                for (d, &s) in ri.iter_mut().zip(zt) {
                    *d = c * s;
                }
            } else {
                for (d, &s) in ri.iter_mut().zip(zt) {
                    *d += c * s;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// See [`super::accumulate`]. Eight ymm accumulators (64 floats) stay in registers over all
    /// taps, so `acc` is read and written once per 64 floats, not once per tap.
    ///
    /// # Safety
    /// AVX2 available; `acc.len() % BLOCK == 0`; `o + acc.len() <= r.len()` for every offset.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate(acc: &mut [f32], r: &[f32], offsets: &[usize]) {
        let len = acc.len();
        let (a, rp) = (acc.as_mut_ptr(), r.as_ptr());
        let mut i = 0;
        while i + 64 <= len {
            let mut v = [_mm256_setzero_ps(); 8];
            for (q, x) in v.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(a.add(i + 8 * q));
            }
            for &o in offsets {
                let src = rp.add(o + i);
                for (q, x) in v.iter_mut().enumerate() {
                    *x = _mm256_add_ps(*x, _mm256_loadu_ps(src.add(8 * q)));
                }
            }
            for (q, x) in v.iter().enumerate() {
                _mm256_storeu_ps(a.add(i + 8 * q), *x);
            }
            i += 64;
        }
        while i + BLOCK <= len {
            let mut v0 = _mm256_loadu_ps(a.add(i));
            let mut v1 = _mm256_loadu_ps(a.add(i + 8));
            for &o in offsets {
                let src = rp.add(o + i);
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(src));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(src.add(8)));
            }
            _mm256_storeu_ps(a.add(i), v0);
            _mm256_storeu_ps(a.add(i + 8), v1);
            i += BLOCK;
        }
    }

    /// See [`super::accumulate`] (`coefs = None`) and [`super::accumulate_scaled`]
    /// (`Some(coefs)`, fused multiply-adds): up to 16 zmm accumulators (256 floats) per pass, so
    /// a typical padded-width run is one pass and the accumulators are independent chains.
    ///
    /// # Safety
    /// AVX-512F available; `acc.len() % BLOCK == 0`; `coefs`, if any, as long as `offsets`;
    /// `o + acc.len() <= r.len()` for every offset.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn accumulate_avx512(
        acc: &mut [f32],
        r: &[f32],
        offsets: &[usize],
        coefs: Option<&[f32]>,
    ) {
        let len = acc.len();
        let mut i = 0;
        while i < len {
            let vectors = (len - i) / BLOCK;
            // Each arm covers `n` whole vectors starting at float `i`, inside `acc`, and
            // `o + i + 16·n <= o + len <= r.len()`.
            macro_rules! pass {
                ($($n:literal)*) => {
                    match vectors {
                        $($n => block512::<$n>(acc.as_mut_ptr().add(i), r.as_ptr().add(i), offsets, coefs),)*
                        _ => block512::<16>(acc.as_mut_ptr().add(i), r.as_ptr().add(i), offsets, coefs),
                    }
                };
            }
            pass!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
            i += vectors.min(16) * BLOCK;
        }
    }

    /// `N` zmm accumulators loaded from `acc`, every term added (or fused-multiply-added), stored.
    ///
    /// # Safety
    /// AVX-512F available; `acc` valid for `16·N` floats; `r.add(o)` valid for `16·N` floats for
    /// every offset `o`; `coefs`, if any, as long as `offsets`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block512<const N: usize>(
        acc: *mut f32,
        r: *const f32,
        offsets: &[usize],
        coefs: Option<&[f32]>,
    ) {
        let mut v = [_mm512_setzero_ps(); N];
        for (q, x) in v.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(acc.add(16 * q));
        }
        let (op, terms) = (offsets.as_ptr(), offsets.len());
        match coefs {
            None => {
                for t in 0..terms {
                    let src = r.add(*op.add(t));
                    for (q, x) in v.iter_mut().enumerate() {
                        *x = _mm512_add_ps(*x, _mm512_loadu_ps(src.add(16 * q)));
                    }
                }
            }
            Some(coefs) => {
                let cp = coefs.as_ptr();
                for t in 0..terms {
                    let (src, c) = (r.add(*op.add(t)), _mm512_set1_ps(*cp.add(t)));
                    for (q, x) in v.iter_mut().enumerate() {
                        *x = _mm512_fmadd_ps(c, _mm512_loadu_ps(src.add(16 * q)), *x);
                    }
                }
            }
        }
        for (q, x) in v.iter().enumerate() {
            _mm512_storeu_ps(acc.add(16 * q), *x);
        }
    }

    /// Index vectors for `_mm512_permutex2var_ps`: `SHIFT[s..s + 16]` picks floats `s..s + 16`
    /// of two consecutive aligned vectors.
    static SHIFT: [i32; 32] = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30, 31,
    ];

    /// As [`accumulate_avx512`], but every run is read as 64-byte-aligned vectors (one more
    /// than the run needs) and shifted into place in registers with one two-source permute per
    /// vector: no load splits a cache line. Same sums in the same order, so the same result.
    ///
    /// # Safety
    /// AVX-512F available; `acc.len() % BLOCK == 0`; `coefs`, if any, as long as `offsets`;
    /// `r.as_ptr()` 4-byte aligned; for every offset `o`, with `s` = the float index of `r[o]`
    /// within its 64-byte block: `s <= o` and `o + acc.len() + BLOCK <= r.len()`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn accumulate_avx512_aligned(
        acc: &mut [f32],
        r: &[f32],
        offsets: &[usize],
        coefs: Option<&[f32]>,
    ) {
        let len = acc.len();
        let misalignment = (r.as_ptr() as usize / 4) % BLOCK;
        let mut i = 0;
        while i < len {
            let vectors = (len - i) / BLOCK;
            // Each arm covers `n` whole vectors starting at float `i`, inside `acc`; the reads
            // run from `o + i − s ≥ 0` to `o + i − s + 16·(n + 1) <= o + len + BLOCK <= r.len()`.
            macro_rules! pass {
                ($($n:literal)*) => {
                    match vectors {
                        $($n => block512_aligned::<$n>(acc.as_mut_ptr().add(i), r.as_ptr(), i, misalignment, offsets, coefs),)*
                        _ => block512_aligned::<16>(acc.as_mut_ptr().add(i), r.as_ptr(), i, misalignment, offsets, coefs),
                    }
                };
            }
            pass!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
            i += vectors.min(16) * BLOCK;
        }
    }

    /// See [`super::accumulate_channels`]: per channel, its tap offsets into a stack buffer,
    /// then the passes of [`accumulate_avx512_aligned`] (when `aligned` and no run starts in
    /// the first, partial block of `r`) or of [`accumulate_avx512`].
    ///
    /// # Safety
    /// AVX-512F available; `run % BLOCK == 0`, `run <= acc_stride`; `acc` holds
    /// `gamma.len() / origins.len()` slices of `acc_stride`; every
    /// `gamma·stride + origin + run (+ BLOCK if aligned) <= r.len()`; `r` 4-byte aligned.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn accumulate_channels_avx512(
        acc: &mut [f32],
        acc_stride: usize,
        run: usize,
        r: &[f32],
        gamma: &[u32],
        origins: &[usize],
        stride: usize,
        aligned: bool,
    ) {
        let taps = origins.len();
        let misalignment = (r.as_ptr() as usize / 4) % BLOCK;
        let mut buffer = [0usize; 32];
        let mut heap = Vec::new();
        let offsets: &mut [usize] = if taps <= buffer.len() {
            &mut buffer[..taps]
        } else {
            heap.resize(taps, 0);
            &mut heap
        };
        for (k, column) in gamma.chunks_exact(taps).enumerate() {
            let mut shifted_fits = aligned;
            for ((o, &g), &origin) in offsets.iter_mut().zip(column).zip(origins) {
                *o = g as usize * stride + origin;
                shifted_fits &= (misalignment + *o) % BLOCK <= *o;
            }
            let a = acc.as_mut_ptr().add(k * acc_stride);
            let mut i = 0;
            while i < run {
                let vectors = (run - i) / BLOCK;
                macro_rules! pass {
                    ($($n:literal)*) => {
                        match (vectors, shifted_fits) {
                            $(($n, true) => block512_aligned::<$n>(a.add(i), r.as_ptr(), i, misalignment, offsets, None),
                              ($n, false) => block512::<$n>(a.add(i), r.as_ptr().add(i), offsets, None),)*
                            (_, true) => block512_aligned::<16>(a.add(i), r.as_ptr(), i, misalignment, offsets, None),
                            (_, false) => block512::<16>(a.add(i), r.as_ptr().add(i), offsets, None),
                        }
                    };
                }
                pass!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
                i += vectors.min(16) * BLOCK;
            }
        }
    }

    /// `N` zmm accumulators loaded from `acc`; for every term, the `N + 1` aligned vectors
    /// around `r[o + i..]` loaded, shifted into place, added (or fused-multiply-added); stored.
    ///
    /// # Safety
    /// As [`accumulate_avx512_aligned`], with `acc` valid for `16·N` floats and
    /// `i + 16·N <= acc.len()`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block512_aligned<const N: usize>(
        acc: *mut f32,
        r: *const f32,
        i: usize,
        misalignment: usize,
        offsets: &[usize],
        coefs: Option<&[f32]>,
    ) {
        let mut v = [_mm512_setzero_ps(); N];
        for (q, x) in v.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(acc.add(16 * q));
        }
        let (op, terms) = (offsets.as_ptr(), offsets.len());
        for t in 0..terms {
            let o = *op.add(t) + i;
            let shift = (misalignment + o) % BLOCK;
            let src = r.add(o - shift);
            let idx = _mm512_loadu_si512(SHIFT.as_ptr().add(shift).cast());
            let c = _mm512_set1_ps(coefs.map_or(1.0, |c| *c.as_ptr().add(t)));
            let mut prev = _mm512_loadu_ps(src);
            for (q, x) in v.iter_mut().enumerate() {
                let next = _mm512_loadu_ps(src.add(16 * (q + 1)));
                let run = _mm512_permutex2var_ps(prev, idx, next);
                *x = match coefs {
                    None => _mm512_add_ps(*x, run),
                    Some(_) => _mm512_fmadd_ps(c, run, *x),
                };
                prev = next;
            }
        }
        for (q, x) in v.iter().enumerate() {
            _mm512_storeu_ps(acc.add(16 * q), *x);
        }
    }

    /// A row call's ends as raw pointers: the initial values, if the call starts the
    /// accumulators (`Some(None)`: zeros), and the output with its width, if it crops.
    #[allow(clippy::type_complexity)]
    fn end_pointers(ends: super::RowEnds) -> (Option<Option<*const f32>>, Option<*mut f32>, usize) {
        let init = ends.init.map(|values| values.map(<[f32]>::as_ptr));
        match ends.crop {
            Some((dst, ow)) => (init, Some(dst.as_mut_ptr()), ow),
            None => (init, None, 0),
        }
    }

    /// See [`super::accumulate_rows`]: bands of at most `band_rows` rows (split evenly), each
    /// channel's band in up to [`super::ROW_VECTORS`] zmm accumulators.
    ///
    /// # Safety
    /// AVX-512F available; the shape and bounds [`super::accumulate_rows`] checks, `atoms` and
    /// `coefs` holding the terms of `acc.len() / acc_stride`-ish channels as it slices them.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn accumulate_rows_avx512(
        acc: &mut [f32],
        acc_stride: usize,
        z: &[f32],
        atoms: &[u32],
        coefs: &[f32],
        alpha: usize,
        shape: super::RowShape,
        ends: super::RowEnds,
    ) {
        let per = shape.kernel[0] * shape.kernel[1] * alpha;
        let (init, dst, ow) = end_pointers(ends);
        let channels = atoms.len() / per;
        let per_row = shape.pitch / BLOCK;
        let bands = shape.oh.div_ceil(shape.band_rows);
        let mut y0 = 0;
        for band in 0..bands {
            // Even split: every band has 1 to ⌈oh / bands⌉ ≤ band_rows rows.
            let y1 = shape.oh * (band + 1) / bands;
            let vectors = (y1 - y0) * per_row;
            for k in 0..channels {
                // The band's rows of channel k: inside `acc` since
                // k·acc_stride + y1·pitch ≤ (channels − 1)·acc_stride + oh·pitch ≤ acc.len().
                // A term reads `atom·stride + u·row_step + y0·pitch` onwards for `vectors`
                // vectors, up to atom·stride + (kh − 1)·row_step + oh·pitch ≤ (atom + 1)·stride
                // ≤ z.len() (the column shift is applied in registers, never to an address).
                let a = acc.as_mut_ptr().add(k * acc_stride + y0 * shape.pitch);
                let src = z.as_ptr().add(y0 * shape.pitch);
                let (ap, cp) = (atoms.as_ptr().add(k * per), coefs.as_ptr().add(k * per));
                // Channel k's initial value (init has one per channel) and its output rows
                // y0.. (dst holds channels·oh·ow floats; row y's ow columns end at
                // (k·oh + y + 1)·ow ≤ dst.len()).
                let start = init.map(|values| values.map_or(0.0, |p| *p.add(k)));
                let out = dst.map(|p| (p.add((k * shape.oh + y0) * ow), ow));
                macro_rules! pass {
                    ($($n:literal)*) => {
                        match vectors {
                            $($n => rows_block::<$n>(a, src, ap, cp, alpha, shape, start, out),)*
                            // vectors ≤ band_rows·per_row ≤ ROW_VECTORS = 13, checked.
                            _ => {}
                        }
                    };
                }
                pass!(1 2 3 4 5 6 7 8 9 10 11 12 13);
            }
            y0 = y1;
        }
    }

    /// One channel's band of `N` vectors: column 0's terms fused-multiply-added straight into the
    /// accumulators, each further column summed in `N` registers, shifted left by `v·shift`
    /// lanes (lanes of the next vector moving in; zeros after the last) and added.
    ///
    /// # Safety
    /// AVX-512F available; `acc` valid for `16·N` floats; `crop`'s pointer valid for the band's
    /// `N / (pitch/16)` rows of `ow` floats, `ow ≤ pitch`; `ap`/`cp` valid for `kh·kw·alpha`
    /// entries; `z.add(atom·stride + u·row_step)` valid for `16·N` floats for every term;
    /// `(kw − 1)·shift < 16`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn rows_block<const N: usize>(
        acc: *mut f32,
        z: *const f32,
        ap: *const u32,
        cp: *const f32,
        alpha: usize,
        shape: super::RowShape,
        start: Option<f32>,
        crop: Option<(*mut f32, usize)>,
    ) {
        let [kh, kw] = shape.kernel;
        let mut out = [_mm512_setzero_ps(); N];
        for (q, x) in out.iter_mut().enumerate() {
            *x = match start {
                Some(value) => _mm512_set1_ps(value),
                None => _mm512_loadu_ps(acc.add(16 * q)),
            };
        }
        let mut e = 0;
        for u in 0..kh {
            let row = z.add(u * shape.row_step);
            for _ in 0..alpha {
                let src = row.add(*ap.add(e) as usize * shape.stride);
                let c = _mm512_set1_ps(*cp.add(e));
                for (q, x) in out.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(c, _mm512_loadu_ps(src.add(16 * q)), *x);
                }
                e += 1;
            }
        }
        let zero = _mm512_setzero_ps();
        for v in 1..kw {
            let mut part = [_mm512_setzero_ps(); N];
            for u in 0..kh {
                let row = z.add(u * shape.row_step);
                for _ in 0..alpha {
                    let src = row.add(*ap.add(e) as usize * shape.stride);
                    let c = _mm512_set1_ps(*cp.add(e));
                    for (q, x) in part.iter_mut().enumerate() {
                        *x = _mm512_fmadd_ps(c, _mm512_loadu_ps(src.add(16 * q)), *x);
                    }
                    e += 1;
                }
            }
            // SHIFT[s..s + 16] with s = v·shift ≤ 15: inside the 32 entries.
            let idx = _mm512_loadu_si512(SHIFT.as_ptr().add(v * shape.shift).cast());
            for q in 0..N {
                let next = if q + 1 < N { part[q + 1] } else { zero };
                out[q] = _mm512_add_ps(out[q], _mm512_permutex2var_ps(part[q], idx, next));
            }
        }
        match crop {
            None => {
                for (q, x) in out.iter().enumerate() {
                    _mm512_storeu_ps(acc.add(16 * q), *x);
                }
            }
            Some((dst, ow)) => {
                // Vector q is part q % per_row of band row q / per_row: its first
                // min(16, ow − 16·part) lanes are output columns 16·part.., written with a
                // masked store (masked-off lanes are not accessed); parts past ow write nothing.
                let per_row = shape.pitch / BLOCK;
                for (q, x) in out.iter().enumerate() {
                    let (row, part) = (q / per_row, q % per_row);
                    let lanes = ow.saturating_sub(16 * part).min(16);
                    if lanes > 0 {
                        let mask = ((1u32 << lanes) - 1) as __mmask16;
                        _mm512_mask_storeu_ps(dst.add(row * ow + 16 * part), mask, *x);
                    }
                }
            }
        }
    }

    /// See [`super::accumulate_rows`] (AVX2): bands of at most `band_rows` rows (split evenly),
    /// each channel's band in `rows × ⌈cols/8⌉ ≤` [`super::ROW_VECTORS_AVX2`] ymm accumulators.
    ///
    /// # Safety
    /// AVX2 + FMA available; the shape and bounds [`super::accumulate_rows`] checks (the
    /// overhang included), `atoms` and `coefs` holding the terms of the channels as it slices
    /// them.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate_rows_avx2(
        acc: &mut [f32],
        acc_stride: usize,
        z: &[f32],
        atoms: &[u32],
        coefs: &[f32],
        alpha: usize,
        shape: super::RowShape,
        ends: super::RowEnds,
    ) {
        let per = shape.kernel[0] * shape.kernel[1] * alpha;
        let (init, dst, ow) = end_pointers(ends);
        let channels = atoms.len() / per;
        let per_row = shape.cols.div_ceil(8);
        // Each term's offset within the planes (its tap's row and column shift), in term order
        // (kernel column, kernel row, then α): one flat loop over a channel's terms.
        let [kh, kw] = shape.kernel;
        let taps: Vec<usize> = (0..kw)
            .flat_map(|v| (0..kh).map(move |u| shape.tap_offset(u, v)))
            .flat_map(|offset| std::iter::repeat_n(offset, alpha))
            .collect();
        let bands = shape.oh.div_ceil(shape.band_rows);
        let mut y0 = 0;
        for band in 0..bands {
            // Even split: every band has 1 to ⌈oh / bands⌉ ≤ band_rows rows.
            let y1 = shape.oh * (band + 1) / bands;
            for k in 0..channels {
                // As in `accumulate_rows_avx512`: channel k's band rows lie inside `acc`; a term
                // reads from atom·stride + u·row_step + y0·pitch + v·shift up to
                // (atom + 1)·stride + (kw − 1)·shift ≤ z.len() (vectors end within the pitch).
                let a = acc.as_mut_ptr().add(k * acc_stride + y0 * shape.pitch);
                let src = z.as_ptr().add(y0 * shape.pitch);
                let (ap, cp) = (atoms.as_ptr().add(k * per), coefs.as_ptr().add(k * per));
                let start = init.map(|values| values.map_or(0.0, |p| *p.add(k)));
                let out = dst.map(|p| (p.add((k * shape.oh + y0) * ow), ow));
                let args = (a, src, ap, cp, taps.as_ptr(), per, shape, start, out);
                macro_rules! pass {
                    ($($r:literal $v:literal),*) => {
                        match (y1 - y0, per_row) {
                            $(($r, $v) => rows_block_avx2::<$r, $v>(args),)*
                            // rows·per_row ≤ ROW_VECTORS_AVX2 = 14, checked.
                            _ => {}
                        }
                    };
                }
                pass!(1 1, 2 1, 3 1, 4 1, 5 1, 6 1, 7 1, 8 1, 9 1, 10 1, 11 1, 12 1, 13 1, 14 1,
                      1 2, 2 2, 3 2, 4 2, 5 2, 6 2, 7 2, 1 3, 2 3, 3 3, 4 3, 1 4, 2 4, 3 4,
                      1 5, 2 5, 1 6, 2 6, 1 7, 2 7, 1 8, 1 9, 1 10, 1 11, 1 12, 1 13, 1 14);
            }
            y0 = y1;
        }
    }

    /// The arguments of [`rows_block_avx2`]: the band's accumulator, Z at the band's first row,
    /// the channel's atoms and coefficients, α, the shape, the initial value and the crop.
    type RowsArgs = (
        *mut f32,
        *const f32,
        *const u32,
        *const f32,
        *const usize,
        usize,
        super::RowShape,
        Option<f32>,
        Option<(*mut f32, usize)>,
    );

    /// Lane masks for `_mm256_maskstore_ps`: `LANES[8 − n..16 − n]` enables the first n lanes.
    static LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// One channel's band of `R` rows × `V` ymm vectors: every term fused-multiply-added into
    /// the accumulators, its column shift applied to the load address.
    ///
    /// # Safety
    /// AVX2 + FMA available; `acc` valid for `R` rows of `pitch` floats, `8·V ≤ pitch`; crop's
    /// pointer valid for `R` rows of `ow ≤ 8·V` floats (and `ow > 8·(V − 1)`); `ap`/`cp` valid
    /// for `kh·kw·alpha` entries; `z.add(atom·stride + u·row_step + v·shift + r·pitch)` valid
    /// for `8·V` floats for every term and row.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_block_avx2<const R: usize, const V: usize>(
        (acc, z, ap, cp, taps, terms, shape, start, crop): RowsArgs,
    ) {
        let p = shape.pitch;
        // Vector q covers columns 8q.. except the last, which ends at column `cols` (it may
        // overlap the one before: those columns are summed twice, identically). So a row of
        // up to 16 padded columns is read from its own 64-byte line: no load splits a line.
        let last = shape.cols.saturating_sub(8);
        let col = |q: usize| if q + 1 == V { last } else { 8 * q };
        let mut out = [[_mm256_setzero_ps(); V]; R];
        for (r, row) in out.iter_mut().enumerate() {
            for (q, x) in row.iter_mut().enumerate() {
                *x = match start {
                    Some(value) => _mm256_set1_ps(value),
                    None => _mm256_loadu_ps(acc.add(r * p + col(q))),
                };
            }
        }
        for e in 0..terms {
            let src = z.add(*taps.add(e) + *ap.add(e) as usize * shape.stride);
            let c = _mm256_set1_ps(*cp.add(e));
            for (r, row) in out.iter_mut().enumerate() {
                let s = src.add(r * p);
                for (q, x) in row.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(c, _mm256_loadu_ps(s.add(col(q))), *x);
                }
            }
        }
        match crop {
            None => {
                for (r, row) in out.iter().enumerate() {
                    for (q, x) in row.iter().enumerate() {
                        _mm256_storeu_ps(acc.add(r * p + col(q)), *x);
                    }
                }
            }
            // ow = cols ≥ 8: every lane of every vector is an output column.
            Some((dst, ow)) if ow >= 8 => {
                for (r, row) in out.iter().enumerate() {
                    for (q, x) in row.iter().enumerate() {
                        _mm256_storeu_ps(dst.add(r * ow + col(q)), *x);
                    }
                }
            }
            // ow < 8: one vector per row, its first ow lanes stored (masked-off lanes are not
            // accessed).
            Some((dst, ow)) => {
                let mask = _mm256_loadu_si256(LANES.as_ptr().add(8 - ow).cast());
                for (r, row) in out.iter().enumerate() {
                    _mm256_maskstore_ps(dst.add(r * ow), mask, row[0]);
                }
            }
        }
    }

    /// See [`super::accumulate_scaled`]: as [`accumulate`], one fused multiply-add per term.
    ///
    /// # Safety
    /// AVX2 + FMA available; `acc.len() % BLOCK == 0`; `coefs.len() == offsets.len()`;
    /// `o + acc.len() <= z.len()` for every offset.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate_scaled(
        acc: &mut [f32],
        z: &[f32],
        offsets: &[usize],
        coefs: &[f32],
    ) {
        let (len, terms) = (acc.len(), offsets.len());
        let (a, zp, op, cp) = (
            acc.as_mut_ptr(),
            z.as_ptr(),
            offsets.as_ptr(),
            coefs.as_ptr(),
        );
        let mut i = 0;
        while i + 64 <= len {
            let mut v = [_mm256_setzero_ps(); 8];
            for (q, x) in v.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(a.add(i + 8 * q));
            }
            for t in 0..terms {
                let (src, c) = (zp.add(*op.add(t) + i), _mm256_set1_ps(*cp.add(t)));
                for (q, x) in v.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(8 * q)), *x);
                }
            }
            for (q, x) in v.iter().enumerate() {
                _mm256_storeu_ps(a.add(i + 8 * q), *x);
            }
            i += 64;
        }
        while i + BLOCK <= len {
            let mut v0 = _mm256_loadu_ps(a.add(i));
            let mut v1 = _mm256_loadu_ps(a.add(i + 8));
            for t in 0..terms {
                let (src, c) = (zp.add(*op.add(t) + i), _mm256_set1_ps(*cp.add(t)));
                v0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src), v0);
                v1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(8)), v1);
            }
            _mm256_storeu_ps(a.add(i), v0);
            _mm256_storeu_ps(a.add(i + 8), v1);
            i += BLOCK;
        }
    }

    /// See [`super::atom_responses`]: a register-blocked micro-GEMM, 4 atoms × 16 columns
    /// (8 ymm accumulators) per step, then single atoms for the remainder.
    ///
    /// # Safety
    /// AVX2 + FMA available; `width ≥ 1`; `atoms.len() % width == 0`; `stride % BLOCK == 0`;
    /// `x.len() ≥ width·stride`; `z.len() ≥ (atoms.len() / width)·stride`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn atom_responses(
        z: &mut [f32],
        atoms: &[f32],
        width: usize,
        x: &[f32],
        stride: usize,
    ) {
        let l = atoms.len() / width;
        let (zp, ap, xp) = (z.as_mut_ptr(), atoms.as_ptr(), x.as_ptr());
        let mut i = 0;
        while i + 4 <= l {
            let mut p = 0;
            while p < stride {
                let mut acc = [_mm256_setzero_ps(); 8];
                for j in 0..width {
                    let x0 = _mm256_loadu_ps(xp.add(j * stride + p));
                    let x1 = _mm256_loadu_ps(xp.add(j * stride + p + 8));
                    for (row, pair) in acc.chunks_exact_mut(2).enumerate() {
                        let a = _mm256_broadcast_ss(&*ap.add((i + row) * width + j));
                        pair[0] = _mm256_fmadd_ps(a, x0, pair[0]);
                        pair[1] = _mm256_fmadd_ps(a, x1, pair[1]);
                    }
                }
                for (row, pair) in acc.chunks_exact(2).enumerate() {
                    let dst = zp.add((i + row) * stride + p);
                    _mm256_storeu_ps(dst, pair[0]);
                    _mm256_storeu_ps(dst.add(8), pair[1]);
                }
                p += BLOCK;
            }
            i += 4;
        }
        while i < l {
            let mut p = 0;
            while p < stride {
                let (mut v0, mut v1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for j in 0..width {
                    let a = _mm256_broadcast_ss(&*ap.add(i * width + j));
                    let src = xp.add(j * stride + p);
                    v0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(src), v0);
                    v1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(src.add(8)), v1);
                }
                _mm256_storeu_ps(zp.add(i * stride + p), v0);
                _mm256_storeu_ps(zp.add(i * stride + p + 8), v1);
                p += BLOCK;
            }
            i += 1;
        }
    }

    /// See [`super::atom_responses`]: a register-blocked micro-GEMM in AVX-512, `A` atoms ×
    /// 32 columns (2·A zmm accumulators) per step, a 16-column step for an odd tail, then the
    /// remaining atoms one by one (`A` = 4).
    ///
    /// # Safety
    /// AVX-512F available; otherwise as [`atom_responses`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn atom_responses_avx512(
        z: &mut [f32],
        atoms: &[f32],
        width: usize,
        x: &[f32],
        stride: usize,
    ) {
        let l = atoms.len() / width;
        let (zp, ap, xp) = (z.as_mut_ptr(), atoms.as_ptr(), x.as_ptr());
        let mut i = 0;
        while i + 4 <= l {
            zresp_block::<4>(zp, ap, xp, i, width, stride);
            i += 4;
        }
        while i < l {
            zresp_block::<1>(zp, ap, xp, i, width, stride);
            i += 1;
        }
    }

    /// Atoms `i..i + A` over all `stride` columns (a multiple of 16): 32 at a time, then 16.
    ///
    /// # Safety
    /// AVX-512F available; atoms `i..i + A` exist (`(i + A)·width <= atoms.len()`), `x` holds
    /// `width` planes and `z` planes `i..i + A` of `stride` floats.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn zresp_block<const A: usize>(
        zp: *mut f32,
        ap: *const f32,
        xp: *const f32,
        i: usize,
        width: usize,
        stride: usize,
    ) {
        let mut p = 0;
        while p + 32 <= stride {
            let mut acc = [[_mm512_setzero_ps(); 2]; A];
            for j in 0..width {
                let x0 = _mm512_loadu_ps(xp.add(j * stride + p));
                let x1 = _mm512_loadu_ps(xp.add(j * stride + p + 16));
                for (row, pair) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*ap.add((i + row) * width + j));
                    pair[0] = _mm512_fmadd_ps(a, x0, pair[0]);
                    pair[1] = _mm512_fmadd_ps(a, x1, pair[1]);
                }
            }
            for (row, pair) in acc.iter().enumerate() {
                let dst = zp.add((i + row) * stride + p);
                _mm512_storeu_ps(dst, pair[0]);
                _mm512_storeu_ps(dst.add(16), pair[1]);
            }
            p += 32;
        }
        if p < stride {
            let mut acc = [_mm512_setzero_ps(); A];
            for j in 0..width {
                let x0 = _mm512_loadu_ps(xp.add(j * stride + p));
                for (row, v) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*ap.add((i + row) * width + j));
                    *v = _mm512_fmadd_ps(a, x0, *v);
                }
            }
            for (row, v) in acc.iter().enumerate() {
                _mm512_storeu_ps(zp.add((i + row) * stride + p), *v);
            }
        }
    }

    /// See [`super::representatives`]: per representative, one zmm (16 floats) at a time, the
    /// α terms fused multiply-added in a register and stored once.
    ///
    /// # Safety
    /// AVX-512F available; otherwise as [`representatives`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn representatives_avx512(
        r: &mut [f32],
        z: &[f32],
        idx: &[u32],
        coef: &[f32],
        alpha: usize,
        stride: usize,
    ) {
        let (rp, zp, ip, cp) = (r.as_mut_ptr(), z.as_ptr(), idx.as_ptr(), coef.as_ptr());
        for i in 0..idx.len() / alpha {
            let (dst, code) = (rp.add(i * stride), i * alpha);
            // The first term is a plain product, as in the portable path.
            let first = zp.add(*ip.add(code) as usize * stride);
            let c0 = _mm512_set1_ps(*cp.add(code));
            if alpha == 2 {
                // The common case with its two sources and coefficients hoisted out of the loop.
                let second = zp.add(*ip.add(code + 1) as usize * stride);
                let c1 = _mm512_set1_ps(*cp.add(code + 1));
                let mut p = 0;
                while p < stride {
                    let v = _mm512_mul_ps(c0, _mm512_loadu_ps(first.add(p)));
                    let v = _mm512_fmadd_ps(c1, _mm512_loadu_ps(second.add(p)), v);
                    _mm512_storeu_ps(dst.add(p), v);
                    p += BLOCK;
                }
                continue;
            }
            let mut p = 0;
            while p < stride {
                let mut v = _mm512_mul_ps(c0, _mm512_loadu_ps(first.add(p)));
                for t in 1..alpha {
                    let src = zp.add(*ip.add(code + t) as usize * stride + p);
                    v = _mm512_fmadd_ps(_mm512_set1_ps(*cp.add(code + t)), _mm512_loadu_ps(src), v);
                }
                _mm512_storeu_ps(dst.add(p), v);
                p += BLOCK;
            }
        }
    }

    /// See [`super::representatives`]: per representative, 32 floats at a time, the α terms
    /// fused multiply-added in registers and stored once.
    ///
    /// # Safety
    /// AVX2 + FMA available; `alpha ≥ 1`; `idx.len() == coef.len()`, a multiple of α;
    /// `stride % BLOCK == 0`; `r.len() ≥ idx.len() / α · stride`; every
    /// `(idx[t] + 1)·stride ≤ z.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn representatives(
        r: &mut [f32],
        z: &[f32],
        idx: &[u32],
        coef: &[f32],
        alpha: usize,
        stride: usize,
    ) {
        // Plain index loops: iterator adapters such as `Skip` are not always inlined into a
        // `target_feature` function, and a call per term spilled the accumulators.
        let (rp, zp, ip, cp) = (r.as_mut_ptr(), z.as_ptr(), idx.as_ptr(), coef.as_ptr());
        for i in 0..idx.len() / alpha {
            let (dst, code) = (rp.add(i * stride), i * alpha);
            // The first term is a plain product (as in the portable path), so α = 1 with
            // coefficient 1 copies Z bit for bit (sign of zero included).
            let first = zp.add(*ip.add(code) as usize * stride);
            let c0 = _mm256_set1_ps(*cp.add(code));
            let mut p = 0;
            while p + 32 <= stride {
                let mut v0 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p)));
                let mut v1 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p + 8)));
                let mut v2 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p + 16)));
                let mut v3 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p + 24)));
                for t in 1..alpha {
                    let src = zp.add(*ip.add(code + t) as usize * stride + p);
                    let c = _mm256_set1_ps(*cp.add(code + t));
                    v0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src), v0);
                    v1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(8)), v1);
                    v2 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(16)), v2);
                    v3 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(24)), v3);
                }
                _mm256_storeu_ps(dst.add(p), v0);
                _mm256_storeu_ps(dst.add(p + 8), v1);
                _mm256_storeu_ps(dst.add(p + 16), v2);
                _mm256_storeu_ps(dst.add(p + 24), v3);
                p += 32;
            }
            while p < stride {
                let mut v0 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p)));
                let mut v1 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p + 8)));
                for t in 1..alpha {
                    let src = zp.add(*ip.add(code + t) as usize * stride + p);
                    let c = _mm256_set1_ps(*cp.add(code + t));
                    v0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src), v0);
                    v1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(8)), v1);
                }
                _mm256_storeu_ps(dst.add(p), v0);
                _mm256_storeu_ps(dst.add(p + 8), v1);
                p += BLOCK;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `test` can run `isa` on this CPU; when it cannot, says so on stderr (shown with
    /// `--nocapture`, as scripts/test.sh runs the kernels' summary).
    fn runs_on(isa: Isa, test: &str) -> bool {
        let ok = isa.supported();
        if !ok {
            eprintln!("SKIPPED {test}: this CPU lacks {}", isa.name());
        }
        ok
    }

    /// A small deterministic generator (xorshift) for the test data.
    fn values(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The AVX-512 look-up adds (aligned loads shifted in registers, or unaligned loads near the
    /// buffer's ends) give the portable sums bit for bit (plain adds) and to rounding (scaled),
    /// for every misalignment of the source, every shift and run lengths of 1–20 blocks.
    #[test]
    fn avx512_accumulate_matches_portable() {
        if !runs_on(Isa::Avx512, "avx512_accumulate_matches_portable") {
            return;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let backing = values(ALIGNED_MIN_LEN + 4096, &mut seed);
        for start in 0..BLOCK {
            let r = &backing[start..];
            for blocks in [1, 2, 7, 13, 16, 17, 20] {
                let len = blocks * BLOCK;
                // Interior runs (the aligned version) and runs at both ends of `r` (the
                // unaligned fallback).
                let interior = vec![16, 17, 31, 32, 47, 240, 1001, 2047, 3600];
                assert!(aligned_reads_fit(r, &interior, len));
                for offsets in [interior, vec![0, 5, r.len() - len]] {
                    check_accumulate(r, len, &offsets, &mut seed);
                }
            }
        }
        let aligned = (0..BLOCK).find(|&s| (backing[s..].as_ptr() as usize).is_multiple_of(64));
        let r = &backing[aligned.unwrap_or(0)..];
        assert!(aligned_reads_fit(r, &[0, 1, 17, 240], 13 * BLOCK));
        assert!(!aligned_reads_fit(r, &[r.len() - 13 * BLOCK], 13 * BLOCK));
    }

    /// `accumulate_channels` on AVX-512 gives the portable sums bit for bit: 3×3 taps at padded
    /// width 15 over 240-float planes, every misalignment of `r`, representative 0 included
    /// (its first run starts in `r`'s first partial block: the unaligned fallback), sources
    /// above and below `ALIGNED_MIN_LEN`.
    #[test]
    fn avx512_accumulate_channels_matches_portable() {
        if !runs_on(Isa::Avx512, "avx512_accumulate_channels_matches_portable") {
            return;
        }
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let (stride, run, acc_stride) = (240, 208, 208);
        let origins: Vec<usize> = (0..9).map(|t| t / 3 * 15 + t % 3).collect();
        for reps in [20, 60] {
            let backing = values(reps * stride + 3 * BLOCK, &mut seed);
            for start in 0..BLOCK {
                let r = &backing[start..start + reps * stride + 2 * BLOCK];
                let gamma: Vec<u32> = values(9 * 12, &mut seed)
                    .iter()
                    .enumerate()
                    .map(|(j, v)| {
                        if j < 9 {
                            0
                        } else {
                            ((v + 1.0) * 1000.0) as u32 % reps as u32
                        }
                    })
                    .collect();
                let init = values(12 * acc_stride, &mut seed);
                let mut offsets = vec![0; 9];
                let (mut fast, mut slow) = (init.clone(), init);
                for (isa, acc) in [(Isa::Avx512, &mut fast), (Isa::Portable, &mut slow)] {
                    accumulate_channels(
                        isa,
                        acc,
                        acc_stride,
                        run,
                        r,
                        &gamma,
                        &origins,
                        stride,
                        &mut offsets,
                    );
                }
                assert_eq!(fast, slow, "{reps} representatives, start {start}");
            }
        }
    }

    /// The AVX-512 row-layout adds equal the portable loop (to rounding) on every edge: 1–3
    /// vectors per row, bands of 1 to the most rows that fit (one-row last bands included),
    /// kernels 1×1 to 5×4, column shifts up to 15 lanes, row dilation 1–2, α = 1–3, initial
    /// values and the crop on and off, and Z exactly as long as the planes its terms name (the
    /// last term's last row ends at the buffer's end).
    #[test]
    fn avx512_accumulate_rows_matches_portable() {
        if runs_on(Isa::Avx512, "avx512_accumulate_rows_matches_portable") {
            rows_match_portable(Isa::Avx512);
        }
    }

    /// The same for the AVX2 row path, which also runs on AVX-512 machines (only the columns it
    /// computes, `cols`, are compared: each case's `ow`, the most the kernel ever asks, and on
    /// odd cases fewer, down to one).
    #[test]
    fn avx2_accumulate_rows_matches_portable() {
        if runs_on(Isa::Avx2Fma, "avx2_accumulate_rows_matches_portable") {
            rows_match_portable(Isa::Avx2Fma);
        }
    }

    /// Every case of the row tests on `isa`.
    fn rows_match_portable(isa: Isa) {
        let mut seed = 0x5851_f42d_4c95_7f2d;
        let mut cases = 0;
        for per_row in 1..=3 {
            let pitch = per_row * BLOCK;
            for [kh, kw, dh, dw] in [
                [1, 1, 1, 1],
                [3, 3, 1, 1],
                [3, 3, 2, 7],
                [5, 4, 1, 5],
                [2, 2, 1, 15],
            ] {
                let width = pitch - (kw - 1) * dw;
                for oh in [1, 4, 13, 14, 27] {
                    for band_rows in [1, 2, 3, 6, 12] {
                        // Odd cases ask for fewer columns (AVX2 computes fewer vectors).
                        let ow = if cases % 2 == 1 {
                            1 + cases % width
                        } else {
                            width
                        };
                        let most = row_band_vectors(isa) / row_vectors(isa, pitch, ow);
                        if band_rows > most.max(1) {
                            continue;
                        }
                        for alpha in [None, Some(1), Some(2), Some(3)] {
                            let hp = oh + (kh - 1) * dh;
                            let stride = (hp * pitch).div_ceil(BLOCK) * BLOCK;
                            check_rows(
                                isa,
                                [kh, kw, dh, dw],
                                [pitch, oh, ow, stride],
                                (band_rows, None),
                                alpha,
                                cases,
                                &mut seed,
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert!(cases > 400, "{cases} cases");
    }

    /// The AVX2 row path on strided layers' phase planes equals the portable loop: strides
    /// 2×2, 2×1, 1×3 and 3×3, kernels 1×1 to 5×4 with dilations, 1–2 vectors per row, Z exactly
    /// as long as its planes (plus AVX2's overhang).
    #[test]
    fn avx2_strided_rows_match_portable() {
        if !runs_on(Isa::Avx2Fma, "avx2_strided_rows_match_portable") {
            return;
        }
        let mut seed = 0x2545_f491_4f6c_dd1d;
        let mut cases = 0;
        for strides in [[2usize, 2], [2, 1], [1, 3], [3, 3]] {
            for [kh, kw, dh, dw] in [[1, 1, 1, 1], [3, 3, 1, 1], [3, 3, 2, 3], [5, 4, 1, 2]] {
                for pitch in [BLOCK, 2 * BLOCK] {
                    for oh in [1, 5, 9] {
                        let [sh, sw] = strides;
                        let shift = (kw - 1) * dw / sw;
                        // Padded planes whose column phases are `pitch` wide.
                        let hp = (oh - 1) * sh + (kh - 1) * dh + 1;
                        let col_phase = hp.div_ceil(sh) * pitch;
                        let phases = Phases {
                            strides,
                            dilations: [dh, dw],
                            row_phase: sw * col_phase,
                            col_phase,
                        };
                        let stride = (sh * sw * col_phase).div_ceil(BLOCK) * BLOCK;
                        let ow = if cases % 2 == 1 {
                            1 + cases % 7
                        } else {
                            pitch - shift
                        };
                        let band_rows = 1 + cases % (ROW_VECTORS_AVX2 / ow.div_ceil(8));
                        for alpha in [None, Some(2)] {
                            check_rows(
                                Isa::Avx2Fma,
                                [kh, kw, dh, dw],
                                [pitch, oh, ow, stride],
                                (band_rows, Some(phases)),
                                alpha,
                                cases,
                                &mut seed,
                            );
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 192);
    }

    /// One case of [`avx512_accumulate_rows_matches_portable`]: 5 channels, the middle three
    /// computed; init and crop chosen by `case`.
    fn check_rows(
        isa: Isa,
        [kh, kw, dh, dw]: [usize; 4],
        [pitch, oh, ow, stride]: [usize; 4],
        (band_rows, phases): (usize, Option<Phases>),
        alpha: Option<usize>,
        case: usize,
        seed: &mut u64,
    ) {
        let (m, atoms) = (5, 6);
        let reps = if alpha.is_some() { 7 } else { atoms };
        let pick = |n: usize, limit: usize, seed: &mut u64| -> Vec<u32> {
            values(n, seed)
                .iter()
                .map(|v| ((v + 1.0) * 1000.0) as u32 % limit as u32)
                .collect()
        };
        // The largest atom is always used, so Z ends exactly where its last plane ends.
        let mut code_atoms = pick(reps * alpha.unwrap_or(1), atoms, seed);
        code_atoms[0] = atoms as u32 - 1;
        let mut assignment = pick(m * kh * kw, reps, seed);
        assignment[0] = if alpha.is_some() { 0 } else { atoms as u32 - 1 };
        assignment[m * kh * kw - 1] = assignment[0];
        let sub = crate::conv::Subspace {
            channels: 0..1,
            atoms: values(atoms, seed),
            num_atoms: atoms,
            codes: alpha.map(|alpha| crate::conv::Codes {
                alpha,
                atoms: code_atoms[..reps * alpha].to_vec(),
                coefficients: values(reps * alpha, seed),
            }),
            assignment,
        };
        let terms = RowTerms::new(&sub, [kh, kw]);
        let shape = RowShape {
            pitch,
            stride,
            oh,
            kernel: [kh, kw],
            row_step: dh * pitch,
            shift: dw,
            band_rows,
            cols: ow,
            phases,
        };
        // AVX2's overhang past the last plane: only as much as it may read.
        let overhang = if isa == Isa::Avx2Fma {
            shape.max_shift()
        } else {
            0
        };
        let z = values(atoms * stride + overhang, seed);
        let acc_stride = oh * pitch + if case.is_multiple_of(2) { 0 } else { BLOCK };
        let init_acc = values(3 * acc_stride, seed);
        let bias = values(3, seed);
        let init = match case % 4 {
            0 | 1 => None,
            2 => Some(None),
            _ => Some(Some(&bias[..])),
        };
        let crop = case.is_multiple_of(3);
        let mut results = Vec::new();
        for isa in [isa, Isa::Portable] {
            let mut acc = init_acc.clone();
            let mut dst = vec![f32::NAN; 3 * oh * ow];
            let ends = RowEnds {
                init,
                crop: crop.then_some((&mut dst[..], ow)),
            };
            accumulate_rows(isa, &mut acc, acc_stride, &z, &terms, 1..4, shape, ends);
            results.push((acc, dst));
        }
        let what = format!("kernel {kh}×{kw} dil {dh},{dw} pitch {pitch} oh {oh} band {band_rows} α {alpha:?} case {case}");
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + b.abs());
        if crop {
            let (fast, slow) = (&results[0].1, &results[1].1);
            assert!(fast.iter().zip(slow).all(|(&a, &b)| close(a, b)), "{what}");
        } else {
            let (fast, slow) = (&results[0].0, &results[1].0);
            for i in 0..3 {
                for y in 0..oh {
                    for c in 0..ow {
                        let p = i * acc_stride + y * pitch + c;
                        assert!(close(fast[p], slow[p]), "{what}: channel {i} ({y}, {c})");
                    }
                }
            }
        }
    }

    /// Runs both look-up adds on AVX-512 and portably and compares them.
    fn check_accumulate(r: &[f32], len: usize, offsets: &[usize], seed: &mut u64) {
        let coefs = values(offsets.len(), seed);
        let init = values(len, seed);
        let (mut fast, mut slow) = (init.clone(), init.clone());
        accumulate(Isa::Avx512, &mut fast, r, offsets);
        accumulate(Isa::Portable, &mut slow, r, offsets);
        assert_eq!(fast, slow, "len {len}, offsets {offsets:?}");
        let (mut fast, mut slow) = (init.clone(), init);
        accumulate_scaled(Isa::Avx512, &mut fast, r, offsets, &coefs);
        accumulate_scaled(Isa::Portable, &mut slow, r, offsets, &coefs);
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
