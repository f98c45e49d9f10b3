//! llmesh's own quantized matrix products for the formats the default models ship in
//! (Q4_1 and Q8_0 weights), replacing candle's scalar CPU path for them.
//!
//! The arithmetic is llama.cpp's: each activation row is quantized to 8 bits in blocks of
//! 32 (scale `d = max|x| / 127`, and for Q4_1 also `s = d · Σq`), each block's integer dot
//! product is exact, and the float combination per block is
//! `d_w·d_a·Σ(w·a)` (+ `m_w·s_a` for Q4_1). So greedy tokens stay those of llama.cpp.
//!
//! What is different is the shape of the work. At load, the weights of [`PANEL`] (8)
//! consecutive output features are interleaved block by block: one 256-bit register holds
//! the same four elements of all eight rows, so one integer multiply-add against four
//! activation bytes broadcast to every lane advances eight dot products at once, and one
//! float multiply-add per block applies the eight rows' scales together. A panel block is
//! unpacked once and multiplied against up to [`TILE`] (8) activation rows while it sits in
//! registers (prefill and batched decode reuse it; single-token decode still issues a
//! third of the instructions a row-at-a-time kernel needs); with AVX-512, tiles of two rows
//! or more take two Q4_1 panels per call in 512-bit registers. Output panels are split
//! across the compute pool (rayon, sized to the cores), walked in L1-sized runs. The multiply-add is AVX512-VNNI
//! `vpdpbusd` where the CPU has it, AVX2 `vpmaddubsw` elsewhere on x86, chosen at run time,
//! with a portable scalar path on other CPUs.

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
/// Output features interleaved into one panel.
pub const PANEL: usize = 8;
/// Most activation rows multiplied against one unpacked panel block (VNNI, whose 32
/// registers hold a panel block and eight rows' sums; the others take [`Kernels::tile`]).
pub const TILE: usize = 8;

/// One 32-element block of eight Q4_1 weight rows (`x ≈ d·q + m`, q in 0..16). Byte
/// `32·i + 4·r + e` holds element `4i + e` of row r in its low nibble and element
/// `16 + 4i + e` in its high nibble (i < 4, e < 4): GGUF's own byte pairs, regrouped.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct PanelQ4_1 {
    pub d: [f32; PANEL],
    pub m: [f32; PANEL],
    pub qs: [u8; 128],
}

/// One 32-element block of eight Q8_0 weight rows (`x ≈ d·q`). Byte `32·g + 4·r + e` is
/// element `4g + e` of row r; `wsum` is 128·Σq of each row (the correction for running
/// the product with activations shifted to unsigned bytes).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct PanelQ8_0 {
    pub d: [f32; PANEL],
    pub wsum: [i32; PANEL],
    pub qs: [i8; 256],
}

impl PanelQ4_1 {
    const ZERO: PanelQ4_1 = PanelQ4_1 {
        d: [0.0; PANEL],
        m: [0.0; PANEL],
        qs: [0; 128],
    };

    /// The 4-bit value of element `x` of row `r`.
    pub fn q(&self, r: usize, x: usize) -> u8 {
        let byte = self.qs[(x % 16 / 4) * 32 + r * 4 + x % 4];
        if x < 16 { byte & 0x0F } else { byte >> 4 }
    }
}

impl PanelQ8_0 {
    const ZERO: PanelQ8_0 = PanelQ8_0 {
        d: [0.0; PANEL],
        wsum: [0; PANEL],
        qs: [0; 256],
    };

    /// The value of element `x` of row `r`.
    pub fn q(&self, r: usize, x: usize) -> i8 {
        self.qs[(x / 4) * 32 + r * 4 + x % 4]
    }
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
    /// Panels of 8 rows; `rows` rounded up to a multiple of 8 with zero rows.
    Q4_1(Vec<PanelQ4_1>),
    Q8_0(Vec<PanelQ8_0>),
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
    /// Takes a GGUF tensor of shape (out, in); the formats `from_raw` knows are repacked
    /// for the kernels here, others stay with candle.
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

    /// Repacks GGUF bytes of a tensor of shape (rows, cols) read straight from the file:
    /// Q4_1 and Q4_K into 4-bit panels, Q8_0, Q5_0 and Q6_K into 8-bit panels (all but
    /// Q6_K exactly); None for other formats.
    pub fn from_raw(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        raw: &[u8],
    ) -> Result<Option<QWeight>> {
        let Some((bytes, elements, four_bit)) = format(dtype) else {
            return Ok(None);
        };
        if !cols.is_multiple_of(elements) {
            return Ok(None);
        }
        if raw.len() != rows * cols / elements * bytes {
            return Err(EngineError::Load(
                "weight data does not match its shape".into(),
            ));
        }
        let data = if four_bit {
            Data::Q4_1(pack(dtype, raw, (rows, cols), PanelQ4_1::ZERO, place_q4))
        } else {
            Data::Q8_0(pack(dtype, raw, (rows, cols), PanelQ8_0::ZERO, place_q8))
        };
        Ok(Some(QWeight { rows, cols, data }))
    }

