//! llmesh's own quantized matrix products for the formats the default models ship in
//! (Q4_1 and Q8_0 weights), replacing candle's scalar CPU path for them.
//!
//! The arithmetic is llama.cpp's: each activation row is quantized to 8 bits in blocks of
//! 32 (scale `d = max|x| / 127`, and for Q4_1 also `s = d · Σq`), each block's integer dot
//! product is exact, and the float combination per block is
//! `d_w·d_a·Σ(w·a)` (+ `m_w·s_a` for Q4_1). So greedy tokens stay those of llama.cpp.
//!
//! What is different is the shape of the work: weights are repacked once at load (scales
//! as f32 beside the packed nibbles), a weight block is unpacked once and multiplied against
//! up to [`TILE`] activation rows while it sits in registers, output features are split
//! across the compute pool (rayon, sized to the cores), and the inner product uses AVX2
//! (`maddubs`), or AVX512-VNNI (`vpdpbusd`) where the CPU has it, chosen at run time, with
//! a portable scalar path elsewhere.

// SIMD intrinsics are unsafe to call (the CPU must have the features, which `kernels()`
// checks once at run time), and the pool's tasks write disjoint parts of one output
// buffer. That is all the unsafe code here, each use commented.
#![allow(unsafe_code)]

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{EngineError, Result};

/// Elements per quantization block.
pub const QK: usize = 32;
/// Activation rows multiplied against one unpacked weight block.
pub const TILE: usize = 4;

/// A Q4_1 weight block: `x ≈ d·q + m`, q in 0..16; element j is the low nibble of byte j,
/// element j+16 its high nibble.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f32,
    pub m: f32,
    pub qs: [u8; 16],
}

/// A Q8_0 weight block: `x ≈ d·q`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f32,
    pub qs: [i8; 32],
}

/// A quantized activation block (llama.cpp's Q8_1): `x ≈ d·q`, `s = d·Σq`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

enum Data {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
    /// Any other format goes through candle.
    Candle(QMatMul, Device),
}

/// A weight matrix of `rows` output features × `cols` inputs.
pub struct QWeight {
    pub rows: usize,
    pub cols: usize,
    data: Data,
}

impl QWeight {
    /// Takes a GGUF tensor of shape (out, in); Q4_1 and Q8_0 are repacked for the kernels
    /// here, other formats stay with candle.
    pub fn from_qtensor(t: QTensor, device: &Device) -> Result<QWeight> {
        let (rows, cols) = t
            .shape()
            .dims2()
            .map_err(|e| EngineError::Load(format!("weight shape: {e}")))?;
        if device.is_cpu()
            && let Some(w) = QWeight::from_raw(t.dtype(), rows, cols, &t.data()?)?
        {
            return Ok(w);
        }
        Ok(QWeight {
            rows,
            cols,
            data: Data::Candle(QMatMul::from_qtensor(t)?, device.clone()),
        })
    }

    /// Repacks GGUF bytes of a Q4_1 or Q8_0 tensor of shape (rows, cols) read straight
    /// from the file; None for other formats.
    pub fn from_raw(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        raw: &[u8],
    ) -> Result<Option<QWeight>> {
        if !cols.is_multiple_of(QK) {
            return Ok(None);
        }
        let data = match dtype {
            GgmlDType::Q4_1 => Data::Q4_1(repack_q4_1(raw)?),
            GgmlDType::Q8_0 => Data::Q8_0(repack_q8_0(raw)?),
            _ => return Ok(None),
        };
        let blocks = match &data {
            Data::Q4_1(b) => b.len(),
            Data::Q8_0(b) => b.len(),
            Data::Candle(..) => 0,
        };
        if blocks * QK != rows * cols {
            return Err(EngineError::Load(
                "weight data does not match its shape".into(),
            ));
        }
        Ok(Some(QWeight { rows, cols, data }))
    }

    /// Builds a weight from repacked Q4_1 blocks (tests and benchmarks).
    pub fn q4_1(rows: usize, cols: usize, blocks: Vec<BlockQ4_1>) -> QWeight {
        assert_eq!(blocks.len() * QK, rows * cols);
        QWeight {
            rows,
            cols,
            data: Data::Q4_1(blocks),
        }
    }

    /// Builds a weight from repacked Q8_0 blocks (tests and benchmarks).
    pub fn q8_0(rows: usize, cols: usize, blocks: Vec<BlockQ8_0>) -> QWeight {
        assert_eq!(blocks.len() * QK, rows * cols);
        QWeight {
            rows,
            cols,
            data: Data::Q8_0(blocks),
        }
    }

