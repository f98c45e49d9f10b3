//! The llama-family forward pass (llama, and Gemma 3 with its extra norms, GELU and
//! sliding windows), owned by llmesh so that sequences of different lengths and positions
//! run together in one step: the weight matrix products run once over the
//! rows of every sequence in the batch (llmesh's quantized matmul in `qmatmul`, which
//! quantizes each activation row to 8 bits as llama.cpp does), while attention runs per
//! sequence against that sequence's own KV cache. No row's arithmetic depends on what else
//! is in the batch.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::io::{Read, Seek, SeekFrom};

use crate::qmatmul::{self, QWeight};
use crate::{attend, vmath};

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// Shape of a llama model, from GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    pub eps: f32,
    pub context_length: usize,
    pub vocab: usize,
    /// Gemma 3: embeddings scaled by √hidden, per-head norms of queries and keys, norms
    /// after attention and after the feed-forward, GELU, NeoX-style rotation, and sliding
    /// window attention (with its own rotation base) on all but every `global_every`th layer.
    pub gemma: Option<GemmaShape>,
}

#[derive(Debug, Clone)]
pub struct GemmaShape {
    pub sliding_window: usize,
    pub global_every: usize,
    pub rope_base_local: f32,
}

impl LlamaConfig {
    /// Whether layer `li` attends within the sliding window (and rotates with the local base).
    fn is_local(&self, li: usize) -> bool {
        self.gemma
            .as_ref()
            .is_some_and(|g| !(li + 1).is_multiple_of(g.global_every))
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Gemma's per-head norms of queries and keys, and its norms after attention and
    /// after the feed-forward.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
    /// Query, key and value projections.
    qkv: Fused,
    wo: QWeight,
    ffn_norm: Vec<f32>,
    /// Gate and up projections.
    gate_up: Fused,
    w_down: QWeight,
}

/// Projections of the same input: stacked into one product where their formats allow
/// (one pass over the activations, one split over the pool), else one product each.
enum Fused {
    Stacked(QWeight, Vec<usize>),
    Each(Vec<QWeight>),
}

impl Fused {
    fn new(parts: Vec<QWeight>) -> Fused {
        let refs: Vec<&QWeight> = parts.iter().collect();
        match QWeight::stack(&refs) {
            Some(w) => Fused::Stacked(w, parts.iter().map(|p| p.rows).collect()),
            None => Fused::Each(parts),
        }
    }

    /// Each projection's output for `n` input rows (n × its rows).
    fn forward(&self, x: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
        match self {
            Fused::Each(ws) => ws.iter().map(|w| w.forward(x, n)).collect(),
            Fused::Stacked(w, sizes) => w.forward_parts(x, n, sizes),
        }
    }
}

/// Keys and values of one sequence, per layer, row after row, at f16 precision (what
/// llama.cpp keeps too, so nothing is lost: the values are rounded to f16 either way).
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
    len: usize,
}

impl KvCache {
    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `len` positions (a shared prompt prefix) and drops the rest.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            let width = layer.len() / self.len;
            layer.truncate(len * width);
            layer.shrink_to_fit();
        }
        self.len = len;
    }

    /// Bytes held, for memory accounting.
    pub fn bytes(&self) -> usize {
        self.k
            .iter()
            .chain(self.v.iter())
            .map(|l| l.capacity() * std::mem::size_of::<f16>())
            .sum()
    }
}

/// One sequence's part of a batched step: new tokens to run, and its cache.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// Token embeddings: rows read straight from the repacked blocks (shared with the output
/// projection when the model ties them), or candle's lookup for other formats.
enum Embedding {
    Rows(Arc<QWeight>),
    Tensor(QTensor),
}

/// A loaded llama-family model.
pub struct Llama {
    pub config: LlamaConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Arc<QWeight>,
    device: Device,
}

