//! Dictionary-learning codebook of one subspace (METHOD.md, the paper's Table I):
//! W_s ≈ D Λ Γ with L unit-norm atoms D, α-sparse codes Λ for K representatives and one-hot
//! assignments Γ. Every step is an exact or guarded minimisation, so the objective
//! ‖W_s − DΛΓ‖²_F never increases after the initialisation.

use rand::rngs::Xoshiro256PlusPlus;

use super::kmeans::{self, sq_dist, KMeansParams, NearestSearch};
use super::subspace::Points;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DlParams {
    pub k: usize,
    pub l: usize,
    pub alpha: usize,
    pub iters: usize,
    pub kmeans_iters: usize,
    /// Dictionary/code alternations on the k-means centroids before the first re-assignment.
    pub init_iters: usize,
}

/// Λ stored sparsely: `alpha` (atom, coefficient) slots per representative; an unused slot has
/// coefficient 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseCodes {
    pub alpha: usize,
    pub atoms: Vec<u32>,
    pub coefs: Vec<f32>,
}

impl SparseCodes {
    pub fn len(&self) -> usize {
        self.atoms.len() / self.alpha.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.atoms.is_empty()
    }

    pub fn slots(&self, r: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let range = r * self.alpha..(r + 1) * self.alpha;
        self.atoms[range.clone()]
            .iter()
            .zip(&self.coefs[range])
            .map(|(&a, &c)| (a as usize, c))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DlResult {
    pub dictionary: Points,
    pub codes: SparseCodes,
    pub assignment: Vec<u32>,
    /// Objective after the initialisation and after every step of every iteration
    /// (sparse coding, dictionary update, assignment).
    pub objective: Vec<f64>,
}

type Code = Vec<(usize, f32)>;

/// Orthogonal matching pursuit of `x` on the rows of `dict` with at most `alpha` atoms: pick the
/// atom most correlated with the residual (lowest index on ties), re-fit all chosen
/// coefficients by least squares, repeat.
pub fn omp(x: &[f32], dict: &[f32], dim: usize, alpha: usize) -> Code {
    let l = dict.len() / dim;
    let norm2: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mut chosen: Vec<usize> = Vec::with_capacity(alpha);
    let mut coefs: Vec<f64> = Vec::new();
    let mut residual: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for _ in 0..alpha.min(l) {
        let mut best = (usize::MAX, 0.0f64);
        for j in 0..l {
            if chosen.contains(&j) {
                continue;
            }
            let c: f64 = dict[j * dim..(j + 1) * dim]
                .iter()
                .zip(&residual)
                .map(|(&d, &r)| d as f64 * r)
                .sum();
            if c.abs() > best.1 {
                best = (j, c.abs());
            }
        }
        if best.0 == usize::MAX || best.1 * best.1 <= 1e-24 * norm2.max(1e-30) {
            break;
        }
        chosen.push(best.0);
        match least_squares(x, dict, dim, &chosen) {
            Some(z) => coefs = z,
            None => {
                chosen.pop();
                break;
            }
        }
        for (r, &xv) in residual.iter_mut().zip(x) {
            *r = xv as f64;
        }
        for (&a, &z) in chosen.iter().zip(&coefs) {
            for (r, &d) in residual.iter_mut().zip(&dict[a * dim..(a + 1) * dim]) {
                *r -= z * d as f64;
            }
        }
    }
    chosen
        .into_iter()
        .zip(coefs)
        .map(|(a, z)| (a, z as f32))
        .collect()
}

/// Coefficients of the least-squares fit of `x` by the atoms `idx` (Cholesky of their Gram
/// matrix); `None` when the atoms are (numerically) linearly dependent.
fn least_squares(x: &[f32], dict: &[f32], dim: usize, idx: &[usize]) -> Option<Vec<f64>> {
    let n = idx.len();
    let atom = |a: usize| &dict[a * dim..(a + 1) * dim];
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(&p, &q)| p as f64 * q as f64)
            .sum::<f64>()
    };
    let mut g = vec![0f64; n * n];
    let mut b = vec![0f64; n];
    for i in 0..n {
        b[i] = dot(atom(idx[i]), x);
        for j in 0..=i {
            g[i * n + j] = dot(atom(idx[i]), atom(idx[j]));
        }
    }
    // In-place Cholesky, lower triangle.
    for j in 0..n {
        let mut d = g[j * n + j];
        for k in 0..j {
            d -= g[j * n + k] * g[j * n + k];
        }
        if d <= 1e-10 {
            return None;
        }
        let d = d.sqrt();
        g[j * n + j] = d;
        for i in j + 1..n {
            let mut s = g[i * n + j];
            for k in 0..j {
                s -= g[i * n + k] * g[j * n + k];
            }
            g[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= g[i * n + k] * b[k];
        }
        b[i] = s / g[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= g[k * n + i] * b[k];
        }
        b[i] = s / g[i * n + i];
    }
    Some(b)
}

struct State<'a> {
    points: &'a Points,
    dim: usize,
    dict: Vec<f32>,
    codes: Vec<Code>,
    reps: Vec<f32>,
    assignment: Vec<u32>,
    sums: Vec<f64>,
    counts: Vec<usize>,
}