    /// Bytes the weight takes in memory.
    pub fn memory_bytes(&self) -> usize {
        match &self.data {
            Data::Q4_1(b) => std::mem::size_of_val(b.as_slice()),
            Data::Q8_0(b) => std::mem::size_of_val(b.as_slice()),
            Data::Candle(..) => self.rows * self.cols,
        }
    }

    /// Row `row` of the matrix as floats (an embedding lookup), when it is repacked here.
    pub fn dequantize_row(&self, row: usize, out: &mut Vec<f32>) -> Option<()> {
        let per_row = self.cols / QK;
        match &self.data {
            Data::Q8_0(b) => {
                for blk in &b[row * per_row..(row + 1) * per_row] {
                    out.extend(blk.qs.iter().map(|&q| blk.d * q as f32));
                }
            }
            Data::Q4_1(b) => {
                for blk in &b[row * per_row..(row + 1) * per_row] {
                    out.extend(blk.qs.iter().map(|&q| blk.d * (q & 0xF) as f32 + blk.m));
                    out.extend(blk.qs.iter().map(|&q| blk.d * (q >> 4) as f32 + blk.m));
                }
            }
            Data::Candle(..) => return None,
        }
        Some(())
    }

    /// `x` (n × cols, row-major) times the transposed weight: n × rows.
    pub fn forward(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        debug_assert_eq!(x.len(), n * self.cols);
        match &self.data {
            Data::Candle(m, device) => {
                let t = Tensor::from_slice(x, (n, self.cols), device)?;
                Ok(m.forward(&t)?.flatten_all()?.to_vec1::<f32>()?)
            }
            Data::Q4_1(w) => Ok(self.run(x, n, |w_row, acts, out| {
                kernels().q4_1(&w[w_row], acts, out)
            })),
            Data::Q8_0(w) => Ok(self.run(x, n, |w_row, acts, out| {
                kernels().q8_0(&w[w_row], acts, out)
            })),
        }
    }

    /// Quantizes the activations, then splits the output features across the pool. `dot`
    /// gets the block range of one weight row and up to TILE activation rows.
    fn run<F>(&self, x: &[f32], n: usize, dot: F) -> Vec<f32>
    where
        F: Fn(std::ops::Range<usize>, &[&[BlockQ8]], &mut [f32]) + Sync,
    {
        let per_row = self.cols / QK;
        let acts = quantize_rows(x, self.cols);
        let rows = self.rows;
        let mut out = vec![0f32; n * rows];
        // Enough pieces to balance the pool; each big enough to be worth a task.
        let threads = rayon::current_num_threads().max(1);
        let work = rows * n * per_row;
        // (A block dot takes a few nanoseconds; a task hand-off a few microseconds.)
        let pieces = if work < 8 * 1024 {
            1
        } else if work < 256 * 1024 {
            threads
        } else {
            threads * 4
        }
        .min(rows.div_ceil(8))
        .max(1);
        let chunk = rows.div_ceil(pieces);
        let out_ptr = SharedOut(out.as_mut_ptr());
        let task = |p: usize| {
            let out_ptr = &out_ptr;
            let lo = p * chunk;
            let hi = (lo + chunk).min(rows);
            let mut tile_out = [0f32; TILE];
            for t0 in (0..n).step_by(TILE) {
                let t = TILE.min(n - t0);
                let tile: Vec<&[BlockQ8]> = (t0..t0 + t)
                    .map(|r| &acts[r * per_row..(r + 1) * per_row])
                    .collect();
                for j in lo..hi {
                    dot(j * per_row..(j + 1) * per_row, &tile, &mut tile_out[..t]);
                    for (i, &v) in tile_out[..t].iter().enumerate() {
                        // SAFETY: each task writes only columns lo..hi of each output row,
                        // and the ranges of different tasks do not overlap.
                        unsafe { *out_ptr.0.add((t0 + i) * rows + j) = v };
                    }
                }
            }
        };
        if pieces == 1 {
            task(0);
        } else {
            (0..pieces).into_par_iter().for_each(task);
        }
        out
    }
}

struct SharedOut(*mut f32);
// SAFETY: used only for the disjoint writes described in `run`.
unsafe impl Sync for SharedOut {}

fn repack_q4_1(raw: &[u8]) -> Result<Vec<BlockQ4_1>> {
    const SIZE: usize = 20;
    if !raw.len().is_multiple_of(SIZE) {
        return Err(EngineError::Load("Q4_1 data is not whole blocks".into()));
    }
    Ok(raw
        .chunks_exact(SIZE)
        .map(|b| BlockQ4_1 {
            d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
            m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
            qs: b[4..20].try_into().expect("16 bytes"),
        })
        .collect())
}

