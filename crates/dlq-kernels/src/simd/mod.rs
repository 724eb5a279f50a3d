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

/// A DL subspace's codes as [`RowTerms::new`] reads them: α `atoms` and `coefficients` per
/// representative.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodeTerms<'a> {
    pub(crate) atoms: &'a [u32],
    pub(crate) coefficients: &'a [f32],
    pub(crate) alpha: usize,
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
    /// The terms of a validated subspace with a `kh × kw` kernel: its `assignment` (a multiple
    /// of kh·kw long) and, for DL, its codes (α atoms and coefficients per representative), every
    /// representative and code atom in range (checked by `DlqConv::new`).
    pub(crate) fn new(
        assignment: &[u32],
        codes: Option<CodeTerms<'_>>,
        [kh, kw]: [usize; 2],
    ) -> RowTerms {
        let taps = kh * kw;
        let alpha = codes.map_or(1, |c| c.alpha);
        let (mut atoms, mut coefs) = (Vec::new(), Vec::new());
        for column in assignment.chunks_exact(taps) {
            for v in 0..kw {
                for u in 0..kh {
                    let rep = column[u * kw + v];
                    match codes {
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
mod x86;

#[cfg(test)]
mod tests;
