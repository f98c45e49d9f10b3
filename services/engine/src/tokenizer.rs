//! The tokenizer of a GGUF chat model, built from its metadata with the `tokenizers` crate,
//! plus the raw bytes of every token for UTF-8-safe streaming.
//!
//! Two GGUF vocabularies are supported:
//! - byte-level BPE ("gpt2"): the pre-tokenizer follows what matched llama.cpp for SmolLM2
//!   ("smollm"): digits split one by one, then byte-level splitting without a prefix space;
//! - SentencePiece BPE ("llama", as Gemma uses): pieces merge by score, spaces are "▁",
//!   unknown characters fall back to byte tokens. The scores become BPE merge ranks: the
//!   merge forming the higher-scored piece goes first, as in llama.cpp.
//!
//! Encoding adds no BOS; chat templates write it themselves.

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// GGUF token types that are control or user-defined tokens, matched whole in text.
const TOKEN_TYPE_CONTROL: u32 = 3;
const TOKEN_TYPE_USER_DEFINED: u32 = 4;

/// Texts of tokens that end a turn in common chat formats.
const END_OF_TURN: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"];

/// Encodes text to token ids and maps ids back to bytes.
pub struct GgufTokenizer {
    inner: Tokenizer,
    pieces: Vec<Vec<u8>>,
    texts: Vec<String>,
    special: Vec<bool>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// The model expects BOS before a prompt (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Tokens that end generation: EOS and any end-of-turn token of the vocabulary.
    pub stop_ids: Vec<u32>,
}