fn repack_q8_0(raw: &[u8]) -> Result<Vec<BlockQ8_0>> {
    const SIZE: usize = 34;
    if !raw.len().is_multiple_of(SIZE) {
        return Err(EngineError::Load("Q8_0 data is not whole blocks".into()));
    }
    Ok(raw
        .chunks_exact(SIZE)
        .map(|b| {
            let mut qs = [0i8; 32];
            for (q, &byte) in qs.iter_mut().zip(&b[2..34]) {
                *q = byte as i8;
            }
            BlockQ8_0 {
                d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                qs,
            }
        })
        .collect())
}

/// Quantizes rows of `cols` floats to 8-bit blocks, as llama.cpp's `quantize_row_q8_1`:
/// the scale and the block sum are stored at f16 precision.
pub fn quantize_rows(x: &[f32], cols: usize) -> Vec<BlockQ8> {
    debug_assert!(cols.is_multiple_of(QK));
    x.chunks_exact(QK)
        .map(|v| {
            let amax = v.iter().fold(0f32, |m, &a| m.max(a.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; 32];
            let mut sum = 0i32;
            for (q, &a) in qs.iter_mut().zip(v) {
                *q = (a * id).round() as i8;
                sum += *q as i32;
            }
            BlockQ8 {
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(sum as f32 * d).to_f32(),
                qs,
            }
        })
        .collect()
}

/// The dot-product kernels the CPU supports best.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

/// Chosen once per process from the CPU's features (LLMESH_KERNELS=scalar|avx2 forces a
/// lesser set, for comparisons).
pub fn kernels() -> Kernels {
    static CHOSEN: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let forced = std::env::var("LLMESH_KERNELS").unwrap_or_default();
        let best = Kernels::available()
            .into_iter()
            .last()
            .unwrap_or(Kernels::Scalar);
        let chosen = Kernels::available()
            .into_iter()
            .find(|k| format!("{k:?}").eq_ignore_ascii_case(&forced))
            .unwrap_or(best);
        tracing::debug!(kernels = ?chosen, "quantized matmul kernels");
        chosen
    })
}

impl Kernels {
    /// Every set this CPU can run, from the portable one up.
    pub fn available() -> Vec<Kernels> {
        #[allow(unused_mut)]
        let mut all = vec![Kernels::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(Kernels::Avx2);
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    all.push(Kernels::Avx512Vnni);
                }
            }
        }
        all
    }

    /// Dots of one Q4_1 weight row with each activation row in `acts` (≤ TILE).
    pub fn q4_1(self, w: &[BlockQ4_1], acts: &[&[BlockQ8]], out: &mut [f32]) {
        match self {
            Kernels::Scalar => scalar::q4_1(w, acts, out),
            // SAFETY: these variants exist only when the CPU reported the features.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { x86::q4_1_avx2(w, acts, out) },
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512Vnni => unsafe { x86::q4_1_vnni(w, acts, out) },
        }
    }

    /// Dots of one Q8_0 weight row with each activation row in `acts` (≤ TILE).
    pub fn q8_0(self, w: &[BlockQ8_0], acts: &[&[BlockQ8]], out: &mut [f32]) {
        match self {
            Kernels::Scalar => scalar::q8_0(w, acts, out),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { x86::q8_0_avx2(w, acts, out) },
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512Vnni => unsafe { x86::q8_0_vnni(w, acts, out) },
        }
    }
}

/// The reference: plain integer sums, the same float combination per block.
pub mod scalar {
    use super::{BlockQ4_1, BlockQ8, BlockQ8_0};

    pub fn q4_1(w: &[BlockQ4_1], acts: &[&[BlockQ8]], out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(acts) {
            let mut sum = 0f32;
            let mut offsets = 0f32;
            for (wb, ab) in w.iter().zip(a.iter()) {
                let mut dot = 0i32;
                for j in 0..16 {
                    dot += (wb.qs[j] & 0xF) as i32 * ab.qs[j] as i32;
                    dot += (wb.qs[j] >> 4) as i32 * ab.qs[j + 16] as i32;
                }
                sum += wb.d * ab.d * dot as f32;
                offsets += wb.m * ab.s;
            }
            *o = sum + offsets;
        }
    }

