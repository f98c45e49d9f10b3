//! Vector math for the forward pass: the exponential the attention softmax and the SiLU
//! and GELU activations need, and the f64 sum of squares of the RMS norm, each with a
//! portable fallback that gives the same results to within float rounding.

// SIMD intrinsics are unsafe to call; the public functions check the CPU features once
// and every load and store stays inside the slices. That is all the unsafe code here.
#![allow(unsafe_code)]

/// `out[i] = silu(gate[i]) · up[i]`, SiLU(x) = x / (1 + e^−x).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    act_mul(Act::Silu, gate, up, out);
}

/// `out[i] = gelu(gate[i]) · up[i]` with GELU's tanh form (Gemma's `gelu_pytorch_tanh`):
/// 0.5·x·(1 + tanh(y)) = x / (1 + e^(−2y)), y = √(2/π)·(x + 0.044715·x³).
pub fn gelu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    act_mul(Act::Gelu, gate, up, out);
}

#[derive(Clone, Copy)]
enum Act {
    Silu,
    Gelu,
}

fn act_mul(act: Act, gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len().min(gate.len()).min(up.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has the features; the function stays below n.
        done = unsafe { x86::act_mul(act, &gate[..n], &up[..n], &mut out[..n]) };
    }
    for i in done..n {
        let g = gate[i];
        out[i] = match act {
            Act::Silu => g / (1.0 + (-g).exp()),
            Act::Gelu => gelu(g),
        } * up[i];
    }
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// GELU, tanh form, one value.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)).tanh())
}

