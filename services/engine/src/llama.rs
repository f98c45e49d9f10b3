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
use rayon::prelude::*;
use std::io::{Read, Seek, SeekFrom};

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
            if device.is_cpu() && matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0) {
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
        let repackable = matches!(embed_dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0);
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
        for i in 0..config.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            layers.push(Layer {
                attn_norm: vector(tensor(file, &p("attn_norm"))?)?,
                wq: weight(file, &p("attn_q"))?,
                wk: weight(file, &p("attn_k"))?,
                wv: weight(file, &p("attn_v"))?,
                wo: weight(file, &p("attn_output"))?,
                ffn_norm: vector(tensor(file, &p("ffn_norm"))?)?,
                w_gate: weight(file, &p("ffn_gate"))?,
                w_up: weight(file, &p("ffn_up"))?,
                w_down: weight(file, &p("ffn_down"))?,
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
            let mut q = layer.wq.forward(&h, rows)?;
            let mut k = layer.wk.forward(&h, rows)?;
            let v = layer.wv.forward(&h, rows)?;
            for (r, &pos) in positions.iter().enumerate() {
                self.rope(&mut q[r * q_width..(r + 1) * q_width], c.n_head, pos);
                self.rope(&mut k[r * kv_width..(r + 1) * kv_width], c.n_kv_head, pos);
            }
            let mut attn = vec![0f32; rows * q_width];
            // Append this step's keys and values, then widen each sequence's cache for the
            // layer to f32 once (every query row and head of the step reads it).
            let mut row = 0;
            let mut widened = Vec::with_capacity(batch.len());
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
                widened.push((start, n, &s.cache.k[li], &s.cache.v[li]));
                row += n;
            }
            let widened: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = widened
                .into_par_iter()
                .map(|(start, n, kc, vc)| {
                    let mut kf = vec![0f32; kc.len()];
                    let mut vf = vec![0f32; vc.len()];
                    kc.convert_to_f32_slice(&mut kf);
                    vc.convert_to_f32_slice(&mut vf);
                    (start, n, kf, vf)
                })
                .collect();
            // Work items: runs of at most ATTN_ROWS query rows of one sequence, each
            // writing its own part of `attn`, spread over the pool.
            let mut items = Vec::new();
            let mut rest: &mut [f32] = &mut attn;
            let mut row = 0;
            for (seq, (start, n, _, _)) in widened.iter().enumerate() {
                let mut done = 0;
                while done < *n {
                    let take = ATTN_ROWS.min(n - done);
                    let (mine, tail) = rest.split_at_mut(take * q_width);
                    rest = tail;
                    items.push((seq, start + done, row + done, take, mine));
                    done += take;
                }
                row += n;
            }
            items
                .into_par_iter()
                .for_each(|(seq, first, at, take, out)| {
                    let (_, _, kf, vf) = &widened[seq];
                    attention(
                        c,
                        &q[at * q_width..(at + take) * q_width],
                        kf,
                        vf,
                        first,
                        out,
                    );
                });
            let o = layer.wo.forward(&attn, rows)?;
            add(&mut x, &o);

            let h = rms_norm(&x, &layer.ffn_norm, c.hidden, c.eps);
            let gate = layer.w_gate.forward(&h, rows)?;
            let up = layer.w_up.forward(&h, rows)?;
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = layer.w_down.forward(&act, rows)?;
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

/// Query rows attended together in one work item.
const ATTN_ROWS: usize = 32;

/// Causal attention of `n` query rows (positions start..start+n) over a sequence's keys
/// and values (already widened from its f16 cache). Grouped-query: query head h reads
/// key/value head h / group.
fn attention(c: &LlamaConfig, q: &[f32], k: &[f32], v: &[f32], start: usize, out: &mut [f32]) {
    let d = c.head_dim;
    let group = c.n_head / c.n_kv_head;
    let q_width = c.n_head * d;
    let kv_width = c.n_kv_head * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = Vec::new();
    let mut qh = vec![0f32; d];
    for (t, q_row) in q.chunks(q_width).enumerate() {
        let visible = start + t + 1;
        for h in 0..c.n_head {
            let kvh = h / group;
            // llama.cpp multiplies f16 keys with f16-rounded queries.
            for (dst, &x) in qh.iter_mut().zip(&q_row[h * d..(h + 1) * d]) {
                *dst = f16_round(x);
            }
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in 0..visible {
                let at = j * kv_width + kvh * d;
                let s = dot(&qh, &k[at..at + d]) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0.0;
            for x in scores.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let oh = &mut out[t * q_width + h * d..t * q_width + (h + 1) * d];
            oh.fill(0.0);
            for (j, &w) in scores.iter().enumerate() {
                let at = j * kv_width + kvh * d;
                let w = f16_round(w / sum);
                oh.iter_mut()
                    .zip(&v[at..at + d])
                    .for_each(|(o, x)| *o += w * x);
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
