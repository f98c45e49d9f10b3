//! Choosing the next token from logits: repeat penalty, temperature, top-k, top-p, min-p,
//! with a seeded generator so a seed reproduces a generation.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings of one request, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 0 disables.
    pub min_p: f32,
    /// 1 disables.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
    /// Generate through end-of-sequence tokens until the length limit.
    pub ignore_eos: bool,
    /// (token id, bias) added to those logits before anything else; ids past the
    /// vocabulary are ignored (the service refuses them before they get here).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            ignore_eos: false,
            logit_bias: Vec::new(),
        }
    }
}

/// Per-sequence sampler state.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// Picks the next token; `history` is every token so far (prompt and output).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        // Bias first, as llama.cpp's sampler chain does, so penalties and temperature see
        // the biased logits.
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &id in &history[start..] {
                if seen.insert(id)
                    && let Some(l) = logits.get_mut(id as usize)
                {
                    // As llama.cpp: shrink positive logits, push negative ones further down.
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }

        let scaled: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        let max = scaled.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let filtered = p.top_k > 0 || p.min_p > 0.0 || p.top_p < 1.0;
        if !filtered {
            // Every token stays a candidate: draw over the vocabulary as it is.
            let weights: Vec<f32> = scaled.iter().map(|c| (c.1 - max).exp()).collect();
            return self.draw(&weights, |i| i as u32);
        }
        // The filters keep a head of the ranking (probability, then lowest id). Rank a
        // window of the best candidates (a selection, then a sort of the window only),
        // widened until the filters stop inside it: a vocabulary of 262,144 tokens is not
        // sorted for every token.
        let n = scaled.len();
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // Softmax over what top-k leaves, or over everything.
        let everything: f32 = scaled.iter().map(|c| (c.1 - max).exp()).sum();
        let mut window = if p.top_k > 0 {
            p.top_k.min(n)
        } else {
            64.min(n)
        };
        loop {
            let mut head = scaled.clone();
            if window < n {
                head.select_nth_unstable_by(window - 1, order);
                head.truncate(window);
            }
            head.sort_by(order);
            let weights: Vec<f32> = head.iter().map(|c| (c.1 - max).exp()).collect();
            let total = if p.top_k > 0 {
                weights.iter().sum()
            } else {
                everything
            };
            let probs: Vec<f32> = weights.iter().map(|w| w / total).collect();
            // Whether the window holds the whole candidate set: top-k made it so, or a
            // filter cut before its end.
            let mut complete = p.top_k > 0 || window == n;
            let mut keep = probs.len();
            if p.min_p > 0.0 {
                let floor = probs[0] * p.min_p;
                let passing = probs.iter().take_while(|&&x| x >= floor).count();
                complete |= passing < keep;
                keep = keep.min(passing.max(1));
            }
            if p.top_p < 1.0 {
                let mut acc = 0.0;
                let mut taken = 0;
                for &x in &probs[..keep] {
                    acc += x;
                    taken += 1;
                    if acc >= p.top_p {
                        complete = true;
                        break;
                    }
                }
                keep = taken.max(1);
            }
            if complete {
                return self.draw(&probs[..keep], |i| head[i].0);
            }
            window = (window * 4).min(n);
        }
    }

    /// Draws an index in proportion to `weights` and maps it to a token id.
    fn draw(&mut self, weights: &[f32], id: impl Fn(usize) -> u32) -> u32 {
        let total: f32 = weights.iter().sum();
        let mut draw = self.rng.random::<f32>() * total;
        for (i, &x) in weights.iter().enumerate() {
            if draw < x {
                return id(i);
            }
            draw -= x;
        }
        id(weights.len() - 1)
    }
}

/// The index of the largest logit; the lowest index wins a tie.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_top_logit() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.0], &[]), 1);
    }

    #[test]
    fn repeat_penalty_changes_the_choice() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.5], &[1]), 2);
    }

    #[test]
    fn logit_bias_comes_before_the_penalty() {
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(0, 5.0), (7, 100.0)],
            ..Default::default()
        });
        // Token 0 wins on its bias; 7 is past this vocabulary and changes nothing.
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.5], &[]), 0);
        // With token 0 penalised after the bias (5.1 / 2 = 2.55), it still beats 2.0.
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(0, 5.0)],
            repeat_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.5], &[0]), 0);
    }

    #[test]
    fn the_ranked_window_keeps_what_a_full_sort_keeps() {
        // top-p over a flat vocabulary needs far more than the first window of 64: the
        // sampler must widen it, and draw only from the nucleus a full sort gives.
        let logits: Vec<f32> = (0..5000).map(|i| -((i % 1000) as f32) * 0.001).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
            ..Default::default()
        };
        let mut ranked: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = ranked[0].1;
        let total: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let mut acc = 0.0;
        let nucleus: std::collections::HashSet<u32> = ranked
            .iter()
            .take_while(|(_, l)| {
                let before = acc;
                acc += (l - max).exp() / total;
                before < 0.5
            })
            .map(|(i, _)| *i as u32)
            .collect();
        assert!(nucleus.len() > 256, "the nucleus spans several windows");
        let mut s = Sampler::new(params);
        for _ in 0..200 {
            let t = s.sample(&mut logits.clone(), &[]);
            assert!(nucleus.contains(&t), "{t} is outside the nucleus");
        }
    }

    #[test]
    fn seeds_reproduce_and_top_k_one_is_greedy() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(params.clone()), draw(params.clone()));
        assert_ne!(
            draw(params.clone()),
            draw(SamplingParams {
                seed: 43,
                ..params.clone()
            })
        );
        let top1 = draw(SamplingParams {
            top_k: 1,
            ..params.clone()
        });
        assert!(top1.iter().all(|&t| t == argmax(&logits)));
        let narrow = draw(SamplingParams {
            min_p: 0.99,
            ..params
        });
        let top = logits[argmax(&logits) as usize];
        assert!(narrow.iter().all(|&t| logits[t as usize] == top));
        assert!(
            narrow.iter().any(|&t| t != argmax(&logits)),
            "ties are sampled"
        );
    }
}