/// Σ x² accumulated in f64 (as llama.cpp's RMS norm sums), four lanes at a time where
/// the CPU has AVX2; the lanes are added in a fixed order, so a row always gives the same
/// bits on one machine.
pub fn sum_squares(x: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has the features.
        return unsafe { x86::sum_squares(x) };
    }
    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// e^x within about one unit in the last place for x in [−87, 88] (below: about
    /// 1.6e−38, −∞: exactly 0; above: e^88): 2^n times a degree-6 polynomial in the
    /// remainder r = x − n·ln 2, |r| ≤ ln 2 / 2 (Cephes' expf coefficients).
    #[inline(always)]
    pub unsafe fn exp(x: __m256) -> __m256 {
        // SAFETY: register arithmetic only; callers have avx2 and fma.
        unsafe {
            let none = _mm256_cmp_ps::<_CMP_EQ_OQ>(x, _mm256_set1_ps(f32::NEG_INFINITY));
            let x = _mm256_min_ps(
                _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
                _mm256_set1_ps(88.0),
            );
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            );
            // ln 2 split into 355/512 and a small rest so that n·355/512 is exact.
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
            let mut p = _mm256_set1_ps(1.987_569_1e-4);
            for c in [
                1.398_199_9e-3,
                8.333_345e-3,
                4.166_579_6e-2,
                0.166_666_65,
                0.5,
            ] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let y = _mm256_add_ps(
                _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
                _mm256_set1_ps(1.0),
            );
            // 2^n through the exponent bits; n ≤ 127 here. e^88 needs n = 127 and a y
            // above 1, which is 2^127·1.2 — inside f32.
            let pow = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            _mm256_andnot_ps(none, _mm256_mul_ps(y, _mm256_castsi256_ps(pow)))
        }
    }

    /// `sum_squares`: two f64 accumulators of four lanes, then the tail one by one.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum_squares(x: &[f32]) -> f64 {
        let n = x.len() / 8 * 8;
        let (mut a, mut b) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut i = 0;
        while i < n {
            // SAFETY: elements i..i+8 exist.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
            a = _mm256_fmadd_pd(lo, lo, a);
            b = _mm256_fmadd_pd(hi, hi, b);
            i += 8;
        }
        let mut lanes = [0f64; 4];
        // SAFETY: four doubles.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(a, b)) };
        let mut sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        for &v in &x[n..] {
            sum += f64::from(v) * f64::from(v);
        }
        sum
    }

    /// `act_mul` over whole groups of eight; returns how many elements it did.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn act_mul(
        act: super::Act,
        gate: &[f32],
        up: &[f32],
        out: &mut [f32],
    ) -> usize {
        let n = out.len().min(gate.len()).min(up.len()) / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        // x / (1 + e^(k·t)): SiLU with t = x, k = −1; GELU with t = x + 0.044715·x³ and
        // k = −2·√(2/π).
        let (k, cubic) = match act {
            super::Act::Silu => (-1.0, 0.0),
            super::Act::Gelu => (-2.0 * super::SQRT_2_OVER_PI, super::GELU_CUBIC),
        };
        let (k, c) = (_mm256_set1_ps(k), _mm256_set1_ps(cubic));
        let mut i = 0;
        while i < n {
            // SAFETY: elements i..i+8 of all three slices exist.
            unsafe {
                let x = _mm256_loadu_ps(gate.as_ptr().add(i));
                let t = match act {
                    super::Act::Silu => x,
                    super::Act::Gelu => {
                        _mm256_fmadd_ps(_mm256_mul_ps(c, x), _mm256_mul_ps(x, x), x)
                    }
                };
                let e = exp(_mm256_mul_ps(k, t));
                let g = _mm256_div_ps(x, _mm256_add_ps(one, e));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(g, u));
            }
            i += 8;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_matches_the_scalar_formula() {
        let gate: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let up: Vec<f32> = (0..1003).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut out = vec![0f32; gate.len()];
        silu_mul(&gate, &up, &mut out);
        for ((&g, &u), &o) in gate.iter().zip(&up).zip(&out) {
            let want = g / (1.0 + (-g as f64).exp() as f32) * u;
            assert!(
                (o - want).abs() <= 2e-6 * want.abs().max(1e-30) + 1e-37,
                "silu({g})·{u}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        let gate: Vec<f32> = (0..2003).map(|i| (i as f32 - 1000.0) * 0.011).collect();
        let up: Vec<f32> = (0..2003).map(|i| 0.5 + (i % 5) as f32 * 0.5).collect();
        let mut out = vec![0f32; gate.len()];
        gelu_mul(&gate, &up, &mut out);
        for ((&g, &u), &o) in gate.iter().zip(&up).zip(&out) {
            let x = f64::from(g);
            let want = 0.5 * x * (1.0 + (0.797_884_560_8 * (x + 0.044_715 * x * x * x)).tanh());
            let want = (want * f64::from(u)) as f32;
            assert!(
                (o - want).abs() <= 4e-6 * want.abs() + 1e-7,
                "gelu({g})·{u}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn sum_of_squares_matches_the_plain_sum() {
        for n in [0usize, 1, 7, 8, 9, 576, 1003] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.31)
                .collect();
            let want: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            let got = sum_squares(&x);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "n {n}: {got} vs {want}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_units_in_the_last_place() {
        if !x86::available() {
            return;
        }
        use std::arch::x86_64::*;
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let xs: [f32; 8] = std::array::from_fn(|i| x + i as f32 * 1e-3);
            let mut got = [0f32; 8];
            // SAFETY: the CPU has the features (checked above); 8 floats each.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), x86::exp(_mm256_loadu_ps(xs.as_ptr()))) };
            for (&xi, &g) in xs.iter().zip(&got) {
                let want = (xi as f64).exp();
                let ulp = (want as f32).abs() * f32::EPSILON;
                worst = worst.max((g as f64 - want).abs() / ulp as f64);
            }
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} units in the last place");
        let mut zero = [1f32; 8];
        // SAFETY: as above.
        unsafe {
            _mm256_storeu_ps(
                zero.as_mut_ptr(),
                x86::exp(_mm256_set1_ps(f32::NEG_INFINITY)),
            )
        };
        assert_eq!(zero, [0.0; 8]);
    }
}