impl GgufTokenizer {
    /// Builds the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let kind = file.string("tokenizer.ggml.model")?;
        let tokens = file.strings("tokenizer.ggml.tokens")?;
        let types = file
            .u32s("tokenizer.ggml.token_type")
            .unwrap_or_else(|_| vec![1; tokens.len()]);
        match kind.as_str() {
            "gpt2" => Self::byte_level(file, tokens, types),
            "llama" => Self::sentencepiece(file, tokens, types),
            other => Err(EngineError::Load(format!(
                "tokenizer model {other:?} is not supported (\"gpt2\" and \"llama\" are)"
            ))),
        }
    }

    fn byte_level(file: &GgufFile, tokens: Vec<String>, types: Vec<u32>) -> Result<Self> {
        let merges = file
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| EngineError::Load(format!("malformed merge {m:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| EngineError::Load(format!("building the BPE model: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let byte_of = unicode_to_byte();
        let mut special = vec![false; tokens.len()];
        let mut added = Vec::new();
        let mut pieces = Vec::with_capacity(tokens.len());
        for (id, text) in tokens.iter().enumerate() {
            let ty = types.get(id).copied().unwrap_or(1);
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                special[id] = true;
                added.push(AddedToken::from(text.clone(), true));
                pieces.push(text.as_bytes().to_vec());
            } else {
                // Byte-level tokens spell bytes as printable characters; undo that.
                let bytes: Option<Vec<u8>> =
                    text.chars().map(|c| byte_of.get(&c).copied()).collect();
                pieces.push(bytes.unwrap_or_else(|| text.as_bytes().to_vec()));
            }
        }
        inner
            .add_special_tokens(added)
            .map_err(|e| EngineError::Load(format!("adding special tokens: {e}")))?;
        Ok(Self::finish(file, inner, tokens, pieces, special))
    }

    fn sentencepiece(file: &GgufFile, tokens: Vec<String>, types: Vec<u32>) -> Result<Self> {
        let scores: Vec<f32> = match file.get("tokenizer.ggml.scores")?.to_vec() {
            Ok(values) => values.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
            Err(_) => {
                return Err(EngineError::Load(
                    "tokenizer.ggml.scores is not an array".into(),
                ));
            }
        };
        let add_space_prefix = match file.metadata().get("tokenizer.ggml.add_space_prefix") {
            Some(candle_core::quantized::gguf_file::Value::Bool(b)) => *b,
            _ => true,
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        // Every way of splitting a normal piece into two pieces is a merge; higher-scored
        // pieces merge first.
        let mut ranked: Vec<(f32, u32, String, String)> = Vec::new();
        for (id, piece) in tokens.iter().enumerate() {
            if types.get(id).copied().unwrap_or(1) != 1 {
                continue;
            }
            for (at, _) in piece.char_indices().skip(1) {
                let (left, right) = piece.split_at(at);
                if vocab.contains_key(left) && vocab.contains_key(right) {
                    ranked.push((
                        scores.get(id).copied().unwrap_or(0.0),
                        id as u32,
                        left.to_owned(),
                        right.to_owned(),
                    ));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let merges: Vec<(String, String)> = ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .build()
            .map_err(|e| EngineError::Load(format!("building the SentencePiece model: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        let replace = tokenizers::normalizers::replace::Replace::new(" ", "\u{2581}")
            .map_err(|e| EngineError::Load(format!("normalizer: {e}")))?;
        let normalizer: tokenizers::NormalizerWrapper = if add_space_prefix {
            tokenizers::normalizers::Sequence::new(vec![
                tokenizers::normalizers::prepend::Prepend::new("\u{2581}".into()).into(),
                replace.into(),
            ])
            .into()
        } else {
            replace.into()
        };
        inner
            .with_normalizer(Some(normalizer))
            .map_err(|e| EngineError::Load(format!("normalizer: {e}")))?;

        let mut special = vec![false; tokens.len()];
        let mut added = Vec::new();
        let mut pieces = Vec::with_capacity(tokens.len());
        for (id, text) in tokens.iter().enumerate() {
            let ty = types.get(id).copied().unwrap_or(1);
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                special[id] = true;
                added.push(AddedToken::from(text.clone(), true));
                pieces.push(text.as_bytes().to_vec());
            } else if let Some(byte) = byte_token(text) {
                pieces.push(vec![byte]);
            } else {
                pieces.push(text.replace('\u{2581}', " ").into_bytes());
            }
        }
        inner
            .add_special_tokens(added)
            .map_err(|e| EngineError::Load(format!("adding special tokens: {e}")))?;
        Ok(Self::finish(file, inner, tokens, pieces, special))
    }

    fn finish(
        file: &GgufFile,
        inner: Tokenizer,
        tokens: Vec<String>,
        pieces: Vec<Vec<u8>>,
        special: Vec<bool>,
    ) -> Self {
        let bos_id = file.u32("tokenizer.ggml.bos_token_id").ok();
        let eos_id = file.u32("tokenizer.ggml.eos_token_id").ok();
        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        for (id, text) in tokens.iter().enumerate() {
            if END_OF_TURN.contains(&text.as_str()) && !stop_ids.contains(&(id as u32)) {
                stop_ids.push(id as u32);
            }
        }
        let add_bos = matches!(
            file.metadata().get("tokenizer.ggml.add_bos_token"),
            Some(candle_core::quantized::gguf_file::Value::Bool(true))
        );
        GgufTokenizer {
            inner,
            pieces,
            texts: tokens,
            special,
            bos_id,
            eos_id,
            add_bos,
            stop_ids,
        }
    }

    /// Encodes text; special-token texts in it become their single ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Invalid(format!("cannot tokenize the input: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The raw bytes a token stands for (special tokens: their text).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The token's text as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Decodes ids to text, replacing invalid UTF-8.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.piece(id).to_vec()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The byte a SentencePiece byte token such as "<0x0A>" stands for.
fn byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The inverse of GPT-2's byte → printable character table.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~').collect();
    printable.extend(0xA1u8..=0xAC);
    printable.extend(0xAEu8..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u8..=255 {
        let c = if printable.contains(&b) {
            char::from(b)
        } else {
            let c = char::from_u32(256 + extra).unwrap_or('\u{FFFD}');
            extra += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }
}