    /// Stacks weights over the same inputs into one matrix (their rows one after the
    /// other), so that one product with one pass over the activations and one split over
    /// the pool replaces several; None unless all are repacked in the same format with
    /// whole panels (then each part's outputs are a contiguous run of the result's row).
    pub fn stack(parts: &[&QWeight]) -> Option<QWeight> {
        let first = parts.first()?;
        let cols = first.cols;
        if parts
            .iter()
            .any(|p| p.cols != cols || !p.rows.is_multiple_of(PANEL))
        {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        // Every part's panels of one format, back to back; None if a format differs.
        fn joined<P: Copy>(parts: &[&QWeight], pick: fn(&Data) -> Option<&[P]>) -> Option<Vec<P>> {
            let slices: Option<Vec<&[P]>> = parts.iter().map(|p| pick(&p.data)).collect();
            Some(slices?.concat())
        }
        let data = match &first.data {
            Data::Q4_1(_) => Data::Q4_1(joined(parts, |d| match d {
                Data::Q4_1(v) => Some(v),
                _ => None,
            })?),
            Data::Q8_0(_) => Data::Q8_0(joined(parts, |d| match d {
                Data::Q8_0(v) => Some(v),
                _ => None,
            })?),
            Data::Candle(..) => return None,
        };
        Some(QWeight { rows, cols, data })
    }

    /// Bytes the weight takes in memory.
    pub fn memory_bytes(&self) -> usize {
        match &self.data {
            Data::Q4_1(p) => std::mem::size_of_val(p.as_slice()),
            Data::Q8_0(p) => std::mem::size_of_val(p.as_slice()),
            Data::Candle(..) => self.rows * self.cols,
        }
    }

    /// Row `row` of the matrix as floats (an embedding lookup), when it is repacked here.
    pub fn dequantize_row(&self, row: usize, out: &mut Vec<f32>) -> Option<()> {
        let per_row = self.cols / QK;
        let (panel, r) = (row / PANEL, row % PANEL);
        let range = panel * per_row..(panel + 1) * per_row;
        match &self.data {
            Data::Q8_0(p) => {
                for blk in &p[range] {
                    out.extend((0..QK).map(|x| blk.d[r] * blk.q(r, x) as f32));
                }
            }
            Data::Q4_1(p) => {
                for blk in &p[range] {
                    out.extend((0..QK).map(|x| blk.d[r] * blk.q(r, x) as f32 + blk.m[r]));
                }
            }
            Data::Candle(..) => return None,
        }
        Some(())
    }

    /// `x` (n × cols, row-major) times the transposed weight: n × rows.
    pub fn forward(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut parts = self.forward_parts(x, n, &[self.rows])?;
        Ok(parts.pop().unwrap_or_default())
    }

    /// The product split by output rows into parts of the given sizes (a [`stack`]ed
    /// weight's projections), each n × its size, written there directly.
    ///
    /// [`stack`]: QWeight::stack
    pub fn forward_parts(&self, x: &[f32], n: usize, sizes: &[usize]) -> Result<Vec<Vec<f32>>> {
        debug_assert_eq!(x.len(), n * self.cols);
        if sizes.iter().sum::<usize>() != self.rows
            || sizes[..sizes.len().saturating_sub(1)]
                .iter()
                .any(|s| !s.is_multiple_of(PANEL))
        {
            return Err(EngineError::Compute(
                "output parts must cover the rows in whole panels".into(),
            ));
        }
        let k = kernels();
        match &self.data {
            Data::Candle(m, device) => {
                let t = Tensor::from_slice(x, (n, self.cols), device)?;
                let y = m.forward(&t)?.flatten_all()?.to_vec1::<f32>()?;
                let mut at = 0;
                Ok(sizes
                    .iter()
                    .map(|&size| {
                        let part = y
                            .chunks(self.rows)
                            .flat_map(|row| &row[at..at + size])
                            .copied()
                            .collect();
                        at += size;
                        part
                    })
                    .collect())
            }
            Data::Q4_1(w) => {
                let acts = quantize_rows(x, self.cols);
                Ok(
                    self.run(w, &acts, n, sizes, (k.tile(), k.pairs()), |p, two, a, o| {
                        if two == 2 {
                            k.q4_1_pair(p, a, o)
                        } else {
                            k.q4_1(p, a, o)
                        }
                    }),
                )
            }
            Data::Q8_0(w) => {
                let acts = k.q8_0_activations(quantize_rows(x, self.cols));
                Ok(
                    self.run(w, &acts, n, sizes, (k.tile(), k.pairs()), |p, two, a, o| {
                        if two == 2 {
                            k.q8_0_pair(p, a, o)
                        } else {
                            k.q8_0(p, a, o)
                        }
                    }),
                )
            }
        }
    }

    /// Splits the output panels across the pool; `dot` gets one panel's blocks and up to
    /// `tile` activation rows. Outputs go to parts of `sizes` rows (whole panels but the
    /// last).
    fn run<P, F>(
        &self,
        panels: &[P],
        acts: &[BlockQ8],
        n: usize,
        sizes: &[usize],
        (tile, pair): (usize, bool),
        dot: F,
    ) -> Vec<Vec<f32>>
    where
        P: Sync,
        F: Fn(&[P], usize, &[&[BlockQ8]], &mut [[f32; PANEL]]) + Sync,
    {
        let per_row = self.cols / QK;
        let rows = self.rows;
        let n_panels = rows.div_ceil(PANEL);
        let mut outs: Vec<Vec<f32>> = sizes.iter().map(|&size| vec![0f32; n * size]).collect();
        // (first panel, rows, data) of each part.
        let mut first = 0;
        let targets: Vec<(usize, usize, SharedOut)> = outs
            .iter_mut()
            .zip(sizes)
            .map(|(o, &size)| {
                let t = (first, size, SharedOut(o.as_mut_ptr()));
                first += size / PANEL;
                t
            })
            .collect();
        // Enough pieces to balance the pool; each big enough to be worth a task.
        let threads = rayon::current_num_threads().max(1);
        let work = rows * n * per_row;
        // (A panel block takes a few nanoseconds; a task hand-off a few microseconds.)
        let pieces = if work < 8 * 1024 {
            1
        } else if work < 256 * 1024 {
            threads
        } else {
            threads * 4
        }
        .min(n_panels)
        .max(1);
        let chunk = n_panels.div_ceil(pieces);
        // Pieces of whole pairs where panels go in pairs.
        let chunk = if pair { chunk + chunk % 2 } else { chunk };
        let task = |piece: usize| {
            let targets = &targets;
            let lo = piece * chunk;
            let hi = (lo + chunk).min(n_panels);
            let mut tile_out = [[0f32; PANEL]; 2 * TILE];
            let mut rows_in: [&[BlockQ8]; TILE] = [&[]; TILE];
            // Panels in runs that stay in L1 (≈32 KB) while every activation tile passes
            // over them: each weight byte comes from memory once per product.
            let run = (32 * 1024 / (per_row * std::mem::size_of::<P>()).max(1)).max(1);
            // An even run when panels go in pairs, or its last panel goes alone.
            let run = if pair { (run & !1).max(2) } else { run };
            for run_lo in (lo..hi).step_by(run) {
                let run_hi = (run_lo + run).min(hi);
                for t0 in (0..n).step_by(tile) {
                    let t = tile.min(n - t0);
                    for (i, slot) in rows_in[..t].iter_mut().enumerate() {
                        *slot = &acts[(t0 + i) * per_row..(t0 + i + 1) * per_row];
                    }
                    let mut j = run_lo;
                    while j < run_hi {
                        // Two panels per call where the kernels take them and the tile has
                        // rows to share them (out[t·2 + i] is panel j + i for row t), else
                        // one (out[t]); single-row decode measured slower with pairs.
                        let k = if pair && t > 1 && j + 1 < run_hi {
                            2
                        } else {
                            1
                        };
                        dot(
                            &panels[j * per_row..(j + k) * per_row],
                            k,
                            &rows_in[..t],
                            &mut tile_out[..t * k],
                        );
                        for i in 0..k {
                            let panel = j + i;
                            let (at_panel, part_rows, out_ptr) = targets
                                .iter()
                                .rev()
                                .find(|t| t.0 <= panel)
                                .expect("the first part starts at panel 0");
                            let col = (panel - at_panel) * PANEL;
                            let width = PANEL.min(part_rows - col);
                            for r in 0..t {
                                let values = &tile_out[r * k + i];
                                let at = (t0 + r) * part_rows + col;
                                // SAFETY: each task writes only the columns of its own
                                // panels lo..hi of each output row, and the ranges of
                                // different tasks do not overlap; `width` keeps the last
                                // panel inside the part's row.
                                unsafe {
                                    if width == PANEL {
                                        // (A fixed size: a register move, not a call.)
                                        out_ptr
                                            .0
                                            .add(at)
                                            .cast::<[f32; PANEL]>()
                                            .write_unaligned(*values);
                                    } else {
                                        std::ptr::copy_nonoverlapping(
                                            values.as_ptr(),
                                            out_ptr.0.add(at),
                                            width,
                                        )
                                    }
                                };
                            }
                        }
                        j += k;
                    }
                }
            }
        };
        if pieces == 1 {
            task(0);
        } else {
            (0..pieces).into_par_iter().for_each(task);
        }
        drop(targets);
        outs
    }
}

struct SharedOut(*mut f32);
// SAFETY: used only for the disjoint writes described in `run`.
unsafe impl Sync for SharedOut {}

fn f16_at(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// One 32-element block decoded from a GGUF format: element x is `d·q[x] + m`, with q in
/// 0..16 for the 4-bit formats and a signed byte (m = 0) for the 8-bit ones.
struct Sub {
    d: f32,
    m: f32,
    q: [i8; QK],
}

/// Whether `from_raw` repacks this format for the kernels here.
pub fn repackable(dtype: GgmlDType) -> bool {
    format(dtype).is_some()
}

/// How a GGUF format lands in the panels: bytes per GGUF block, elements per GGUF block,
/// and which panel type holds it.
fn format(dtype: GgmlDType) -> Option<(usize, usize, bool)> {
    // (bytes, elements, 4-bit)
    Some(match dtype {
        GgmlDType::Q4_1 => (20, 32, true),
        GgmlDType::Q4K => (144, 256, true),
        GgmlDType::Q8_0 => (34, 32, false),
        GgmlDType::Q5_0 => (22, 32, false),
        GgmlDType::Q6K => (210, 256, false),
        _ => return None,
    })
}

/// The 32-element blocks of one GGUF block, in element order.
fn decode(dtype: GgmlDType, b: &[u8], out: &mut Vec<Sub>) {
    match dtype {
        GgmlDType::Q4_1 => {
            let mut q = [0i8; QK];
            for j in 0..16 {
                q[j] = (b[4 + j] & 0x0F) as i8;
                q[j + 16] = (b[4 + j] >> 4) as i8;
            }
            out.push(Sub {
                d: f16_at(&b[0..2]),
                m: f16_at(&b[2..4]),
                q,
            });
        }
        GgmlDType::Q8_0 => out.push(Sub {
            d: f16_at(&b[0..2]),
            m: 0.0,
            q: std::array::from_fn(|j| b[2 + j] as i8),
        }),
        GgmlDType::Q5_0 => {
            // Low nibbles as Q4_0, the fifth bit of element j in bit j of `qh`; q - 16.
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            let mut q = [0i8; QK];
            for j in 0..16 {
                let hi0 = ((qh >> j) & 1) << 4;
                let hi1 = ((qh >> (j + 16)) & 1) << 4;
                q[j] = ((qs[j] & 0x0F) as u32 | hi0) as i8 - 16;
                q[j + 16] = ((qs[j] >> 4) as u32 | hi1) as i8 - 16;
            }
            out.push(Sub {
                d: f16_at(&b[0..2]),
                m: 0.0,
                q,
            });
        }
        GgmlDType::Q4K => {
            // Eight blocks of 32 with 6-bit scales and mins: x = d·sc·q − dmin·m, which is
            // Q4_1's form with d = d·sc and m = −dmin·m, exactly (an f16 times an integer
            // below 64 is exact in f32).
            let (d, dmin) = (f16_at(&b[0..2]), f16_at(&b[2..4]));
            let scales = &b[4..16];
            let qs = &b[16..144];
            let scale_min = |j: usize| -> (u8, u8) {
                if j < 4 {
                    (scales[j] & 63, scales[j + 4] & 63)
                } else {
                    (
                        (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
                        (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
                    )
                }
            };
            for chunk in 0..4 {
                let bytes = &qs[32 * chunk..32 * chunk + 32];
                for (half, shift) in [(0, 0), (1, 4)] {
                    let (sc, m) = scale_min(2 * chunk + half);
                    out.push(Sub {
                        d: d * sc as f32,
                        m: -(dmin * m as f32),
                        q: std::array::from_fn(|l| ((bytes[l] >> shift) & 0x0F) as i8),
                    });
                }
            }
        }
        GgmlDType::Q6K => {
            // 16-element groups with their own 8-bit scales do not fit one scale per 32,
            // so these are widened to floats and quantized again to 8 bits per 32: within
            // 1/254 of each block's largest value, well inside Q6_K's own step.
            let (ql, qh) = (&b[0..128], &b[128..192]);
            let sc = &b[192..208];
            let d = f16_at(&b[208..210]);
            let mut x = [0f32; 256];
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let y = &mut x[128 * n..];
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
            for v in x.chunks_exact(QK) {
                let amax = v.iter().fold(0f32, |m, &a| m.max(a.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.push(Sub {
                    d,
                    m: 0.0,
                    q: std::array::from_fn(|j| (v[j] * id).round() as i8),
                });
            }
        }
        _ => unreachable!("format() admits only the formats above"),
    }
}

/// Decodes a row-major (rows, cols) GGUF matrix block by block and hands each 32-element
/// block to `place(row, block, sub)`.
fn for_each_block(
    dtype: GgmlDType,
    raw: &[u8],
    cols: usize,
    mut place: impl FnMut(usize, usize, &Sub),
) {
    let Some((bytes, elements, _)) = format(dtype) else {
        return;
    };
    let per_row = cols / QK;
    let mut subs = Vec::with_capacity(elements / QK);
    let mut at = 0;
    for b in raw.chunks_exact(bytes) {
        subs.clear();
        decode(dtype, b, &mut subs);
        for sub in &subs {
            place(at / per_row, at % per_row, sub);
            at += 1;
        }
    }
}

/// Places every 32-element block of a row-major (rows, cols) GGUF matrix into panels of
/// type P (zeroed, rows rounded up to whole panels) with `place(panel, row in panel, sub)`.
fn pack<P: Copy>(
    dtype: GgmlDType,
    raw: &[u8],
    (rows, cols): (usize, usize),
    zero: P,
    place: impl Fn(&mut P, usize, &Sub),
) -> Vec<P> {
    let per_row = cols / QK;
    let mut panels = vec![zero; rows.div_ceil(PANEL) * per_row];
    for_each_block(dtype, raw, cols, |row, block, sub| {
        place(&mut panels[row / PANEL * per_row + block], row % PANEL, sub)
    });
    panels
}

fn place_q4(p: &mut PanelQ4_1, r: usize, sub: &Sub) {
    p.d[r] = sub.d;
    p.m[r] = sub.m;
    for g in 0..4 {
        for e in 0..4 {
            let (lo, hi) = (sub.q[4 * g + e] as u8, sub.q[16 + 4 * g + e] as u8);
            p.qs[32 * g + 4 * r + e] = lo | (hi << 4);
        }
    }
}

fn place_q8(p: &mut PanelQ8_0, r: usize, sub: &Sub) {
    p.d[r] = sub.d;
    p.wsum[r] = 128 * sub.q.iter().map(|&v| v as i32).sum::<i32>();
    for g in 0..8 {
        for e in 0..4 {
            p.qs[32 * g + 4 * r + e] = sub.q[4 * g + e];
        }
    }
}

/// Quantizes rows of `cols` floats to 8-bit blocks, as llama.cpp's `quantize_row_q8_1`
/// on x86 (rounding half to even, as its SIMD path does): the scale and the block sum are
/// stored at f16 precision. Large inputs (prompt chunks) are split across the pool.
pub fn quantize_rows(x: &[f32], cols: usize) -> Vec<BlockQ8> {
    debug_assert!(cols.is_multiple_of(QK));
    let mut out = vec![
        BlockQ8 {
            d: 0.0,
            s: 0.0,
            qs: [0; QK],
        };
        x.len() / QK
    ];
    if x.len() >= 1 << 16 {
        out.par_chunks_mut(cols / QK)
            .zip(x.par_chunks(cols))
            .for_each(|(o, row)| quantize_into(row, o));
    } else {
        quantize_into(x, &mut out);
    }
    out
}

fn quantize_into(x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if kernels() != Kernels::Scalar {
        // SAFETY: AVX2 is there (any set above Scalar has it).
        return unsafe { x86::quantize(x, out) };
    }
    quantize_scalar(x, out);
}

fn quantize_scalar(x: &[f32], out: &mut [BlockQ8]) {
    for (blk, v) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = v.iter().fold(0f32, |m, &a| m.max(a.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &a) in blk.qs.iter_mut().zip(v) {
            // Half to even by the float adder itself: adding 1.5·2^23 leaves no fraction
            // bits (|a·id| ≤ 127), without a call to rintf.
            const MAGIC: f32 = 12_582_912.0;
            *q = ((a * id + MAGIC) - MAGIC) as i8;
            sum += *q as i32;
        }
        blk.d = f16::from_f32(d).to_f32();
        blk.s = f16::from_f32(sum as f32 * d).to_f32();
    }
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

/// Calls `$f::<N>` with N the number of activation rows (1..=TILE), so that each tile size
/// gets its own fully unrolled body.
macro_rules! by_rows {
    ($m:ident :: $f:ident, $w:expr, $acts:expr, $out:expr) => {
        match $acts.len() {
            0 => {}
            1 => $m::$f::<1>($w, $acts, $out),
            2 => $m::$f::<2>($w, $acts, $out),
            3 => $m::$f::<3>($w, $acts, $out),
            4 => $m::$f::<4>($w, $acts, $out),
            5 => $m::$f::<5>($w, $acts, $out),
            6 => $m::$f::<6>($w, $acts, $out),
            7 => $m::$f::<7>($w, $acts, $out),
            _ => $m::$f::<8>($w, $acts, $out),
        }
    };
}

impl Kernels {
    /// Activation rows per call that this set keeps in registers.
    pub fn tile(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512Vnni => TILE,
            _ => 4,
        }
    }

    /// Whether two Q4_1 panels go through one call (in 512-bit registers).
    pub fn pairs(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernels::Avx512Vnni {
            static ZMM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            return *ZMM.get_or_init(|| {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && std::env::var("LLMESH_ZMM").map_or(true, |v| v != "0")
            });
        }
        false
    }

    /// Two consecutive Q4_1 panels (`w` holds the first panel's blocks, then the
    /// second's): `out[2t + i]` is panel i times activation row t. Same bits as two
    /// calls of `q4_1`.
    pub fn q4_1_pair(self, w: &[PanelQ4_1], acts: &[&[BlockQ8]], out: &mut [[f32; PANEL]]) {
        check_pair(w, acts, out);
        #[cfg(target_arch = "x86_64")]
        if self.pairs() {
            // SAFETY: pairs() checked the features; check_pair the slices.
            unsafe { by_rows!(x86::q4_1_zmm, w, acts, out) };
            return;
        }
        pair_by_singles(w, acts, out, |p, a, o| self.q4_1(p, a, o));
    }

    /// Two consecutive Q8_0 panels, as [`Kernels::q4_1_pair`], with activations
    /// prepared by [`Kernels::q8_0_activations`].
    pub fn q8_0_pair(self, w: &[PanelQ8_0], acts: &[&[BlockQ8]], out: &mut [[f32; PANEL]]) {
        check_pair(w, acts, out);
        #[cfg(target_arch = "x86_64")]
        if self.pairs() {
            // SAFETY: as above.
            unsafe { by_rows!(x86::q8_0_zmm, w, acts, out) };
            return;
        }
        pair_by_singles(w, acts, out, |p, a, o| self.q8_0(p, a, o));
    }

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

    /// Dots of one Q4_1 panel row range with each activation row in `acts` (≤ TILE rows):
    /// `out[t][r]` is row r of the panel times activation row t.
    pub fn q4_1(self, w: &[PanelQ4_1], acts: &[&[BlockQ8]], out: &mut [[f32; PANEL]]) {
        assert!(acts.len() <= TILE && out.len() >= acts.len());
        assert!(acts.iter().all(|a| a.len() >= w.len()));
        match self {
            Kernels::Scalar => scalar::q4_1(w, acts, out),
            // SAFETY: these variants exist only when the CPU reported the features, and
            // the slices were checked above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { by_rows!(x86::q4_1_avx2, w, acts, out) },
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512Vnni => unsafe { by_rows!(x86::q4_1_vnni, w, acts, out) },
        }
    }

    /// The activation blocks as this set's Q8_0 kernel takes them: VNNI multiplies
    /// unsigned by signed bytes, so there each byte is shifted by 128 (the panels' `wsum`
    /// takes the shift back out).
    pub fn q8_0_activations(self, mut acts: Vec<BlockQ8>) -> Vec<BlockQ8> {
        #[cfg(target_arch = "x86_64")]
        if self == Kernels::Avx512Vnni {
            for q in acts.iter_mut().flat_map(|b| b.qs.iter_mut()) {
                *q = (*q as u8 ^ 0x80) as i8;
            }
        }
        acts
    }

    /// Dots of one Q8_0 panel row range with activation rows prepared by
    /// [`Kernels::q8_0_activations`].
    pub fn q8_0(self, w: &[PanelQ8_0], acts: &[&[BlockQ8]], out: &mut [[f32; PANEL]]) {
        assert!(acts.len() <= TILE && out.len() >= acts.len());
        assert!(acts.iter().all(|a| a.len() >= w.len()));
        match self {
            Kernels::Scalar => scalar::q8_0(w, acts, out),
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2 => unsafe { by_rows!(x86::q8_0_avx2, w, acts, out) },
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512Vnni => unsafe { by_rows!(x86::q8_0_vnni, w, acts, out) },
        }
    }
}

/// What a panel-pair call needs: at most TILE rows, two outputs per row, and every row
/// as long as one panel.
fn check_pair<P>(w: &[P], acts: &[&[BlockQ8]], out: &[[f32; PANEL]]) {
    assert!(acts.len() <= TILE && out.len() >= 2 * acts.len());
    assert!(acts.iter().all(|a| a.len() >= w.len() / 2));
}

/// A panel pair through the single-panel kernel `one`, for sets without pair kernels.
fn pair_by_singles<P>(
    w: &[P],
    acts: &[&[BlockQ8]],
    out: &mut [[f32; PANEL]],
    one: impl Fn(&[P], &[&[BlockQ8]], &mut [[f32; PANEL]]),
) {
    let (w0, w1) = w.split_at(w.len() / 2);
    let mut single = vec![[0f32; PANEL]; acts.len()];
    for (i, wi) in [w0, w1].into_iter().enumerate() {
        one(wi, acts, &mut single);
        for (t, v) in single.iter().enumerate() {
            out[2 * t + i] = *v;
        }
    }
}

/// The reference: plain integer sums, the same float combination per block.
pub mod scalar {
    use super::{BlockQ8, PANEL, PanelQ4_1, PanelQ8_0};

    pub fn q4_1(w: &[PanelQ4_1], acts: &[&[BlockQ8]], out: &mut [[f32; PANEL]]) {
        for (o, a) in out.iter_mut().zip(acts) {
            let mut sum = [0f32; PANEL];
            let mut offsets = [0f32; PANEL];
            for (p, ab) in w.iter().zip(a.iter()) {
                let mut dot = [0i32; PANEL];
                for g in 0..4 {
                    for (r, d) in dot.iter_mut().enumerate() {
                        for e in 0..4 {
                            let byte = p.qs[32 * g + 4 * r + e] as i32;
                            *d += (byte & 0x0F) * ab.qs[4 * g + e] as i32
                                + (byte >> 4) * ab.qs[16 + 4 * g + e] as i32;
                        }
                    }
                }
                for r in 0..PANEL {
                    sum[r] += p.d[r] * ab.d * dot[r] as f32;
                    offsets[r] += p.m[r] * ab.s;
                }
            }
            for r in 0..PANEL {
                o[r] = sum[r] + offsets[r];
            }
        }
    }

    pub fn q8_0(w: &[PanelQ8_0], acts: &[&[BlockQ8]], out: &mut [[f32; PANEL]]) {
        for (o, a) in out.iter_mut().zip(acts) {
            let mut sum = [0f32; PANEL];
            for (p, ab) in w.iter().zip(a.iter()) {
                let mut dot = [0i32; PANEL];
                for g in 0..8 {
                    for (r, d) in dot.iter_mut().enumerate() {
                        for e in 0..4 {
                            *d += p.qs[32 * g + 4 * r + e] as i32 * ab.qs[4 * g + e] as i32;
                        }
                    }
                }
                for r in 0..PANEL {
                    sum[r] += p.d[r] * ab.d * dot[r] as f32;
                }
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BlockQ8, PANEL, PanelQ4_1, PanelQ8_0, QK};
    use half::f16;
    use std::arch::x86_64::*;

    /// `quantize_scalar` eight lanes at a time, to the same bytes: the same maximum, the
    /// same product with 1/d, and the conversion rounds half to even as the scalar path.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize(x: &[f32], out: &mut [BlockQ8]) {
        let sign = _mm256_set1_ps(-0.0);
        // packs interleave the 128-bit lanes; this puts the 32 bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (blk, v) in out.iter_mut().zip(x.chunks_exact(QK)) {
            let p = v.as_ptr();
            // SAFETY: v holds 32 floats.
            let a = unsafe {
                [
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                ]
            };
            let mut m = _mm256_andnot_ps(sign, a[0]);
            for ai in &a[1..] {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *ai));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let q: [__m256i; 4] = [
                _mm256_cvtps_epi32(_mm256_mul_ps(a[0], id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(a[1], id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(a[2], id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(a[3], id)),
            ];
            let total =
                _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let t4 = _mm_add_epi32(
                _mm256_castsi256_si128(total),
                _mm256_extracti128_si256(total, 1),
            );
            let t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0b00_00_11_10));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0b00_00_00_01)));
            let words = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let bytes = _mm256_permutevar8x32_epi32(words, order);
            // SAFETY: qs is 32 bytes.
            unsafe { _mm256_storeu_si256(blk.qs.as_mut_ptr().cast(), bytes) };
            blk.d = f16::from_f32(d).to_f32();
            blk.s = f16::from_f32(sum as f32 * d).to_f32();
        }
    }

    /// 32 bytes at `p` (any alignment).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: the caller passes 32 readable bytes.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }

    /// Activation bytes 4g..4g+4 of a block, in every 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn broadcast(qs: &[i8; 32], g: usize) -> __m256i {
        _mm256_set1_epi32(group(qs, g))
    }

    /// Activation bytes 4g..4g+4 of a block as one 32-bit word.
    #[inline(always)]
    fn group(qs: &[i8; 32], g: usize) -> i32 {
        i32::from_le_bytes([
            qs[4 * g] as u8,
            qs[4 * g + 1] as u8,
            qs[4 * g + 2] as u8,
            qs[4 * g + 3] as u8,
        ])
    }

    /// A Q4_1 panel block as eight registers of unsigned 4-bit values; register g holds
    /// elements 4g..4g+4 of each of the eight rows.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn unpack_q4(p: &PanelQ4_1) -> [__m256i; 8] {
        let mask = _mm256_set1_epi8(0x0F);
        let mut r = [_mm256_setzero_si256(); 8];
        for i in 0..4 {
            // SAFETY: bytes 32i..32i+32 of the 128-byte `qs`.
            let l = unsafe { load(p.qs.as_ptr().add(32 * i)) };
            r[i] = _mm256_and_si256(l, mask);
            r[i + 4] = _mm256_and_si256(_mm256_srli_epi16(l, 4), mask);
        }
        r
    }

    /// A Q8_0 panel block as eight registers, as `unpack_q4`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load_q8(p: &PanelQ8_0) -> [__m256i; 8] {
        let mut r = [_mm256_setzero_si256(); 8];
        for (g, reg) in r.iter_mut().enumerate() {
            // SAFETY: bytes 32g..32g+32 of the 256-byte `qs`.
            *reg = unsafe { load(p.qs.as_ptr().add(32 * g).cast()) };
        }
        r
    }

