//! Causal attention of query rows against one sequence's f16 KV cache, one key/value head
//! (and every query head that shares it) at a time. All query vectors of the work item —
//! each row times each head of the group — read the same keys and values, so the cache is
//! widened to f32 once per item, a block of positions at a time that stays in L1, and the
//! products run on f32 with FMA. The numbers are llama.cpp's: f16 keys times f16-rounded
//! queries, an f32 softmax, and f16-rounded weights times f16 values.

// SIMD intrinsics are unsafe to call; `attend` checks the CPU features once before using
// them, and every load stays inside the slices (checked up front). That is all the unsafe
// code here.
#![allow(unsafe_code)]

use half::f16;

/// The attention shape of a model.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Keys a query sees: its own position and the `window - 1` before it (usize::MAX:
    /// all earlier positions).
    pub window: usize,
}

impl Heads {
    fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    fn kv_width(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.n_head / self.n_kv_head
    }

    /// The positions a query at `pos` attends to.
    fn visible(&self, pos: usize) -> std::ops::Range<usize> {
        (pos + 1).saturating_sub(self.window)..pos + 1
    }
}

/// Positions widened per block.
const BLOCK: usize = 64;
/// How many positions ahead keys are prefetched.
const AHEAD: usize = 12;

/// One work item: query heads `heads` (indices within the group) of key/value head `kvh`
/// for `q`'s rows (positions `start..`, `q_width` floats each), over a sequence's keys and
/// values (`kv_width` f16 per position).
pub struct Item<'a> {
    pub q: &'a [f32],
    pub kvh: usize,
    pub heads: std::ops::Range<usize>,
    pub k: &'a [f16],
    pub v: &'a [f16],
    pub start: usize,
}

/// The item's output over the positions each row sees: rows × heads × head_dim floats, row
/// by row, then head by head.
pub fn attend(c: Heads, item: &Item<'_>) -> Vec<f32> {
    let rows = item.q.len() / c.q_width();
    assert!(item.kvh < c.n_kv_head && item.heads.end <= c.group());
    assert!(item.k.len().min(item.v.len()) >= (item.start + rows) * c.kv_width());
    #[cfg(target_arch = "x86_64")]
    if has_simd() && c.head_dim.is_multiple_of(8) {
        // SAFETY: the CPU has the features; the slices were checked above.
        return unsafe { x86::attend(c, item) };
    }
    body::<Portable>(c, item)
}

/// The inner loops, per instruction set. Each result depends only on its own inputs and
/// positions, never on where a row sits in its item, so a row gets the same bits in
/// whatever batch it runs.
trait Ops {
    /// f16 to f32, `src.len()` values.
    fn widen(src: &[f16], dst: &mut [f32]);
    /// `src` rounded to f16 and back, into `dst`.
    fn round_f16(src: &[f32], dst: &mut [f32]) {
        for (o, &x) in dst.iter_mut().zip(src) {
            *o = f16::from_f32(x).to_f32();
        }
    }
    /// Asks for `row` to be brought into the cache ahead of its use.
    fn prefetch(_row: &[f16]) {}
    /// `out[j] = scale · (q · keys[j])`, keys of `q.len()` floats one after another.
    fn scores(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]);
    /// Softmax in place over the scores one query sees, the weights rounded to f16
    /// (llama.cpp multiplies the f16 values by f16 weights).
    fn softmax(s: &mut [f32]);
    /// out += Σ_i weights[i]·rows[i], rows of out.len() floats, in order of i, skipping
    /// zero weights.
    fn weighted_sum(weights: &[f32], rows: &[f32], out: &mut [f32]);
}

struct Portable;

impl Ops for Portable {
    fn widen(src: &[f16], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
    }

    fn scores(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
        for (o, key) in out.iter_mut().zip(keys.chunks_exact(q.len())) {
            *o = q.iter().zip(key).map(|(x, y)| x * y).sum::<f32>() * scale;
        }
    }

    fn softmax(s: &mut [f32]) {
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0.0;
        for x in s.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        for x in s.iter_mut() {
            *x = f16::from_f32(*x / sum).to_f32();
        }
    }

    fn weighted_sum(weights: &[f32], rows: &[f32], out: &mut [f32]) {
        let d = out.len();
        for (&w, x) in weights.iter().zip(rows.chunks_exact(d)) {
            if w != 0.0 {
                out.iter_mut().zip(x).for_each(|(o, x)| *o += w * x);
            }
        }
    }
}