impl State<'_> {
    fn rep_of(&self, code: &Code) -> Vec<f32> {
        let mut r = vec![0f32; self.dim];
        for &(a, z) in code {
            for (v, &d) in r
                .iter_mut()
                .zip(&self.dict[a * self.dim..(a + 1) * self.dim])
            {
                *v += z * d;
            }
        }
        r
    }

    fn set_rep(&mut self, r: usize) {
        let v = self.rep_of(&self.codes[r]);
        self.reps[r * self.dim..(r + 1) * self.dim].copy_from_slice(&v);
    }

    fn stats(&mut self) {
        let dim = self.dim;
        self.sums.iter_mut().for_each(|s| *s = 0.0);
        self.counts.iter_mut().for_each(|c| *c = 0);
        for (i, &a) in self.assignment.iter().enumerate() {
            let a = a as usize;
            self.counts[a] += 1;
            for (s, &x) in self.sums[a * dim..(a + 1) * dim]
                .iter_mut()
                .zip(self.points.row(i))
            {
                *s += x as f64;
            }
        }
    }

    fn mean(&self, r: usize) -> Vec<f32> {
        let n = self.counts[r] as f64;
        self.sums[r * self.dim..(r + 1) * self.dim]
            .iter()
            .map(|&s| (s / n) as f32)
            .collect()
    }

    fn point_error(&self, i: usize) -> f32 {
        let a = self.assignment[i] as usize;
        sq_dist(
            self.points.row(i),
            &self.reps[a * self.dim..(a + 1) * self.dim],
        )
    }

    fn objective(&self) -> f64 {
        (0..self.points.len())
            .map(|i| self.point_error(i) as f64)
            .sum()
    }

    /// Code every representative as OMP of its members' mean, keeping the old code when OMP
    /// does not fit better (so the step never increases the objective). `force` codes even
    /// without comparison (initialisation). Empty representatives take the worst-fit points.
    fn sparse_coding(&mut self, alpha: usize, force: bool) {
        let k = self.codes.len();
        let mut empty = Vec::new();
        for r in 0..k {
            if self.counts[r] == 0 {
                empty.push(r);
                continue;
            }
            let mean = self.mean(r);
            let code = omp(&mean, &self.dict, self.dim, alpha);
            let new = self.rep_of(&code);
            let old = &self.reps[r * self.dim..(r + 1) * self.dim];
            if force || sq_dist(&mean, &new) < sq_dist(&mean, old) {
                self.codes[r] = code;
                self.reps[r * self.dim..(r + 1) * self.dim].copy_from_slice(&new);
            }
        }
        let mut taken = vec![false; self.points.len()];
        for r in empty {
            let mut worst: Option<(usize, f32)> = None;
            for i in 0..self.points.len() {
                let e = self.point_error(i);
                if !taken[i]
                    && self.counts[self.assignment[i] as usize] > 1
                    && worst.is_none_or(|w| e > w.1)
                {
                    worst = Some((i, e));
                }
            }
            let Some((i, err)) = worst else { break };
            taken[i] = true;
            let code = omp(self.points.row(i), &self.dict, self.dim, alpha);
            self.codes[r] = code;
            self.set_rep(r);
            if sq_dist(
                self.points.row(i),
                &self.reps[r * self.dim..(r + 1) * self.dim],
            ) < err
            {
                let old = self.assignment[i] as usize;
                self.assignment[i] = r as u32;
                self.counts[old] -= 1;
                self.counts[r] += 1;
                for d in 0..self.dim {
                    let x = self.points.row(i)[d] as f64;
                    self.sums[old * self.dim + d] -= x;
                    self.sums[r * self.dim + d] += x;
                }
            }
        }
    }

    /// Coordinate descent over atoms: each atom becomes the unit vector that best fits what the
    /// other atoms leave unexplained, with the codes fixed. Unused atoms are re-seeded with the
    /// residual direction of the worst-fit point.
    fn dictionary_update(&mut self) {
        let (dim, k, l) = (self.dim, self.codes.len(), self.dict.len() / self.dim);
        let mut users: Vec<Vec<(usize, f32)>> = vec![Vec::new(); l];
        for (r, code) in self.codes.iter().enumerate() {
            for &(a, z) in code {
                if z != 0.0 {
                    users[a].push((r, z));
                }
            }
        }
        let mut reseeded = vec![false; self.points.len()];
        for (i, atom_users) in users.iter().enumerate() {
            let old: Vec<f32> = self.dict[i * dim..(i + 1) * dim].to_vec();
            let mut v = vec![0f64; dim];
            let mut used = false;
            for &(r, z) in atom_users {
                let n = self.counts[r] as f64;
                if n == 0.0 {
                    continue;
                }
                used = true;
                let z = z as f64;
                for d in 0..dim {
                    let rep = self.reps[r * dim + d] as f64;
                    v[d] += z * (self.sums[r * dim + d] - n * rep + n * z * old[d] as f64);
                }
            }
            let new: Vec<f32> = if used {
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm <= 1e-12 {
                    continue;
                }
                v.iter().map(|&x| (x / norm) as f32).collect()
            } else {
                let mut worst: Option<(usize, f32)> = None;
                for p in 0..self.points.len() {
                    let e = self.point_error(p);
                    if !reseeded[p] && worst.is_none_or(|w| e > w.1) {
                        worst = Some((p, e));
                    }
                }
                let Some((p, e)) = worst else { continue };
                if e <= 0.0 {
                    continue;
                }
                reseeded[p] = true;
                let a = self.assignment[p] as usize;
                let res: Vec<f64> = (0..dim)
                    .map(|d| (self.points.row(p)[d] - self.reps[a * dim + d]) as f64)
                    .collect();
                let norm = res.iter().map(|x| x * x).sum::<f64>().sqrt();
                res.iter().map(|&x| (x / norm) as f32).collect()
            };
            self.dict[i * dim..(i + 1) * dim].copy_from_slice(&new);
            for &(r, _) in atom_users {
                self.set_rep(r);
            }
        }
        debug_assert_eq!(self.reps.len(), k * dim);
    }

    /// Every point to its nearest representative (lowest index on ties).
    fn assign(&mut self) {
        let mut search = NearestSearch::new(&self.reps, self.dim);
        for i in 0..self.points.len() {
            self.assignment[i] = search.nearest(self.points.row(i)).0 as u32;
        }
        self.stats();
    }
}