    /// Σ w·a per row for unsigned weights and signed activations, VNNI.
    /// With `two`, two chains, so that the dependent multiply-adds of a short tile overlap
    /// (a tall tile has enough independent rows, and too few registers for a second).
    #[inline]
    #[target_feature(enable = "avx512vnni,avx512vl,avx2,fma")]
    fn dot_u8_vnni(w: &[__m256i; 8], a: &[i8; 32], two: bool) -> __m256i {
        if !two {
            let mut s = _mm256_setzero_si256();
            for (g, wg) in w.iter().enumerate() {
                s = _mm256_dpbusd_epi32(s, *wg, broadcast(a, g));
            }
            return s;
        }
        let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for g in (0..8).step_by(2) {
            s0 = _mm256_dpbusd_epi32(s0, w[g], broadcast(a, g));
            s1 = _mm256_dpbusd_epi32(s1, w[g + 1], broadcast(a, g + 1));
        }
        _mm256_add_epi32(s0, s1)
    }

    /// The same with AVX2: pairs into 16 bits (at most 8·2·15·127 = 30480 summed, so no
    /// overflow), then into 32 bits once.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot_u8_avx2(w: &[__m256i; 8], a: &[i8; 32], _two: bool) -> __m256i {
        let mut s = _mm256_setzero_si256();
        for (g, wg) in w.iter().enumerate() {
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(*wg, broadcast(a, g)));
        }
        _mm256_madd_epi16(s, _mm256_set1_epi16(1))
    }

    /// Σ w·a per row for signed weights and activations shifted to unsigned bytes; the
    /// shift is taken back out with the panel's `wsum`.
    #[inline]
    #[target_feature(enable = "avx512vnni,avx512vl,avx2,fma")]
    fn dot_i8_vnni(w: &[__m256i; 8], a: &[i8; 32], wsum: __m256i, two: bool) -> __m256i {
        if !two {
            let mut s = _mm256_setzero_si256();
            for (g, wg) in w.iter().enumerate() {
                s = _mm256_dpbusd_epi32(s, broadcast(a, g), *wg);
            }
            return _mm256_sub_epi32(s, wsum);
        }
        let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for g in (0..8).step_by(2) {
            s0 = _mm256_dpbusd_epi32(s0, broadcast(a, g), w[g]);
            s1 = _mm256_dpbusd_epi32(s1, broadcast(a, g + 1), w[g + 1]);
        }
        _mm256_sub_epi32(_mm256_add_epi32(s0, s1), wsum)
    }

    /// The same with AVX2 and plain signed activations: |w| times a with w's sign (at
    /// most 2·128·127 per pair), into 32 bits per group.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot_i8_avx2(w: &[__m256i; 8], a: &[i8; 32], _wsum: __m256i, _two: bool) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        let mut s = _mm256_setzero_si256();
        for (g, wg) in w.iter().enumerate() {
            let signed = _mm256_sign_epi8(broadcast(a, g), *wg);
            let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(*wg), signed);
            s = _mm256_add_epi32(s, _mm256_madd_epi16(pairs, ones));
        }
        s
    }

    /// The first `len` blocks of each of the N activation rows, as an array the kernels'
    /// unrolled loops index without bounds checks.
    #[inline(always)]
    fn tile_rows<'a, const N: usize>(acts: &[&'a [BlockQ8]], len: usize) -> [&'a [BlockQ8]; N] {
        let mut rows: [&[BlockQ8]; N] = [&[]; N];
        for (row, act) in rows.iter_mut().zip(acts) {
            *row = &act[..len];
        }
        rows
    }

    // One body per instruction set and tile height, so each loop is compiled with its
    // features enabled, unrolled over the N activation rows, and the dot products inline.
    macro_rules! kernels {
        ($q4:ident, $q8:ident, $features:literal, $dot_u8:ident, $dot_i8:ident) => {
            #[target_feature(enable = $features)]
            pub fn $q4<const N: usize>(
                w: &[PanelQ4_1],
                acts: &[&[BlockQ8]],
                out: &mut [[f32; PANEL]],
            ) {
                let rows = tile_rows::<N>(acts, w.len());
                let mut acc = [_mm256_setzero_ps(); N];
                let mut offsets = [_mm256_setzero_ps(); N];
                // A row's sums must not depend on the tile it lands in (a batch changes no
                // row), so every tile height adds the same terms in the same order: the
                // scaled dot products in `acc`, the offsets m·s apart. Short tiles do both
                // in one pass; tall ones, short of registers, sum the offsets after.
                for (b, p) in w.iter().enumerate() {
                    let wq = unpack_q4(p);
                    // SAFETY: `d` and `m` are 8 floats at the 32-byte aligned panel start.
                    let (d, m) =
                        unsafe { (_mm256_load_ps(p.d.as_ptr()), _mm256_load_ps(p.m.as_ptr())) };
                    for t in 0..N {
                        let ab = &rows[t][b];
                        let sum = _mm256_cvtepi32_ps($dot_u8(&wq, &ab.qs, N <= 4));
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(ab.d));
                        acc[t] = _mm256_fmadd_ps(sum, scale, acc[t]);
                        if N <= 4 {
                            offsets[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(ab.s), offsets[t]);
                        }
                    }
                }
                if N > 4 {
                    for (b, p) in w.iter().enumerate() {
                        // SAFETY: as above.
                        let m = unsafe { _mm256_load_ps(p.m.as_ptr()) };
                        for t in 0..N {
                            let s = _mm256_set1_ps(rows[t][b].s);
                            offsets[t] = _mm256_fmadd_ps(m, s, offsets[t]);
                        }
                    }
                }
                for t in 0..N {
                    // SAFETY: out[t] is 8 floats.
                    unsafe {
                        _mm256_storeu_ps(out[t].as_mut_ptr(), _mm256_add_ps(acc[t], offsets[t]))
                    };
                }
            }

            #[target_feature(enable = $features)]
            pub fn $q8<const N: usize>(
                w: &[PanelQ8_0],
                acts: &[&[BlockQ8]],
                out: &mut [[f32; PANEL]],
            ) {
                let rows = tile_rows::<N>(acts, w.len());
                let mut acc = [_mm256_setzero_ps(); N];
                for (b, p) in w.iter().enumerate() {
                    let wq = load_q8(p);
                    // SAFETY: `d` and `wsum` are 8 values each at the aligned panel start.
                    let (d, wsum) = unsafe {
                        (
                            _mm256_load_ps(p.d.as_ptr()),
                            _mm256_load_si256(p.wsum.as_ptr().cast()),
                        )
                    };
                    for t in 0..N {
                        let ab = &rows[t][b];
                        let sum = _mm256_cvtepi32_ps($dot_i8(&wq, &ab.qs, wsum, N <= 4));
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(ab.d));
                        acc[t] = _mm256_fmadd_ps(sum, scale, acc[t]);
                    }
                }
                for t in 0..N {
                    // SAFETY: out[t] is 8 floats.
                    unsafe { _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
                }
            }
        };
    }

    /// Activation bytes 4g..4g+4 of a block, in every 32-bit lane of a 512-bit register.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma")]
    fn broadcast512(qs: &[i8; 32], g: usize) -> __m512i {
        _mm512_set1_epi32(group(qs, g))
    }

    /// `a` in the low half of a 512-bit register, `b` in the high half.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma")]
    fn join(a: __m256, b: __m256) -> __m512 {
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(a)),
            _mm256_castps_pd(b),
        ))
    }

    /// The same for integer registers.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma")]
    fn join_si(a: __m256i, b: __m256i) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
    }

    /// Two Q4_1 panels at once in 512-bit registers: lanes 0–7 are the first panel's rows,
    /// 8–15 the second's; lane by lane the same operations, in the same order, as
    /// `q4_1_vnni`, so the same bits.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma")]
    pub fn q4_1_zmm<const N: usize>(
        w: &[PanelQ4_1],
        acts: &[&[BlockQ8]],
        out: &mut [[f32; PANEL]],
    ) {
        let per_row = w.len() / 2;
        let (w0, w1) = w.split_at(per_row);
        let rows = tile_rows::<N>(acts, per_row);
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); N];
        let mut offsets = [_mm512_setzero_ps(); N];
        for b in 0..per_row {
            let (p0, p1) = (&w0[b], &w1[b]);
            let mut wq = [_mm512_setzero_si512(); 8];
            for i in 0..4 {
                // SAFETY: bytes 32i..32i+32 of each panel's 128-byte `qs`.
                let l = unsafe {
                    join_si(
                        load(p0.qs.as_ptr().add(32 * i)),
                        load(p1.qs.as_ptr().add(32 * i)),
                    )
                };
                wq[i] = _mm512_and_si512(l, mask);
                wq[i + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(l), mask);
            }
            // SAFETY: `d` and `m` are 8 floats at each 32-byte aligned panel start.
            let (d, m) = unsafe {
                (
                    join(_mm256_load_ps(p0.d.as_ptr()), _mm256_load_ps(p1.d.as_ptr())),
                    join(_mm256_load_ps(p0.m.as_ptr()), _mm256_load_ps(p1.m.as_ptr())),
                )
            };
            for t in 0..N {
                let ab = &rows[t][b];
                let word = |g: usize| broadcast512(&ab.qs, g);
                let sum = if N <= 4 {
                    let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for g in (0..8).step_by(2) {
                        s0 = _mm512_dpbusd_epi32(s0, wq[g], word(g));
                        s1 = _mm512_dpbusd_epi32(s1, wq[g + 1], word(g + 1));
                    }
                    _mm512_add_epi32(s0, s1)
                } else {
                    let mut s = _mm512_setzero_si512();
                    for (g, wg) in wq.iter().enumerate() {
                        s = _mm512_dpbusd_epi32(s, *wg, word(g));
                    }
                    s
                };
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(ab.d));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[t]);
                if N <= 4 {
                    offsets[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(ab.s), offsets[t]);
                }
            }
        }
        if N > 4 {
            for b in 0..per_row {
                // SAFETY: as above.
                let m = unsafe {
                    join(
                        _mm256_load_ps(w0[b].m.as_ptr()),
                        _mm256_load_ps(w1[b].m.as_ptr()),
                    )
                };
                for t in 0..N {
                    offsets[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(rows[t][b].s), offsets[t]);
                }
            }
        }
        for t in 0..N {
            let v = _mm512_add_ps(acc[t], offsets[t]);
            // SAFETY: out[2t] and out[2t + 1] are 8 floats each.
            unsafe {
                _mm256_storeu_ps(out[2 * t].as_mut_ptr(), _mm512_castps512_ps256(v));
                _mm256_storeu_ps(
                    out[2 * t + 1].as_mut_ptr(),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
                );
            }
        }
    }

    /// Two Q8_0 panels at once in 512-bit registers, as `q4_1_zmm`: lane by lane the
    /// operations of `q8_0_vnni` in its order, so the same bits.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma")]
    pub fn q8_0_zmm<const N: usize>(
        w: &[PanelQ8_0],
        acts: &[&[BlockQ8]],
        out: &mut [[f32; PANEL]],
    ) {
        let per_row = w.len() / 2;
        let (w0, w1) = w.split_at(per_row);
        let rows = tile_rows::<N>(acts, per_row);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..per_row {
            let (p0, p1) = (&w0[b], &w1[b]);
            let mut wq = [_mm512_setzero_si512(); 8];
            for (g, reg) in wq.iter_mut().enumerate() {
                // SAFETY: bytes 32g..32g+32 of each panel's 256-byte `qs`.
                *reg = unsafe {
                    join_si(
                        load(p0.qs.as_ptr().add(32 * g).cast()),
                        load(p1.qs.as_ptr().add(32 * g).cast()),
                    )
                };
            }
            // SAFETY: `d` and `wsum` are 8 values each at each 32-byte aligned panel start.
            let (d, wsum) = unsafe {
                (
                    join(_mm256_load_ps(p0.d.as_ptr()), _mm256_load_ps(p1.d.as_ptr())),
                    join_si(
                        _mm256_load_si256(p0.wsum.as_ptr().cast()),
                        _mm256_load_si256(p1.wsum.as_ptr().cast()),
                    ),
                )
            };
            for t in 0..N {
                let ab = &rows[t][b];
                let word = |g: usize| broadcast512(&ab.qs, g);
                let sum = if N <= 4 {
                    let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                    for g in (0..8).step_by(2) {
                        s0 = _mm512_dpbusd_epi32(s0, word(g), wq[g]);
                        s1 = _mm512_dpbusd_epi32(s1, word(g + 1), wq[g + 1]);
                    }
                    _mm512_sub_epi32(_mm512_add_epi32(s0, s1), wsum)
                } else {
                    let mut s = _mm512_setzero_si512();
                    for (g, wg) in wq.iter().enumerate() {
                        s = _mm512_dpbusd_epi32(s, word(g), *wg);
                    }
                    _mm512_sub_epi32(s, wsum)
                };
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(ab.d));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[t]);
            }
        }
        for t in 0..N {
            // SAFETY: out[2t] and out[2t + 1] are 8 floats each.
            unsafe {
                _mm256_storeu_ps(out[2 * t].as_mut_ptr(), _mm512_castps512_ps256(acc[t]));
                _mm256_storeu_ps(
                    out[2 * t + 1].as_mut_ptr(),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[t]))),
                );
            }
        }
    }

    kernels!(q4_1_avx2, q8_0_avx2, "avx2,fma", dot_u8_avx2, dot_i8_avx2);
    kernels!(
        q4_1_vnni,
        q8_0_vnni,
        "avx512vnni,avx512vl,avx2,fma",
        dot_u8_vnni,
        dot_i8_vnni
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    /// Random GGUF bytes of a (rows, cols) Q4_1 or Q8_0 matrix.
    fn random_raw(r: &mut impl Rng, dtype: GgmlDType, rows: usize, cols: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for _ in 0..rows * cols / QK {
            raw.extend(f16::from_f32(r.random_range(0.001..0.05)).to_le_bytes());
            if dtype == GgmlDType::Q4_1 {
                raw.extend(f16::from_f32(r.random_range(-0.2..0.0)).to_le_bytes());
                raw.extend((0..16).map(|_| r.random::<u8>()));
            } else {
                // -128 included: the unsigned shift and the sign trick must survive it.
                raw.extend((0..32).map(|_| r.random::<u8>()));
            }
        }
        raw
    }

    fn weight(r: &mut impl Rng, dtype: GgmlDType, rows: usize, cols: usize) -> QWeight {
        let raw = random_raw(r, dtype, rows, cols);
        QWeight::from_raw(dtype, rows, cols, &raw)
            .expect("repack")
            .expect("a repacked format")
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
    }

    /// The whole product through the scalar kernels, one panel and one row at a time.
    fn reference(w: &QWeight, x: &[f32], n: usize) -> Vec<f32> {
        let per_row = w.cols / QK;
        let acts = quantize_rows(x, w.cols);
        let mut out = vec![0f32; n * w.rows];
        for t in 0..n {
            let a = [&acts[t * per_row..(t + 1) * per_row]];
            for j in 0..w.rows {
                let (panel, r) = (j / PANEL, j % PANEL);
                let blocks = panel * per_row..(panel + 1) * per_row;
                let mut o = [[0f32; PANEL]];
                match &w.data {
                    Data::Q4_1(p) => scalar::q4_1(&p[blocks], &a, &mut o),
                    Data::Q8_0(p) => scalar::q8_0(&p[blocks], &a, &mut o),
                    Data::Candle(..) => unreachable!(),
                }
                out[t * w.rows + j] = o[0][r];
            }
        }
        out
    }

    #[test]
    fn panels_keep_every_element_of_the_file() {
        // Rows 0..11 (a full panel and a padded one), 2 blocks each.
        let mut r = rng();
        let (rows, cols) = (11usize, 2 * QK);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let raw = random_raw(&mut r, dtype, rows, cols);
            let w = QWeight::from_raw(dtype, rows, cols, &raw)
                .expect("repack")
                .expect("repacked");
            let size = if dtype == GgmlDType::Q4_1 { 20 } else { 34 };
            for (i, b) in raw.chunks(size).enumerate() {
                let (row, block) = (i / 2, i % 2);
                let p = row / PANEL * 2 + block;
                for x in 0..QK {
                    let (got, want) = match &w.data {
                        Data::Q4_1(ps) => {
                            let byte = b[4 + x % 16];
                            let want = if x < 16 { byte & 0xF } else { byte >> 4 };
                            (ps[p].q(row % PANEL, x) as i32, want as i32)
                        }
                        Data::Q8_0(ps) => (ps[p].q(row % PANEL, x) as i32, b[2 + x] as i8 as i32),
                        Data::Candle(..) => unreachable!(),
                    };
                    assert_eq!(got, want, "{dtype:?} row {row} block {block} element {x}");
                }
            }
        }
        assert!(QWeight::from_raw(GgmlDType::Q4_1, 2, QK, &[0; 39]).is_err());
    }

    #[test]
    fn kernels_match_the_scalar_reference_on_random_blocks() {
        let mut r = rng();
        for blocks in [1usize, 3, 7, 18, 48] {
            for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
                let w = weight(&mut r, dtype, PANEL, blocks * QK);
                for n in 1..=TILE {
                    let x: Vec<f32> = (0..n * blocks * QK)
                        .map(|_| r.random_range(-3.0..3.0))
                        .collect();
                    let acts = quantize_rows(&x, blocks * QK);
                    let tile: Vec<&[BlockQ8]> = acts.chunks(blocks).collect();
                    let mut want = vec![[0f32; PANEL]; n];
                    match &w.data {
                        Data::Q4_1(p) => scalar::q4_1(p, &tile, &mut want),
                        Data::Q8_0(p) => scalar::q8_0(p, &tile, &mut want),
                        Data::Candle(..) => unreachable!(),
                    }
                    for k in Kernels::available() {
                        let mut got = vec![[0f32; PANEL]; n];
                        match &w.data {
                            Data::Q4_1(p) => k.q4_1(p, &tile, &mut got),
                            Data::Q8_0(p) => {
                                let acts = k.q8_0_activations(acts.clone());
                                let tile: Vec<&[BlockQ8]> = acts.chunks(blocks).collect();
                                k.q8_0(p, &tile, &mut got)
                            }
                            Data::Candle(..) => unreachable!(),
                        }
                        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                            assert!(
                                close(*g, *w),
                                "{k:?} {dtype:?} {blocks} blocks, {n} rows: {got:?} vs {want:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_in_every_tile_height() {
        // What the batch-invariance of the engine rests on.
        let mut r = rng();
        let blocks = 18;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = weight(&mut r, dtype, PANEL, blocks * QK);
            let x: Vec<f32> = (0..TILE * blocks * QK)
                .map(|_| r.random_range(-3.0..3.0))
                .collect();
            for k in Kernels::available() {
                let acts = match dtype {
                    GgmlDType::Q8_0 => k.q8_0_activations(quantize_rows(&x, blocks * QK)),
                    _ => quantize_rows(&x, blocks * QK),
                };
                let tile: Vec<&[BlockQ8]> = acts.chunks(blocks).collect();
                let mut first = None;
                for n in 1..=TILE {
                    let mut out = vec![[0f32; PANEL]; n];
                    match &w.data {
                        Data::Q4_1(p) => k.q4_1(p, &tile[..n], &mut out),
                        Data::Q8_0(p) => k.q8_0(p, &tile[..n], &mut out),
                        Data::Candle(..) => unreachable!(),
                    }
                    let bits = out[0].map(f32::to_bits);
                    assert_eq!(*first.get_or_insert(bits), bits, "{k:?} {dtype:?} n={n}");
                }
            }
        }
    }

    #[test]
    fn a_panel_pair_gives_the_bits_of_two_single_panels() {
        let mut r = rng();
        let blocks = 18;
        let w4 = weight(&mut r, GgmlDType::Q4_1, 2 * PANEL, blocks * QK);
        let w8 = weight(&mut r, GgmlDType::Q8_0, 2 * PANEL, blocks * QK);
        let (Data::Q4_1(p4), Data::Q8_0(p8)) = (&w4.data, &w8.data) else {
            unreachable!()
        };
        let x: Vec<f32> = (0..TILE * blocks * QK)
            .map(|_| r.random_range(-3.0..3.0))
            .collect();
        let acts = quantize_rows(&x, blocks * QK);
        let tile: Vec<&[BlockQ8]> = acts.chunks(blocks).collect();
        for k in Kernels::available() {
            let acts8 = k.q8_0_activations(acts.clone());
            let tile8: Vec<&[BlockQ8]> = acts8.chunks(blocks).collect();
            for n in 1..=TILE {
                let mut pair = vec![[0f32; PANEL]; 2 * n];
                let mut pair8 = vec![[0f32; PANEL]; 2 * n];
                k.q4_1_pair(p4, &tile[..n], &mut pair);
                k.q8_0_pair(p8, &tile8[..n], &mut pair8);
                for i in 0..2 {
                    let mut one = vec![[0f32; PANEL]; n];
                    let mut one8 = vec![[0f32; PANEL]; n];
                    let own = i * blocks..(i + 1) * blocks;
                    k.q4_1(&p4[own.clone()], &tile[..n], &mut one);
                    k.q8_0(&p8[own], &tile8[..n], &mut one8);
                    for t in 0..n {
                        assert_eq!(
                            pair8[2 * t + i].map(f32::to_bits),
                            one8[t].map(f32::to_bits),
                            "Q8_0 {k:?} n={n} panel {i}"
                        );
                    }
                    for t in 0..n {
                        assert_eq!(
                            pair[2 * t + i].map(f32::to_bits),
                            one[t].map(f32::to_bits),
                            "{k:?} n={n} panel {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simd_quantization_gives_the_scalar_bytes() {
        let mut r = rng();
        // Halves (x.5 after scaling) included: both round them to even.
        let mut x: Vec<f32> = (0..64 * QK).map(|_| r.random_range(-4.0..4.0)).collect();
        x[..QK]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as f32 - 15.5);
        x[QK..2 * QK].fill(0.0);
        let blocks = || {
            vec![
                BlockQ8 {
                    d: 0.0,
                    s: 0.0,
                    qs: [0; QK]
                };
                x.len() / QK
            ]
        };
        let mut want = blocks();
        quantize_scalar(&x, &mut want);
        let mut got = blocks();
        quantize_into(&x, &mut got);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.d, g.s, g.qs), (w.d, w.s, w.qs));
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
        // Odd shapes: 37 output features (four full panels and a padded one), 9 rows (two
        // full tiles and one); candle's own Q4_1 path needs an even number of blocks per
        // row, so 6.
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
            // Rows dequantize exactly as candle dequantizes the tensor, the padded
            // panel's rows included.
            let candle_rows = QTensor::quantize(&t, dtype)
                .expect("quantize")
                .dequantize(&device)
                .expect("dequantize")
                .to_vec2::<f32>()
                .expect("rows");
            for i in [3, 36] {
                let mut row = Vec::new();
                ours.dequantize_row(i, &mut row).expect("repacked");
                assert_eq!(row, candle_rows[i], "{dtype:?} row {i}");
            }
        }
    }

    #[test]
    fn other_formats_repack_to_what_candle_dequantizes() {
        // 20 rows (a padded panel) of 512 elements (two K-quant super-blocks per row).
        let mut r = rng();
        let (rows, cols, n) = (20usize, 512usize, 3usize);
        let dense: Vec<f32> = (0..rows * cols)
            .map(|_| r.random_range(-0.5..0.5))
            .collect();
        let x: Vec<f32> = (0..n * cols).map(|_| r.random_range(-2.0..2.0)).collect();
        let device = Device::Cpu;
        let t = Tensor::from_vec(dense, (rows, cols), &device).expect("tensor");
        for dtype in [GgmlDType::Q4K, GgmlDType::Q5_0, GgmlDType::Q6K] {
            let q = QTensor::quantize(&t, dtype).expect("quantize");
            let candle_rows = q
                .dequantize(&device)
                .expect("dequantize")
                .to_vec2::<f32>()
                .expect("rows");
            let ours = QWeight::from_qtensor(q, &device).expect("repack");
            assert!(!matches!(ours.data, Data::Candle(..)), "{dtype:?}");
            for (i, want) in candle_rows.iter().enumerate() {
                let mut row = Vec::new();
                ours.dequantize_row(i, &mut row).expect("repacked");
                for (j, (a, b)) in row.iter().zip(want).enumerate() {
                    // Q6_K is quantized again to 8 bits: within half a step of 1/127 of
                    // the block's largest value. The others are exact up to float
                    // rounding of d·q + m.
                    let block = &want[j / QK * QK..][..QK];
                    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let tolerance = if dtype == GgmlDType::Q6K {
                        amax / 254.0 * 1.001 + 1e-6
                    } else {
                        1e-6
                    };
                    assert!(
                        (a - b).abs() <= tolerance,
                        "{dtype:?} [{i}][{j}]: {a} vs {b}"
                    );
                }
            }
            // The product agrees with the dequantized matrix times x (activations are
            // quantized to 8 bits, so within a few hundredths).
            let got = ours.forward(&x, n).expect("forward");
            for t_row in 0..n {
                for (i, w) in candle_rows.iter().enumerate() {
                    let want: f32 = w.iter().zip(&x[t_row * cols..]).map(|(a, b)| a * b).sum();
                    let g = got[t_row * rows + i];
                    assert!(
                        (g - want).abs() <= 0.05 + 0.01 * want.abs(),
                        "{dtype:?}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_stacked_product_splits_into_each_projections_own() {
        // Parts of 64, 24 and 40 rows (uneven piece boundaries, an odd panel count in the
        // middle): each part gets exactly the bits of its own weight's product.
        let mut r = rng();
        let (blocks, n) = (18usize, 11usize);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let parts: Vec<QWeight> = [64usize, 24, 40]
                .iter()
                .map(|&rows| weight(&mut r, dtype, rows, blocks * QK))
                .collect();
            let refs: Vec<&QWeight> = parts.iter().collect();
            let stacked = QWeight::stack(&refs).expect("same format, whole panels");
            let x: Vec<f32> = (0..n * blocks * QK)
                .map(|_| r.random_range(-1.0..1.0))
                .collect();
            let got = stacked
                .forward_parts(&x, n, &[64, 24, 40])
                .expect("forward_parts");
            for (part, w) in got.iter().zip(&parts) {
                assert_eq!(*part, w.forward(&x, n).expect("forward"), "{dtype:?}");
            }
            assert!(stacked.forward_parts(&x, n, &[60, 68]).is_err());
        }
    }

    #[test]
    fn parallel_split_covers_every_output() {
        // Big enough to split into pieces; compare against the scalar path element by
        // element.
        let mut r = rng();
        let (out_f, blocks, n) = (301usize, 18usize, 5usize);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = weight(&mut r, dtype, out_f, blocks * QK);
            let x: Vec<f32> = (0..n * blocks * QK)
                .map(|_| r.random_range(-1.0..1.0))
                .collect();
            let want = reference(&w, &x, n);
            let got = w.forward(&x, n).expect("forward");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(close(*g, *w), "{dtype:?} output {i}: {g} vs {w}");
            }
        }
    }
}
