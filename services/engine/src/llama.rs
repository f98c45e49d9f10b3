//! The llama-family forward pass, owned by llmesh so that sequences of different lengths
//! and positions run together in one step: the weight matrix products run once over the
//! rows of every sequence in the batch (llmesh's quantized matmul in `qmatmul`, which
//! quantizes each activation row to 8 bits as llama.cpp does), while attention runs per
//! sequence against that sequence's own KV cache. No row's arithmetic depends on what else
//! is in the batch.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::qmatmul::QWeight;

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
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QWeight,
    wk: QWeight,
    wv: QWeight,
    wo: QWeight,
    ffn_norm: Vec<f32>,
    w_gate: QWeight,
    w_up: QWeight,
    w_down: QWeight,
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
    cos: Vec<f32>,
    sin: Vec<f32>,
    device: Device,
}

impl Llama {
    /// Loads the weights of a llama-architecture GGUF file.
    pub fn load(file: &mut GgufFile, device: &Device) -> Result<Self> {
        let arch = file.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let n_head = file.u32(&key("attention.head_count"))? as usize;
        let hidden = file.u32(&key("embedding_length"))? as usize;
        let config = LlamaConfig {
            n_layer: file.u32(&key("block_count"))? as usize,
            n_head,
            n_kv_head: file.u32(&key("attention.head_count_kv"))? as usize,
            head_dim: hidden / n_head,
            hidden,
            rope_dim: file
                .u32(&key("rope.dimension_count"))
                .map(|v| v as usize)
                .unwrap_or(hidden / n_head),
            rope_base: file.f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            eps: file.f32(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: file.u32(&key("context_length"))? as usize,
            vocab: file.strings("tokenizer.ggml.tokens")?.len(),
        };
        if !config.n_head.is_multiple_of(config.n_kv_head) || config.rope_dim > config.head_dim {
            return Err(EngineError::Load("inconsistent attention shape".into()));
        }

        let mut tensor = |name: &str| -> Result<QTensor> {
            file.content
                .tensor(&mut file.reader, name, device)
                .map_err(|e| EngineError::Load(format!("tensor {name}: {e}")))
        };
        let vector = |t: QTensor| -> Result<Vec<f32>> {
            Ok(t.dequantize(device)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let matmul = |t: QTensor| -> Result<QWeight> { QWeight::from_qtensor(t, device) };

        let embed_t = tensor("token_embd.weight")?;
        let repackable = matches!(embed_t.dtype(), GgmlDType::Q4_1 | GgmlDType::Q8_0);
        let norm = vector(tensor("output_norm.weight")?)?;
        let (embed, output) = match tensor("output.weight") {
            Ok(t) if repackable => (
                Embedding::Rows(Arc::new(matmul(embed_t)?)),
                Arc::new(matmul(t)?),
            ),
            Ok(t) => (Embedding::Tensor(embed_t), Arc::new(matmul(t)?)),
            // Tied embeddings: the output projection is the embedding matrix, held once.
            Err(_) if repackable => {
                let shared = Arc::new(matmul(embed_t)?);
                (Embedding::Rows(shared.clone()), shared)
            }
            Err(_) => {
                let output = Arc::new(matmul(tensor("token_embd.weight")?)?);
                (Embedding::Tensor(embed_t), output)
            }
        };
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            layers.push(Layer {
                attn_norm: vector(tensor(&p("attn_norm"))?)?,
                wq: matmul(tensor(&p("attn_q"))?)?,
                wk: matmul(tensor(&p("attn_k"))?)?,
                wv: matmul(tensor(&p("attn_v"))?)?,
                wo: matmul(tensor(&p("attn_output"))?)?,
                ffn_norm: vector(tensor(&p("ffn_norm"))?)?,
                w_gate: matmul(tensor(&p("ffn_gate"))?)?,
                w_up: matmul(tensor(&p("ffn_up"))?)?,
                w_down: matmul(tensor(&p("ffn_down"))?)?,
            });
        }
        let (cos, sin) = rope_tables(&config);
        Ok(Llama {
            config,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
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
            let mut q = self.matmul(&layer.wq, &h, rows, c.hidden)?;
            let mut k = self.matmul(&layer.wk, &h, rows, c.hidden)?;
            let v = self.matmul(&layer.wv, &h, rows, c.hidden)?;
            for (r, &pos) in positions.iter().enumerate() {
                self.rope(&mut q[r * q_width..(r + 1) * q_width], c.n_head, pos);
                self.rope(&mut k[r * kv_width..(r + 1) * kv_width], c.n_kv_head, pos);
            }
            let mut attn = vec![0f32; rows * q_width];
            let mut row = 0;
            for s in batch.iter_mut() {
                let n = s.tokens.len();
                let start = s.cache.len;
                s.cache.k[li].extend(
                    k[row * kv_width..(row + n) * kv_width]
                        .iter()
                        .map(|&x| f16::from_f32(x)),
                );
                s.cache.v[li].extend(
                    v[row * kv_width..(row + n) * kv_width]
                        .iter()
                        .map(|&x| f16::from_f32(x)),
                );
                attention(
                    c,
                    &q[row * q_width..(row + n) * q_width],
                    &s.cache.k[li],
                    &s.cache.v[li],
                    start,
                    &mut attn[row * q_width..(row + n) * q_width],
                );
                row += n;
            }
            let o = self.matmul(&layer.wo, &attn, rows, q_width)?;
            add(&mut x, &o);

            let h = rms_norm(&x, &layer.ffn_norm, c.hidden, c.eps);
            let gate = self.matmul(&layer.w_gate, &h, rows, c.hidden)?;
            let up = self.matmul(&layer.w_up, &h, rows, c.hidden)?;
            let ff = gate.len() / rows;
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = self.matmul(&layer.w_down, &act, rows, ff)?;
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
        let logits = self.matmul(&self.output, &h, batch.len(), c.hidden)?;
        let vocab = logits.len() / batch.len();
        Ok(logits.chunks(vocab).map(<[f32]>::to_vec).collect())
    }

    fn matmul(&self, w: &QWeight, x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        debug_assert_eq!(w.cols, cols);
        w.forward(x, rows)
    }

    /// Rotates adjacent pairs (GGUF's llama layout) of the first `rope_dim` dims of each head.
    fn rope(&self, x: &mut [f32], heads: usize, pos: usize) {
        let c = &self.config;
        let half = c.rope_dim / 2;
        let table = &self.cos[pos * half..(pos + 1) * half];
        let sines = &self.sin[pos * half..(pos + 1) * half];
        for h in 0..heads {
            let head = &mut x[h * c.head_dim..h * c.head_dim + c.rope_dim];
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * table[i] - b * sines[i];
                head[2 * i + 1] = a * sines[i] + b * table[i];
            }
        }
    }
}

fn rope_tables(c: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = c.rope_dim / 2;
    let mut cos = Vec::with_capacity(c.context_length * half);
    let mut sin = Vec::with_capacity(c.context_length * half);
    for pos in 0..c.context_length {
        for i in 0..half {
            let freq = 1.0 / c.rope_base.powf(2.0 * i as f32 / c.rope_dim as f32);
            let angle = pos as f32 * freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

fn rms_norm(x: &[f32], weight: &[f32], width: usize, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(width) {
        let mean = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / width as f64;
        let scale = 1.0 / ((mean as f32) + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * scale * w));
    }
    out
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// Causal attention of `n` new query rows (positions start..start+n) over a cache that
/// already holds them. Grouped-query: query head h reads key/value head h / group, so each
/// cached key and value row is widened from f16 once and used by the whole group.
fn attention(c: &LlamaConfig, q: &[f32], k: &[f16], v: &[f16], start: usize, out: &mut [f32]) {
    let d = c.head_dim;
    let group = c.n_head / c.n_kv_head;
    let q_width = c.n_head * d;
    let kv_width = c.n_kv_head * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![Vec::new(); group];
    let mut row = vec![0f32; d];
    let mut qh = vec![0f32; group * d];
    for (t, q_row) in q.chunks(q_width).enumerate() {
        let visible = start + t + 1;
        for kvh in 0..c.n_kv_head {
            let heads = kvh * group..(kvh + 1) * group;
            // llama.cpp multiplies f16 keys with f16-rounded queries.
            for (dst, &x) in qh.iter_mut().zip(&q_row[heads.start * d..heads.end * d]) {
                *dst = f16_round(x);
            }
            for s in scores.iter_mut() {
                s.clear();
            }
            for j in 0..visible {
                let at = j * kv_width + kvh * d;
                k[at..at + d].convert_to_f32_slice(&mut row);
                for (g, s) in scores.iter_mut().enumerate() {
                    s.push(dot(&qh[g * d..(g + 1) * d], &row) * scale);
                }
            }
            for s in scores.iter_mut() {
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in s.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                for x in s.iter_mut() {
                    *x = f16_round(*x / sum);
                }
            }
            let oh = &mut out[t * q_width + heads.start * d..t * q_width + heads.end * d];
            oh.fill(0.0);
            for j in 0..visible {
                let at = j * kv_width + kvh * d;
                v[at..at + d].convert_to_f32_slice(&mut row);
                for (g, s) in scores.iter().enumerate() {
                    let w = s[j];
                    oh[g * d..(g + 1) * d]
                        .iter_mut()
                        .zip(&row)
                        .for_each(|(o, x)| *o += w * x);
                }
            }
        }
    }
}

fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums let the compiler vectorise without reordering per call.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for l in 0..8 {
            acc[l] += a[i * 8 + l] * b[i * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}