#[inline(always)]
fn body<O: Ops>(c: Heads, item: &Item<'_>) -> Vec<f32> {
    let Item {
        q,
        kvh,
        ref heads,
        k,
        v,
        start,
    } = *item;
    let (d, group, per_row) = (c.head_dim, c.group(), heads.len());
    let rows = q.len() / c.q_width();
    let m_count = rows * per_row;
    let span = c.visible(start).start..start + rows;
    let width = span.len();
    let scale = 1.0 / (d as f32).sqrt();
    let kv_at = |j: usize| j * c.kv_width() + kvh * d;

    // The first keys are on their way while the queries are prepared.
    for j in span.clone().take(AHEAD) {
        O::prefetch(&k[kv_at(j)..][..d]);
    }
    // The query vectors, rounded to f16 as llama.cpp multiplies them: m = row·heads + g.
    let mut queries = vec![0f32; m_count * d];
    for t in 0..rows {
        for (i, g) in heads.clone().enumerate() {
            let h = kvh * group + g;
            let src = &q[t * c.q_width() + h * d..][..d];
            let dst = &mut queries[(t * per_row + i) * d..][..d];
            O::round_f16(src, dst);
        }
    }
    // Scores of every query vector over the span; positions a row does not see keep a
    // weight of 0.
    let mut scores = vec![0f32; m_count * width];
    let mut block = vec![0f32; BLOCK.min(width) * d];
    for b0 in span.clone().step_by(BLOCK) {
        let b1 = (b0 + BLOCK).min(span.end);
        for j in b0..b1 {
            // The cache of a batch of sequences is far larger than the CPU's caches: fetch
            // keys a few positions ahead, and the values at this position for later.
            if j + AHEAD < span.end {
                O::prefetch(&k[kv_at(j + AHEAD)..][..d]);
            }
            O::prefetch(&v[kv_at(j)..][..d]);
            O::widen(&k[kv_at(j)..][..d], &mut block[(j - b0) * d..][..d]);
        }
        for t in 0..rows {
            let seen = c.visible(start + t);
            let (lo, hi) = (seen.start.max(b0), seen.end.min(b1));
            if lo >= hi {
                continue;
            }
            for i in 0..per_row {
                let m = t * per_row + i;
                O::scores(
                    &queries[m * d..][..d],
                    &block[(lo - b0) * d..(hi - b0) * d],
                    scale,
                    &mut scores[m * width + lo - span.start..][..hi - lo],
                );
            }
        }
    }
    for t in 0..rows {
        let seen = c.visible(start + t);
        for i in 0..per_row {
            let row = &mut scores[(t * per_row + i) * width..][..width];
            O::softmax(&mut row[seen.start - span.start..seen.end - span.start]);
        }
    }
    let mut out = vec![0f32; m_count * d];
    for b0 in span.clone().step_by(BLOCK) {
        let b1 = (b0 + BLOCK).min(span.end);
        for j in b0..b1 {
            O::widen(&v[kv_at(j)..][..d], &mut block[(j - b0) * d..][..d]);
        }
        for m in 0..m_count {
            let weights = &scores[m * width + (b0 - span.start)..][..b1 - b0];
            O::weighted_sum(weights, &block[..(b1 - b0) * d], &mut out[m * d..][..d]);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
fn has_simd() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Heads, Item, Ops, body};
    use crate::vmath::x86::exp;
    use half::f16;
    use std::arch::x86_64::*;

    /// `attend` with the loops below inlined; head_dim a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend(c: Heads, item: &Item<'_>) -> Vec<f32> {
        body::<Avx2>(c, item)
    }

    struct Avx2;

    // SAFETY (all of them): only reached through `attend` above, on a CPU with the
    // features; every load and store covers 8 values inside the slices (head_dim is a
    // multiple of 8; the last group of keys or scores goes through a buffer of 8).
    impl Ops for Avx2 {
        #[inline(always)]
        fn widen(src: &[f16], dst: &mut [f32]) {
            let n = src.len().min(dst.len()) / 8;
            let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
            for i in 0..n {
                unsafe {
                    let h = _mm_loadu_si128(ps.add(8 * i).cast());
                    _mm256_storeu_ps(pd.add(8 * i), _mm256_cvtph_ps(h));
                }
            }
        }

        #[inline(always)]
        fn round_f16(src: &[f32], dst: &mut [f32]) {
            let n = src.len().min(dst.len());
            let mut i = 0;
            while i + 8 <= n {
                unsafe {
                    let x = _mm256_loadu_ps(src.as_ptr().add(i));
                    let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
                    _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                }
                i += 8;
            }
            for (o, &x) in dst[i..n].iter_mut().zip(&src[i..n]) {
                *o = f16::from_f32(x).to_f32();
            }
        }

        #[inline(always)]
        fn prefetch(row: &[f16]) {
            let bytes = std::mem::size_of_val(row);
            let p = row.as_ptr().cast::<i8>();
            let mut off = 0;
            while off < bytes {
                // SAFETY: an address inside `row`; a prefetch reads nothing.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
                off += 64;
            }
            if bytes > 0 {
                // SAFETY: as above (the last byte: a row that starts inside a line ends
                // in one more).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(bytes - 1)) };
            }
        }

        /// Eight keys at a time, one accumulator each, summed across lanes by one tree
        /// that treats every key alike (a key's bits do not depend on its neighbours).
        #[inline(always)]
        fn scores(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
            let d = q.len();
            let n = out.len().min(keys.len() / d.max(1));
            let (pq, pk, po) = (q.as_ptr(), keys.as_ptr(), out.as_mut_ptr());
            let mut j0 = 0;
            while j0 < n {
                let count = (n - j0).min(8);
                // Missing keys of the last group repeat its first; their sums are dropped.
                let key: [*const f32; 8] = std::array::from_fn(|j| {
                    let j = if j < count { j0 + j } else { j0 };
                    // SAFETY: key j of the n in `keys`.
                    unsafe { pk.add(j * d) }
                });
                unsafe {
                    let mut acc = [_mm256_setzero_ps(); 8];
                    let mut c = 0;
                    while c + 8 <= d {
                        let qv = _mm256_loadu_ps(pq.add(c));
                        for (a, kp) in acc.iter_mut().zip(key) {
                            *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kp.add(c)), *a);
                        }
                        c += 8;
                    }
                    let s = _mm256_mul_ps(sum8(acc), _mm256_set1_ps(scale));
                    if count == 8 {
                        _mm256_storeu_ps(po.add(j0), s);
                    } else {
                        let mut tmp = [0f32; 8];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), s);
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), po.add(j0), count);
                    }
                }
                j0 += count;
            }
        }

        /// Eight scores at a time with a polynomial exp.
        #[inline(always)]
        fn softmax(s: &mut [f32]) {
            let n = s.len();
            if n == 0 {
                return;
            }
            let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            unsafe {
                let maxv = _mm256_set1_ps(max);
                let mut sum = _mm256_setzero_ps();
                // Groups of 8 from the row's first visible position (the same groups in
                // any item); the last one padded with −∞, whose exp is 0.
                let mut lo = 0;
                while lo < n {
                    let hi = (lo + 8).min(n);
                    if hi - lo == 8 {
                        let p = s.as_mut_ptr().add(lo);
                        let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p), maxv));
                        sum = _mm256_add_ps(sum, e);
                        _mm256_storeu_ps(p, e);
                    } else {
                        let mut tmp = [f32::NEG_INFINITY; 8];
                        tmp[..hi - lo].copy_from_slice(&s[lo..hi]);
                        let e = exp(_mm256_sub_ps(_mm256_loadu_ps(tmp.as_ptr()), maxv));
                        sum = _mm256_add_ps(sum, e);
                        _mm256_storeu_ps(tmp.as_mut_ptr(), e);
                        s[lo..hi].copy_from_slice(&tmp[..hi - lo]);
                    }
                    lo = hi;
                }
                let total = _mm256_set1_ps(hsum(sum));
                let mut i = 0;
                while i + 8 <= n {
                    let w = _mm256_div_ps(_mm256_loadu_ps(s.as_ptr().add(i)), total);
                    let w = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(w));
                    _mm256_storeu_ps(s.as_mut_ptr().add(i), w);
                    i += 8;
                }
                let total = _mm256_cvtss_f32(total);
                for x in &mut s[i..] {
                    *x = f16::from_f32(*x / total).to_f32();
                }
            }
        }

        /// The output is held in registers, 64 floats at a time, across all rows.
        #[inline(always)]
        fn weighted_sum(weights: &[f32], rows: &[f32], out: &mut [f32]) {
            let d = out.len();
            let n = weights.len().min(rows.len() / d.max(1));
            let mut c = 0;
            while c < d {
                // SAFETY: columns c..c+8·L of out and of each of the n rows exist.
                unsafe {
                    if d - c >= 64 {
                        chunk::<8>(&weights[..n], rows.as_ptr(), d, c, out.as_mut_ptr());
                        c += 64;
                    } else {
                        chunk::<1>(&weights[..n], rows.as_ptr(), d, c, out.as_mut_ptr());
                        c += 8;
                    }
                }
            }
        }
    }

    /// Lane sums of eight vectors: lane j is the sum of `v[j]`'s lanes.
    #[inline(always)]
    unsafe fn sum8(v: [__m256; 8]) -> __m256 {
        // SAFETY: register arithmetic only; callers have the features.
        unsafe {
            let a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
            let b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            )
        }
    }

    /// The sum of the eight lanes, in a fixed order.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register arithmetic only; callers have the features.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
        }
    }

    /// `weighted_sum` over columns c..c+8·L, the L registers of output live throughout.
    #[inline(always)]
    unsafe fn chunk<const L: usize>(
        weights: &[f32],
        rows: *const f32,
        d: usize,
        c: usize,
        out: *mut f32,
    ) {
        unsafe {
            let mut o = [_mm256_setzero_ps(); L];
            for (k, reg) in o.iter_mut().enumerate() {
                *reg = _mm256_loadu_ps(out.add(c + 8 * k));
            }
            for (i, &w) in weights.iter().enumerate() {
                if w == 0.0 {
                    continue;
                }
                let wv = _mm256_set1_ps(w);
                let row = rows.add(i * d + c);
                for (k, reg) in o.iter_mut().enumerate() {
                    *reg = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * k)), *reg);
                }
            }
            for (k, reg) in o.iter().enumerate() {
                _mm256_storeu_ps(out.add(c + 8 * k), *reg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Attention written out the plain way, one query head and one row at a time.
    fn reference(c: Heads, q: &[f32], h: usize, k: &[f16], v: &[f16], start: usize) -> Vec<f32> {
        let d = c.head_dim;
        let kvh = h / c.group();
        let (qw, kw) = (c.q_width(), c.kv_width());
        let mut out = Vec::new();
        for (t, q_row) in q.chunks(qw).enumerate() {
            let qh: Vec<f32> = q_row[h * d..(h + 1) * d]
                .iter()
                .map(|&x| f16::from_f32(x).to_f32())
                .collect();
            let seen = c.visible(start + t);
            let scores: Vec<f32> = seen
                .clone()
                .map(|j| {
                    let key = &k[j * kw + kvh * d..][..d];
                    qh.iter().zip(key).map(|(a, b)| a * b.to_f32()).sum::<f32>() / (d as f32).sqrt()
                })
                .collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let sum: f32 = scores.iter().map(|s| (s - max).exp()).sum();
            let mut o = vec![0f32; d];
            for (j, s) in seen.zip(&scores) {
                let w = f16::from_f32((s - max).exp() / sum).to_f32();
                let value = &v[j * kw + kvh * d..][..d];
                o.iter_mut()
                    .zip(value)
                    .for_each(|(o, x)| *o += w * x.to_f32());
            }
            out.extend(o);
        }
        out
    }

    #[test]
    fn grouped_attention_matches_the_plain_reference() {
        let mut r = rand::rngs::StdRng::seed_from_u64(3);
        let cases = [
            (64usize, 3usize, usize::MAX, 37usize, 5usize),
            (64, 3, usize::MAX, 0, 1),
            (128, 1, usize::MAX, 150, 40),
            (256, 4, 9, 100, 12),
            (40, 2, 9, 20, 3),
        ];
        for (head_dim, group, window, start, rows) in cases {
            let c = Heads {
                n_head: 2 * group,
                n_kv_head: 2,
                head_dim,
                window,
            };
            let visible = start + rows;
            let halves = |r: &mut rand::rngs::StdRng, n: usize| -> Vec<f16> {
                (0..n)
                    .map(|_| f16::from_f32(r.random_range(-1.0..1.0)))
                    .collect()
            };
            let k = halves(&mut r, visible * c.kv_width());
            let v = halves(&mut r, visible * c.kv_width());
            let q: Vec<f32> = (0..rows * c.q_width())
                .map(|_| r.random_range(-2.0..2.0))
                .collect();
            for kvh in 0..c.n_kv_head {
                let item = |heads| Item {
                    q: &q,
                    kvh,
                    heads,
                    k: &k,
                    v: &v,
                    start,
                };
                let got = attend(c, &item(0..group));
                // One head of the group on its own gives that head's part.
                let last = attend(c, &item(group - 1..group));
                for t in 0..rows {
                    assert_eq!(
                        last[t * head_dim..][..head_dim],
                        got[(t * group + group - 1) * head_dim..][..head_dim]
                    );
                }
                for g in 0..group {
                    let want = reference(c, &q, kvh * group + g, &k, &v, start);
                    for t in 0..rows {
                        let got = &got[(t * group + g) * head_dim..][..head_dim];
                        let want = &want[t * head_dim..][..head_dim];
                        for (a, b) in got.iter().zip(want) {
                            assert!(
                                (a - b).abs() < 1e-4,
                                "d {head_dim} window {window} head {g} row {t}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_alone_and_in_a_longer_item() {
        // The scores, the softmax sums and the weighted sums of a query row must not
        // depend on the other rows of its item (a batch changes no row), windowed or not.
        let mut r = rand::rngs::StdRng::seed_from_u64(9);
        for (window, start, rows) in [(usize::MAX, 13, 21), (7, 30, 19), (40, 3, 70)] {
            let c = Heads {
                n_head: 6,
                n_kv_head: 2,
                head_dim: 64,
                window,
            };
            let n = (start + rows) * c.kv_width();
            let k: Vec<f16> = (0..n)
                .map(|_| f16::from_f32(r.random_range(-1.0..1.0)))
                .collect();
            let v: Vec<f16> = (0..n)
                .map(|_| f16::from_f32(r.random_range(-1.0..1.0)))
                .collect();
            let q: Vec<f32> = (0..rows * c.q_width())
                .map(|_| r.random_range(-3.0..3.0))
                .collect();
            let all = attend(
                c,
                &Item {
                    q: &q,
                    kvh: 1,
                    heads: 0..3,
                    k: &k,
                    v: &v,
                    start,
                },
            );
            let each = 3 * c.head_dim;
            for t in 0..rows {
                let alone = attend(
                    c,
                    &Item {
                        q: &q[t * c.q_width()..][..c.q_width()],
                        kvh: 1,
                        heads: 0..3,
                        k: &k,
                        v: &v,
                        start: start + t,
                    },
                );
                assert_eq!(
                    alone[..],
                    all[t * each..][..each],
                    "window {window} row {t}"
                );
            }
        }
    }

    #[test]
    fn the_first_position_sees_only_itself() {
        // One position: the softmax weight is 1 and the output is that position's value.
        let c = Heads {
            n_head: 2,
            n_kv_head: 1,
            head_dim: 64,
            window: usize::MAX,
        };
        let k: Vec<f16> = (0..64).map(|i| f16::from_f32(i as f32 / 64.0)).collect();
        let v: Vec<f16> = (0..64)
            .map(|i| f16::from_f32(1.0 - i as f32 / 32.0))
            .collect();
        let q = vec![0.5f32; 128];
        let out = attend(
            c,
            &Item {
                q: &q,
                kvh: 0,
                heads: 0..2,
                k: &k,
                v: &v,
                start: 0,
            },
        );
        let want: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
        assert_eq!(out[..64], want[..]);
        assert_eq!(out[64..], want[..]);
    }

    #[test]
    fn a_window_of_one_sees_only_the_own_position() {
        let c = Heads {
            n_head: 1,
            n_kv_head: 1,
            head_dim: 64,
            window: 1,
        };
        let k: Vec<f16> = (0..3 * 64)
            .map(|i| f16::from_f32((i % 7) as f32 / 7.0))
            .collect();
        let v: Vec<f16> = (0..3 * 64)
            .map(|i| f16::from_f32(i as f32 / 256.0))
            .collect();
        let q = vec![0.25f32; 64];
        // The query at position 2 returns position 2's value exactly.
        let out = attend(
            c,
            &Item {
                q: &q,
                kvh: 0,
                heads: 0..1,
                k: &k,
                v: &v,
                start: 2,
            },
        );
        let want: Vec<f32> = v[128..].iter().map(|x| x.to_f32()).collect();
        assert_eq!(out, want);
    }
}
