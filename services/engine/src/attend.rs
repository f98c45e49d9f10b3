//! Causal attention of query rows against one sequence's f16 KV cache, one query head at
//! a time. The cache is read in place: with F16C the keys and values are widened eight at
//! a time in registers (no f32 copy of the cache per step), the head's output stays in
//! registers across all positions, and the numbers are llama.cpp's: f16 keys times
//! f16-rounded queries, an f32 softmax, and f16-rounded weights times f16 values.

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

    /// The positions a query at `pos` attends to.
    fn visible(&self, pos: usize) -> std::ops::Range<usize> {
        (pos + 1).saturating_sub(self.window)..pos + 1
    }
}

/// Output of query head `h` for `q`'s rows (positions `start..`, `q_width` floats each)
/// over the keys and values (`kv_width` f16 per position) each row sees: rows × head_dim
/// floats.
pub fn attend(c: Heads, q: &[f32], h: usize, k: &[f16], v: &[f16], start: usize) -> Vec<f32> {
    let rows = q.len() / c.q_width();
    let visible = start + rows;
    assert!(h < c.n_head && k.len().min(v.len()) >= visible * c.kv_width());
    let mut out = vec![0f32; rows * c.head_dim];
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        match c.head_dim {
            // SAFETY: the features were checked, and the slices hold every position read.
            64 => return unsafe { x86::attend::<8>(c, q, h, k, v, start, out) },
            128 => return unsafe { x86::attend::<16>(c, q, h, k, v, start, out) },
            256 => return unsafe { x86::attend::<32>(c, q, h, k, v, start, out) },
            _ => {}
        }
    }
    portable(c, q, h, k, v, start, &mut out);
    out
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Softmax of `scores` in place, each weight rounded to f16 (llama.cpp multiplies the f16
/// values by f16 weights).
fn softmax_f16(scores: &mut [f32]) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s = f16_round(*s / sum);
    }
}

/// The reference, for any head size and CPU.
fn portable(c: Heads, q: &[f32], h: usize, k: &[f16], v: &[f16], start: usize, out: &mut [f32]) {
    let d = c.head_dim;
    let kvh = h / (c.n_head / c.n_kv_head);
    let (qw, kw) = (c.q_width(), c.kv_width());
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = Vec::new();
    for (t, q_row) in q.chunks(qw).enumerate() {
        let qh: Vec<f32> = q_row[h * d..(h + 1) * d]
            .iter()
            .map(|&x| f16_round(x))
            .collect();
        scores.clear();
        let visible = c.visible(start + t);
        for j in visible.clone() {
            let key = &k[j * kw + kvh * d..j * kw + (kvh + 1) * d];
            let s: f32 = qh.iter().zip(key).map(|(a, b)| a * b.to_f32()).sum();
            scores.push(s * scale);
        }
        softmax_f16(&mut scores);
        let o = &mut out[t * d..(t + 1) * d];
        for (j, &w) in visible.zip(&scores) {
            let value = &v[j * kw + kvh * d..j * kw + (kvh + 1) * d];
            o.iter_mut()
                .zip(value)
                .for_each(|(o, x)| *o += w * x.to_f32());
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Heads, softmax_f16};
    use half::f16;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Eight f16 at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(p: *const f16) -> __m256 {
        // SAFETY: the caller passes 8 readable halves.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
    }

    /// `attend` for head_dim = 8·D.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend<const D: usize>(
        c: Heads,
        q: &[f32],
        h: usize,
        k: &[f16],
        v: &[f16],
        start: usize,
        mut out: Vec<f32>,
    ) -> Vec<f32> {
        let d = 8 * D;
        let kvh = h / (c.n_head / c.n_kv_head);
        let (qw, kw) = (c.q_width(), c.kv_width());
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = Vec::with_capacity(start + q.len() / qw);
        for (t, q_row) in q.chunks_exact(qw).enumerate() {
            // The query head, rounded to f16 as llama.cpp multiplies it.
            let qh: [__m256; D] = std::array::from_fn(|i| {
                // SAFETY: 8 floats inside the head's slice of the row.
                let x = unsafe { _mm256_loadu_ps(q_row[h * d + 8 * i..].as_ptr()) };
                _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
            });
            let visible = c.visible(start + t);
            scores.clear();
            for j in visible.clone() {
                let key = k[j * kw + kvh * d..][..d].as_ptr();
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for i in (0..D).step_by(2) {
                    // SAFETY: `key` points at d = 8·D halves.
                    a0 = _mm256_fmadd_ps(qh[i], unsafe { widen(key.add(8 * i)) }, a0);
                    if i + 1 < D {
                        a1 = _mm256_fmadd_ps(qh[i + 1], unsafe { widen(key.add(8 * i + 8)) }, a1);
                    }
                }
                scores.push(hsum(_mm256_add_ps(a0, a1)) * scale);
            }
            softmax_f16(&mut scores);
            let mut o = [_mm256_setzero_ps(); D];
            for (j, &w) in visible.zip(&scores) {
                let value = v[j * kw + kvh * d..][..d].as_ptr();
                let w = _mm256_set1_ps(w);
                for (i, o) in o.iter_mut().enumerate() {
                    // SAFETY: `value` points at d = 8·D halves.
                    *o = _mm256_fmadd_ps(w, unsafe { widen(value.add(8 * i)) }, *o);
                }
            }
            for (i, o) in o.iter().enumerate() {
                // SAFETY: 8 floats inside row t of `out` (rows × d).
                unsafe { _mm256_storeu_ps(out[t * d + 8 * i..][..8].as_mut_ptr(), *o) };
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn simd_attention_matches_the_portable_reference() {
        let mut r = rand::rngs::StdRng::seed_from_u64(3);
        for (head_dim, window) in [(64usize, usize::MAX), (128, usize::MAX), (256, 9), (40, 9)] {
            let c = Heads {
                n_head: 6,
                n_kv_head: 2,
                head_dim,
                window,
            };
            let (start, rows) = (37usize, 5usize);
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
            for h in 0..c.n_head {
                let got = attend(c, &q, h, &k, &v, start);
                let mut want = vec![0f32; rows * head_dim];
                portable(c, &q, h, &k, &v, start, &mut want);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "d {head_dim} head {h} [{i}]: {a} vs {b}"
                    );
                }
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
        for h in 0..2 {
            let out = attend(c, &q, h, &k, &v, 0);
            let want: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
            assert_eq!(out, want);
        }
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
        let out = attend(c, &q, 0, &k, &v, 2);
        let want: Vec<f32> = v[128..].iter().map(|x| x.to_f32()).collect();
        assert_eq!(out, want);
    }
}