/// Learns D, Λ, Γ for one subspace. `k` and `l` are clamped to the number of points.
pub fn learn(points: &Points, p: &DlParams, rng: &mut Xoshiro256PlusPlus) -> DlResult {
    let dim = points.dim;
    let k = p.k.min(points.len()).max(1);
    let l = p.l.min(k).max(1);
    // (1) k-means into K clusters.
    let km = kmeans::kmeans(
        points,
        &KMeansParams {
            k,
            max_iters: p.kmeans_iters,
            tolerance: 1e-6,
        },
        rng,
    );
    // (2) an initial dictionary: k-means of the centroids into L, normalised.
    let dk = kmeans::kmeans(
        &km.centroids,
        &KMeansParams {
            k: l,
            max_iters: p.kmeans_iters,
            tolerance: 1e-6,
        },
        rng,
    );
    let mut dict = dk.centroids.data;
    for (i, atom) in dict.chunks_exact_mut(dim).enumerate() {
        let norm = atom.iter().map(|&x| x * x).sum::<f32>().sqrt();
        if norm > 1e-12 {
            atom.iter_mut().for_each(|x| *x /= norm);
        } else {
            atom.iter_mut()
                .enumerate()
                .for_each(|(d, x)| *x = if d == i % dim { 1.0 } else { 0.0 });
        }
    }
    let mut st = State {
        points,
        dim,
        dict,
        codes: vec![Vec::new(); k],
        reps: vec![0f32; k * dim],
        assignment: km.assignment,
        sums: vec![0f64; k * dim],
        counts: vec![0; k],
    };
    st.stats();
    for r in 0..k {
        if st.counts[r] == 0 {
            st.codes[r] = omp(km.centroids.row(r), &st.dict, dim, p.alpha);
            st.set_rep(r);
        }
    }
    st.sparse_coding(p.alpha, true);
    for _ in 0..p.init_iters {
        st.dictionary_update();
        st.sparse_coding(p.alpha, false);
    }
    // (3) re-assignment to the nearest representative.
    st.assign();
    let mut objective = vec![st.objective()];
    for _ in 0..p.iters {
        st.sparse_coding(p.alpha, false);
        objective.push(st.objective());
        st.dictionary_update();
        objective.push(st.objective());
        st.assign();
        objective.push(st.objective());
    }
    let mut codes = SparseCodes {
        alpha: p.alpha,
        atoms: vec![0; k * p.alpha],
        coefs: vec![0.0; k * p.alpha],
    };
    for (r, code) in st.codes.iter().enumerate() {
        for (slot, &(a, z)) in code.iter().enumerate() {
            codes.atoms[r * p.alpha + slot] = a as u32;
            codes.coefs[r * p.alpha + slot] = z;
        }
    }
    DlResult {
        dictionary: Points { data: st.dict, dim },
        codes,
        assignment: st.assignment,
        objective,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn omp_recovers_an_exact_sparse_combination() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let dim = 8;
        let mut dict: Vec<f32> = (0..12 * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        for a in dict.chunks_exact_mut(dim) {
            let n = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            a.iter_mut().for_each(|x| *x /= n);
        }
        let x: Vec<f32> = (0..dim)
            .map(|d| 2.0 * dict[3 * dim + d] - 0.5 * dict[7 * dim + d])
            .collect();
        let mut code = omp(&x, &dict, dim, 2);
        code.sort_by_key(|c| c.0);
        assert_eq!(code.iter().map(|c| c.0).collect::<Vec<_>>(), vec![3, 7]);
        assert!(
            (code[0].1 - 2.0).abs() < 1e-4 && (code[1].1 + 0.5).abs() < 1e-4,
            "{code:?}"
        );
    }

    #[test]
    fn omp_stops_on_dependent_atoms_and_zero_input() {
        let dict = vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let code = omp(&[3.0, 0.0], &dict, 2, 2);
        assert_eq!(code.len(), 1);
        assert!(omp(&[0.0, 0.0], &dict, 2, 2).is_empty());
    }

    /// Points that are exact α-sparse combinations of a known dictionary, K distinct ones.
    fn sparse_data(
        rng: &mut Xoshiro256PlusPlus,
        dim: usize,
        l: usize,
        k: usize,
        alpha: usize,
        per: usize,
    ) -> Points {
        let mut dict: Vec<f32> = (0..l * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        for a in dict.chunks_exact_mut(dim) {
            let n = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            a.iter_mut().for_each(|x| *x /= n);
        }
        let reps: Vec<Vec<f32>> = (0..k)
            .map(|_| {
                let mut v = vec![0f32; dim];
                for _ in 0..alpha {
                    let a = rng.random_range(0..l);
                    let z =
                        rng.random_range(1.0..3.0) * if rng.random::<bool>() { 1.0 } else { -1.0 };
                    for d in 0..dim {
                        v[d] += z * dict[a * dim + d];
                    }
                }
                v
            })
            .collect();
        let mut data = Vec::new();
        for _ in 0..per {
            for r in &reps {
                data.extend_from_slice(r);
            }
        }
        Points { data, dim }
    }

    #[test]
    fn exact_sparse_representatives_are_learned_to_near_zero_error() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let points = sparse_data(&mut rng, 8, 4, 10, 2, 5);
        let total: f64 = points.data.iter().map(|&x| (x as f64).powi(2)).sum();
        let r = learn(
            &points,
            &DlParams {
                k: 10,
                l: 4,
                alpha: 2,
                iters: 30,
                kmeans_iters: 100,
                init_iters: 10,
            },
            &mut rng,
        );
        let rel = (r.objective.last().unwrap() / total).sqrt();
        assert!(
            rel < 1e-3,
            "relative error {rel}, objective {:?}",
            r.objective
        );
    }

    #[test]
    fn objective_never_increases_after_initialisation() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let points = Points {
            data: (0..8 * 600)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect(),
            dim: 8,
        };
        let r = learn(
            &points,
            &DlParams {
                k: 60,
                l: 14,
                alpha: 2,
                iters: 15,
                kmeans_iters: 50,
                init_iters: 5,
            },
            &mut rng,
        );
        for w in r.objective.windows(2) {
            assert!(
                w[1] <= w[0] * (1.0 + 1e-6) + 1e-9,
                "objective rose: {:?}",
                r.objective
            );
        }
        assert!(r.objective.last().unwrap() < &r.objective[0]);
    }
}