impl Llama {
    /// Loads the weights of a llama or gemma3 architecture GGUF file.
    pub fn load(file: &mut GgufFile, device: &Device) -> Result<Self> {
        let arch = file.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let n_head = file.u32(&key("attention.head_count"))? as usize;
        let hidden = file.u32(&key("embedding_length"))? as usize;
        let head_dim = file
            .u32(&key("attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(hidden / n_head.max(1));
        let gemma = match arch.as_str() {
            "llama" => None,
            "gemma3" => Some(GemmaShape {
                sliding_window: file.u32(&key("attention.sliding_window"))? as usize,
                // As llama.cpp for Gemma 3: five local layers, then a global one; local
                // layers rotate with base 10000.
                global_every: 6,
                rope_base_local: 10_000.0,
            }),
            other => {
                return Err(EngineError::Load(format!(
                    "architecture {other:?} is not supported (llama and gemma3 are)"
                )));
            }
        };
        let config = LlamaConfig {
            n_layer: file.u32(&key("block_count"))? as usize,
            n_head,
            n_kv_head: file.u32(&key("attention.head_count_kv"))? as usize,
            head_dim,
            hidden,
            rope_dim: file
                .u32(&key("rope.dimension_count"))
                .map(|v| v as usize)
                .unwrap_or(head_dim),
            rope_base: file.f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            eps: file.f32(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: file.u32(&key("context_length"))? as usize,
            vocab: file.strings("tokenizer.ggml.tokens")?.len(),
            gemma,
        };
        if config.n_head == 0
            || config.n_kv_head == 0
            || !config.n_head.is_multiple_of(config.n_kv_head)
            || config.rope_dim > config.head_dim
            || !config.rope_dim.is_multiple_of(2)
        {
            return Err(EngineError::Load("inconsistent attention shape".into()));
        }

        let tensor = |file: &mut GgufFile, name: &str| -> Result<QTensor> {
            file.content
                .tensor(&mut file.reader, name, device)
                .map_err(|e| EngineError::Load(format!("tensor {name}: {e}")))
        };
        let vector = |t: QTensor| -> Result<Vec<f32>> {
            Ok(t.dequantize(device)?.flatten_all()?.to_vec1::<f32>()?)
        };
        // Q4_1 and Q8_0 weights go from the file straight into their repacked form through
        // one reused buffer: no intermediate tensors, so the heap is not left fragmented
        // with a second copy's worth of freed memory.
        let mut buf = Vec::new();
        let mut weight = |file: &mut GgufFile, name: &str| -> Result<QWeight> {
            let info = file
                .content
                .tensor_infos
                .get(name)
                .ok_or_else(|| EngineError::Load(format!("tensor {name} is missing")))?;
            let (rows, cols) = info
                .shape
                .dims2()
                .map_err(|e| EngineError::Load(format!("tensor {name}: {e}")))?;
            let dtype = info.ggml_dtype;
            if device.is_cpu() && qmatmul::repackable(dtype) {
                let bytes = rows * cols / dtype.block_size() * dtype.type_size();
                let at = file.content.tensor_data_offset + info.offset;
                buf.resize(bytes, 0);
                file.reader
                    .seek(SeekFrom::Start(at))
                    .and_then(|_| file.reader.read_exact(&mut buf))
                    .map_err(|e| EngineError::Load(format!("tensor {name}: {e}")))?;
                if let Some(w) = QWeight::from_raw(dtype, rows, cols, &buf)? {
                    return Ok(w);
                }
            }
            let t = file
                .content
                .tensor(&mut file.reader, name, device)
                .map_err(|e| EngineError::Load(format!("tensor {name}: {e}")))?;
            QWeight::from_qtensor(t, device)
        };

        let embed_dtype = file
            .content
            .tensor_infos
            .get("token_embd.weight")
            .map(|i| i.ggml_dtype)
            .ok_or_else(|| EngineError::Load("tensor token_embd.weight is missing".into()))?;
        let repackable = qmatmul::repackable(embed_dtype);
        let norm = vector(tensor(file, "output_norm.weight")?)?;
        let tied = !file.content.tensor_infos.contains_key("output.weight");
        let (embed, output) = match (tied, repackable) {
            (false, true) => (
                Embedding::Rows(Arc::new(weight(file, "token_embd.weight")?)),
                Arc::new(weight(file, "output.weight")?),
            ),
            (false, false) => (
                Embedding::Tensor(tensor(file, "token_embd.weight")?),
                Arc::new(weight(file, "output.weight")?),
            ),
            // Tied embeddings: the output projection is the embedding matrix, held once.
            (true, true) => {
                let shared = Arc::new(weight(file, "token_embd.weight")?);
                (Embedding::Rows(shared.clone()), shared)
            }
            (true, false) => (
                Embedding::Tensor(tensor(file, "token_embd.weight")?),
                Arc::new(weight(file, "token_embd.weight")?),
            ),
        };
        let mut layers = Vec::with_capacity(config.n_layer);
        let is_gemma = config.gemma.is_some();
        for i in 0..config.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            let gemma_norm = |file: &mut GgufFile, n: &str| -> Result<Option<Vec<f32>>> {
                if is_gemma {
                    Ok(Some(vector(tensor(file, &p(n))?)?))
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                q_norm: gemma_norm(file, "attn_q_norm")?,
                k_norm: gemma_norm(file, "attn_k_norm")?,
                post_attn_norm: gemma_norm(file, "post_attention_norm")?,
                post_ffn_norm: gemma_norm(file, "post_ffw_norm")?,
                attn_norm: vector(tensor(file, &p("attn_norm"))?)?,
                qkv: Fused::new(vec![
                    weight(file, &p("attn_q"))?,
                    weight(file, &p("attn_k"))?,
                    weight(file, &p("attn_v"))?,
                ]),
                wo: weight(file, &p("attn_output"))?,
                ffn_norm: vector(tensor(file, &p("ffn_norm"))?)?,
                gate_up: Fused::new(vec![
                    weight(file, &p("ffn_gate"))?,
                    weight(file, &p("ffn_up"))?,
                ]),
                w_down: weight(file, &p("ffn_down"))?,
            });
        }
        Ok(Llama {
            config,
            embed,
            layers,
            norm,
            output,
            device: device.clone(),
        })
    }

    /// Runs one step over a batch: each sequence's new tokens are appended to its cache,
    /// and the logits after each sequence's last token come back, one row per sequence.
    pub fn forward(&self, batch: &mut [SeqInput<'_>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let rows: usize = batch.iter().map(|s| s.tokens.len()).sum();
        if rows == 0 {
            return Ok(Vec::new());
        }
        for s in batch.iter() {
            if s.tokens.is_empty() {
                return Err(EngineError::Invalid(
                    "a sequence in the batch has no tokens".into(),
                ));
            }
            if s.cache.len + s.tokens.len() > c.context_length {
                return Err(EngineError::Invalid("the context window is full".into()));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(EngineError::Invalid(format!(
                    "token id {bad} is outside the vocabulary"
                )));
            }
        }
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let positions: Vec<usize> = batch
            .iter()
            .flat_map(|s| s.cache.len..s.cache.len + s.tokens.len())
            .collect();
        let mut x = match &self.embed {
            Embedding::Rows(w) => {
                let mut x = Vec::with_capacity(rows * c.hidden);
                for &id in &ids {
                    w.dequantize_row(id as usize, &mut x).ok_or_else(|| {
                        EngineError::Invalid("embedding rows are not repacked".into())
                    })?;
                }
                x
            }
            Embedding::Tensor(t) => t
                .embedding(&Tensor::from_vec(ids, rows, &self.device)?)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        };

        if c.gemma.is_some() {
            let scale = (c.hidden as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        // Rotation angles of this step's positions, for the global base and (Gemma) the
        // local one.
        let rope_global = rope_table(c, c.rope_base, &positions);
        let rope_local = c
            .gemma
            .as_ref()
            .map(|g| rope_table(c, g.rope_base_local, &positions));
        let q_width = c.n_head * c.head_dim;
        let kv_width = c.n_kv_head * c.head_dim;
        for cache in batch.iter_mut().map(|s| &mut *s.cache) {
            if cache.k.len() != c.n_layer {
                cache.k = vec![Vec::new(); c.n_layer];
                cache.v = vec![Vec::new(); c.n_layer];
            }
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, c.hidden, c.eps);
            let [mut q, mut k, v]: [Vec<f32>; 3] = layer
                .qkv
                .forward(&h, rows)?
                .try_into()
                .map_err(|_| EngineError::Compute("three attention projections".into()))?;
            if let Some(w) = &layer.q_norm {
                q = rms_norm(&q, w, c.head_dim, c.eps);
            }
            if let Some(w) = &layer.k_norm {
                k = rms_norm(&k, w, c.head_dim, c.eps);
            }
            let local = c.is_local(li);
            let (cos, sin) = match (&rope_local, local) {
                (Some(t), true) => t,
                _ => &rope_global,
            };
            let half = c.rope_dim / 2;
            for r in 0..rows {
                let (cos, sin) = (
                    &cos[r * half..(r + 1) * half],
                    &sin[r * half..(r + 1) * half],
                );
                self.rope(&mut q[r * q_width..(r + 1) * q_width], c.n_head, cos, sin);
                self.rope(
                    &mut k[r * kv_width..(r + 1) * kv_width],
                    c.n_kv_head,
                    cos,
                    sin,
                );
            }
            // Append this step's keys and values to each sequence's cache.
            let mut row = 0;
            for s in batch.iter_mut() {
                let n = s.tokens.len();
                let span = row * kv_width..(row + n) * kv_width;
                for (cache, new) in [(&mut s.cache.k[li], &k), (&mut s.cache.v[li], &v)] {
                    let at = cache.len();
                    cache.resize(at + span.len(), f16::ZERO);
                    cache[at..].convert_from_f32_slice(&new[span.clone()]);
                }
                row += n;
            }
            // Work items: one key/value head (with the query heads that share it) for a
            // run of at most ATTN_ROWS query rows of one sequence, spread over the pool,
            // each reading the f16 cache in place.
            // When that makes too few items to keep every core busy (a decode step of one
            // or two sequences), each query head is an item of its own.
            let group = c.n_head / c.n_kv_head;
            let grouped_items: usize = batch
                .iter()
                .map(|s| s.tokens.len().div_ceil(ATTN_ROWS) * c.n_kv_head)
                .sum();
            let split = grouped_items < 4 * rayon::current_num_threads();
            let heads = attend::Heads {
                n_head: c.n_head,
                n_kv_head: c.n_kv_head,
                head_dim: c.head_dim,
                window: match &c.gemma {
                    Some(g) if local => g.sliding_window,
                    _ => usize::MAX,
                },
            };
            // (first row of the item in the batch, the item)
            let mut items: Vec<(usize, attend::Item<'_>)> = Vec::new();
            let mut row = 0;
            for s in batch.iter() {
                let n = s.tokens.len();
                for done in (0..n).step_by(ATTN_ROWS) {
                    let at = row + done;
                    let take = ATTN_ROWS.min(n - done);
                    for kvh in 0..c.n_kv_head {
                        let item = |heads| attend::Item {
                            q: &q[at * q_width..(at + take) * q_width],
                            kvh,
                            heads,
                            k: &s.cache.k[li],
                            v: &s.cache.v[li],
                            start: s.cache.len + done,
                        };
                        if split {
                            items.extend((0..group).map(|g| (at, item(g..g + 1))));
                        } else {
                            items.push((at, item(0..group)));
                        }
                    }
                }
                row += n;
            }
            let outputs: Vec<Vec<f32>> = items
                .par_iter()
                .map(|(_, item)| attend::attend(heads, item))
                .collect();
            let d = c.head_dim;
            let mut attn = vec![0f32; rows * q_width];
            for ((at, item), o) in items.iter().zip(&outputs) {
                let width = item.heads.len() * d;
                let first_col = (item.kvh * group + item.heads.start) * d;
                for r in 0..item.q.len() / q_width {
                    // Row r's heads of this item are contiguous in both.
                    attn[(at + r) * q_width + first_col..][..width]
                        .copy_from_slice(&o[r * width..(r + 1) * width]);
                }
            }
            let mut o = layer.wo.forward(&attn, rows)?;
            if let Some(w) = &layer.post_attn_norm {
                o = rms_norm(&o, w, c.hidden, c.eps);
            }
            add(&mut x, &o);

            let h = rms_norm(&x, &layer.ffn_norm, c.hidden, c.eps);
            let [gate, up]: [Vec<f32>; 2] = layer
                .gate_up
                .forward(&h, rows)?
                .try_into()
                .map_err(|_| EngineError::Compute("two feed-forward projections".into()))?;
            let act = gated(&gate, &up, c.gemma.is_some());
            let mut down = layer.w_down.forward(&act, rows)?;
            if let Some(w) = &layer.post_ffn_norm {
                down = rms_norm(&down, w, c.hidden, c.eps);
            }
            add(&mut x, &down);
        }
        for s in batch.iter_mut() {
            s.cache.len += s.tokens.len();
        }

        // Only the last row of each sequence needs logits.
        let mut last = Vec::with_capacity(batch.len() * c.hidden);
        let mut end = 0;
        for s in batch.iter() {
            end += s.tokens.len();
            last.extend_from_slice(&x[(end - 1) * c.hidden..end * c.hidden]);
        }
        let h = rms_norm(&last, &self.norm, c.hidden, c.eps);
        let logits = self.output.forward(&h, batch.len())?;
        let vocab = logits.len() / batch.len();
        Ok(logits.chunks(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Rotates the first `rope_dim` dims of each head: adjacent pairs for llama (GGUF's
    /// layout), the two halves against each other for Gemma (NeoX style).
    fn rope(&self, x: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
        let c = &self.config;
        let half = c.rope_dim / 2;
        let neox = c.gemma.is_some();
        for h in 0..heads {
            let head = &mut x[h * c.head_dim..h * c.head_dim + c.rope_dim];
            for i in 0..half {
                let (ia, ib) = if neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * cos[i] - b * sin[i];
                head[ib] = a * sin[i] + b * cos[i];
            }
        }
    }
}

/// cos and sin of each position's rotation angles (rope_dim / 2 per position).
fn rope_table(c: &LlamaConfig, base: f32, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let half = c.rope_dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| 1.0 / base.powf(2.0 * i as f32 / c.rope_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &pos in positions {
        for f in &freqs {
            let angle = pos as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// The gated feed-forward activation, act(gate)·up (GELU for Gemma, SiLU for llama),
/// split across the pool for prompt-sized inputs.
fn gated(gate: &[f32], up: &[f32], use_gelu: bool) -> Vec<f32> {
    let mut out = vec![0f32; gate.len()];
    let fill = |(o, (g, u)): (&mut [f32], (&[f32], &[f32]))| {
        if use_gelu {
            vmath::gelu_mul(g, u, o);
        } else {
            vmath::silu_mul(g, u, o);
        }
    };
    const PIECE: usize = 1 << 13;
    if gate.len() >= 4 * PIECE {
        out.par_chunks_mut(PIECE)
            .zip(gate.par_chunks(PIECE).zip(up.par_chunks(PIECE)))
            .for_each(fill);
    } else {
        fill((&mut out, (gate, up)));
    }
    out
}

fn rms_norm(x: &[f32], weight: &[f32], width: usize, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(width) {
        let mean = vmath::sum_squares(row) / width as f64;
        let scale = 1.0 / ((mean as f32) + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * scale * w));
    }
    out
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// Query rows attended together in one work item.
const ATTN_ROWS: usize = 32;