    pub fn q8_0(w: &[BlockQ8_0], acts: &[&[BlockQ8]], out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(acts) {
            let mut sum = 0f32;
            for (wb, ab) in w.iter().zip(a.iter()) {
                let dot: i32 = wb
                    .qs
                    .iter()
                    .zip(&ab.qs)
                    .map(|(&x, &y)| x as i32 * y as i32)
                    .sum();
                sum += wb.d * ab.d * dot as f32;
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BlockQ4_1, BlockQ8, BlockQ8_0, TILE};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// 32 unsigned 4-bit values of a Q4_1 block, in element order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn unpack(qs: &[u8; 16]) -> __m256i {
        // SAFETY: reads exactly the 16 bytes of `qs`.
        let q = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load32(qs: &[i8; 32]) -> __m256i {
        // SAFETY: reads exactly the 32 bytes of `qs`.
        unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
    }

    /// Σ u8·i8 in groups of four into 8 i32 lanes, AVX2: maddubs then madd.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    /// The same in one instruction with VNNI.
    #[inline]
    #[target_feature(enable = "avx512vnni,avx512vl,avx2,fma")]
    fn dot_vnni(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }

    // One body per instruction set, so each loop is compiled with its features enabled
    // and the block dot product inlines into it.
    macro_rules! kernels {
        ($q4:ident, $q8:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            pub fn $q4(w: &[BlockQ4_1], acts: &[&[BlockQ8]], out: &mut [f32]) {
                let n = acts.len().min(TILE);
                let mut acc = [_mm256_setzero_ps(); TILE];
                let mut offsets = [0f32; TILE];
                for (b, wb) in w.iter().enumerate() {
                    let wv = unpack(&wb.qs);
                    for t in 0..n {
                        let ab = &acts[t][b];
                        let p = _mm256_cvtepi32_ps($dot(wv, load32(&ab.qs)));
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), p, acc[t]);
                        offsets[t] += wb.m * ab.s;
                    }
                }
                for t in 0..n {
                    out[t] = hsum(acc[t]) + offsets[t];
                }
            }

            #[target_feature(enable = $features)]
            pub fn $q8(w: &[BlockQ8_0], acts: &[&[BlockQ8]], out: &mut [f32]) {
                let n = acts.len().min(TILE);
                let mut acc = [_mm256_setzero_ps(); TILE];
                for (b, wb) in w.iter().enumerate() {
                    let wv = load32(&wb.qs);
                    // u8·i8 products need an unsigned side: |w|, with w's sign moved onto a.
                    let wabs = _mm256_sign_epi8(wv, wv);
                    for t in 0..n {
                        let ab = &acts[t][b];
                        let signed = _mm256_sign_epi8(load32(&ab.qs), wv);
                        let p = _mm256_cvtepi32_ps($dot(wabs, signed));
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), p, acc[t]);
                    }
                }
                for t in 0..n {
                    out[t] = hsum(acc[t]);
                }
            }
        };
    }

    kernels!(q4_1_avx2, q8_0_avx2, "avx2,fma", dot_avx2);
    kernels!(
        q4_1_vnni,
        q8_0_vnni,
        "avx512vnni,avx512vl,avx2,fma",
        dot_vnni
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn random_q4_1(r: &mut impl Rng, n: usize) -> Vec<BlockQ4_1> {
        (0..n)
            .map(|_| BlockQ4_1 {
                d: f16::from_f32(r.random_range(0.001..0.05)).to_f32(),
                m: f16::from_f32(r.random_range(-0.2..0.0)).to_f32(),
                qs: std::array::from_fn(|_| r.random()),
            })
            .collect()
    }

    fn random_q8_0(r: &mut impl Rng, n: usize) -> Vec<BlockQ8_0> {
        (0..n)
            .map(|_| BlockQ8_0 {
                d: f16::from_f32(r.random_range(0.001..0.05)).to_f32(),
                // -128 included: the sign trick must survive it.
                qs: std::array::from_fn(|_| r.random()),
            })
            .collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn kernels_match_the_scalar_reference_on_random_blocks() {
        let mut r = rng();
        for blocks in [1usize, 3, 7, 18, 48] {
            let w4 = random_q4_1(&mut r, blocks);
            let w8 = random_q8_0(&mut r, blocks);
            for rows in 1..=TILE {
                let x: Vec<f32> = (0..rows * blocks * QK)
                    .map(|_| r.random_range(-3.0..3.0))
                    .collect();
                let acts = quantize_rows(&x, blocks * QK);
                let tile: Vec<&[BlockQ8]> = acts.chunks(blocks).collect();
                let (mut want4, mut want8) = (vec![0f32; rows], vec![0f32; rows]);
                scalar::q4_1(&w4, &tile, &mut want4);
                scalar::q8_0(&w8, &tile, &mut want8);
                for k in Kernels::available() {
                    let (mut got4, mut got8) = (vec![0f32; rows], vec![0f32; rows]);
                    k.q4_1(&w4, &tile, &mut got4);
                    k.q8_0(&w8, &tile, &mut got8);
                    for i in 0..rows {
                        assert!(
                            close(got4[i], want4[i]),
                            "{k:?} q4_1 {blocks} blocks: {got4:?} vs {want4:?}"
                        );
                        assert!(
                            close(got8[i], want8[i]),
                            "{k:?} q8_0 {blocks} blocks: {got8:?} vs {want8:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quantized_activations_follow_llama_cpp() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let q = quantize_rows(&x, 64);
        for (blk, v) in q.iter().zip(x.chunks(32)) {
            let amax = v.iter().fold(0f32, |m, a| m.max(a.abs()));
            assert_eq!(blk.d, f16::from_f32(amax / 127.0).to_f32());
            assert_eq!(blk.qs.iter().map(|&q| q.unsigned_abs()).max(), Some(127));
            let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
            assert_eq!(blk.s, f16::from_f32(sum as f32 * (amax / 127.0)).to_f32());
        }
        let zeros = quantize_rows(&[0.0; 32], 32);
        assert_eq!((zeros[0].d, zeros[0].s, zeros[0].qs), (0.0, 0.0, [0; 32]));
    }

    #[test]
    fn matmul_matches_candle_on_the_same_weights() {
        // Odd shapes: 37 output features, 9 rows (two full tiles and one); candle's own
        // Q4_1 path needs an even number of blocks per row, so 6.
        let mut r = rng();
        let (out_f, cols, n) = (37usize, 6 * QK, 9usize);
        let dense: Vec<f32> = (0..out_f * cols)
            .map(|_| r.random_range(-0.5..0.5))
            .collect();
        let x: Vec<f32> = (0..n * cols).map(|_| r.random_range(-2.0..2.0)).collect();
        let device = Device::Cpu;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let t = Tensor::from_vec(dense.clone(), (out_f, cols), &device).expect("tensor");
            let q = QTensor::quantize(&t, dtype).expect("quantize");
            let candle = QMatMul::from_qtensor(QTensor::quantize(&t, dtype).expect("quantize"))
                .expect("candle matmul");
            let ours = QWeight::from_qtensor(q, &device).expect("repack");
            assert!(
                !matches!(ours.data, Data::Candle(..)),
                "{dtype:?} is repacked"
            );
            let got = ours.forward(&x, n).expect("ours");
            let want = candle
                .forward(&Tensor::from_slice(&x, (n, cols), &device).expect("x"))
                .expect("candle")
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec");
            assert_eq!(got.len(), want.len());
            // Q8_0 differs from candle only in summation order. For Q4_1 candle stores the
            // activation block sum as f16(Σq)·f16(d) where llama.cpp (and this code) store
            // f16(Σq·d), so the offset term may differ by an f16 rounding.
            // That rounding is up to ~5e-4 of |s| per block, times |m|: a few hundredths here.
            let (abs, rel) = if dtype == GgmlDType::Q8_0 {
                (1e-4, 1e-4)
            } else {
                (0.05, 1e-2)
            };
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= abs + rel * b.abs(),
                    "{dtype:?} element {i}: {a} vs candle {b}"
                );
            }
            // Rows dequantize exactly as candle dequantizes the tensor.
            let candle_rows = QTensor::quantize(&t, dtype)
                .expect("quantize")
                .dequantize(&device)
                .expect("dequantize")
                .to_vec2::<f32>()
                .expect("rows");
            let mut row = Vec::new();
            ours.dequantize_row(3, &mut row).expect("repacked");
            assert_eq!(row, candle_rows[3], "{dtype:?} row 3");
        }
    }

    #[test]
    fn parallel_split_covers_every_output() {
        // Big enough to split into pieces; compare against the one-piece path row by row.
        let mut r = rng();
        let (out_f, blocks, n) = (301usize, 18usize, 5usize);
        let w = QWeight::q4_1(out_f, blocks * QK, random_q4_1(&mut r, out_f * blocks));
        let x: Vec<f32> = (0..n * blocks * QK)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let got = w.forward(&x, n).expect("forward");
        let acts = quantize_rows(&x, blocks * QK);
        let Data::Q4_1(blocks_w) = &w.data else {
            unreachable!()
        };
        for row in 0..n {
            for j in 0..out_f {
                let mut want = [0f32];
                scalar::q4_1(
                    &blocks_w[j * blocks..(j + 1) * blocks],
                    &[&acts[row * blocks..(row + 1) * blocks]],
                    &mut want,
                );
                assert!(close(got[row * out_f + j], want[0]), "row {row} col {j}");
            }
        }
    }
}
