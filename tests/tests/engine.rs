//! The engine against the real SmolLM2 model: llama.cpp's tokenizer ids and greedy tokens
//! (recorded fixtures), batching that changes no row, seeded sampling, cancellation.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use llmesh_engine::ChatModel;
use llmesh_engine::sampler::SamplingParams;
use llmesh_engine::scheduler::{Done, Event, FinishReason, Request, SchedulerConfig};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

/// Margin between llama.cpp's top two logits below which the two engines may
/// legitimately pick different tokens. llama.cpp's own margins for this model move by up
/// to 0.5 between its batch sizes (8-bit activation rounding, f16 KV cache), so a
/// smaller epsilon would test noise, not correctness.
const EPSILON: f64 = 0.5;

/// The two architectures under test, each with fixtures recorded from llama.cpp.
#[derive(Clone, Copy)]
enum Arch {
    SmolLm2,
    Gemma3,
}

impl Arch {
    fn dir(self) -> &'static str {
        match self {
            Arch::SmolLm2 => "smollm2",
            Arch::Gemma3 => "gemma3",
        }
    }

    fn path(self) -> std::path::PathBuf {
        match self {
            Arch::SmolLm2 => llmesh_tests::models::chat_model_path(),
            Arch::Gemma3 => llmesh_tests::models::gemma_model_path(),
        }
    }
}

fn fixture_of(arch: Arch, name: &str) -> Value {
    let path = format!(
        "{}/fixtures/{}/{name}",
        env!("CARGO_MANIFEST_DIR"),
        arch.dir()
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
}

fn fixture(name: &str) -> Value {
    fixture_of(Arch::SmolLm2, name)
}

fn load(arch: Arch, config: SchedulerConfig) -> Arc<ChatModel> {
    Arc::new(ChatModel::load("test", &arch.path(), config).expect("load model"))
}

fn model(config: SchedulerConfig) -> Arc<ChatModel> {
    load(Arch::SmolLm2, config)
}

fn request(
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
) -> (Request, UnboundedReceiver<Event>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (
        Request {
            prompt,
            sampling,
            max_tokens,
            stop: Vec::new(),
            emit_tokens: true,
            events: tx,
        },
        rx,
    )
}

async fn collect(mut rx: UnboundedReceiver<Event>) -> (Vec<u32>, String, Done) {
    let mut ids = Vec::new();
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Token(id) => ids.push(id),
            Event::Delta(t) => text.push_str(&t),
            Event::Done(done) => return (ids, text, done),
        }
    }
    panic!("stream ended without Done");
}

fn tokenizer_matches_llama_cpp(arch: Arch) {
    let model = load(arch, SchedulerConfig::default());
    let cases = fixture_of(arch, "tokenizer.json");
    for case in cases.as_array().expect("array") {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("ids");
        let got = model.tokenizer.encode(text).expect("encode");
        assert_eq!(got, want, "token ids of {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_matches_llama_cpp_smollm2() {
    tokenizer_matches_llama_cpp(Arch::SmolLm2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_matches_llama_cpp_gemma3() {
    tokenizer_matches_llama_cpp(Arch::Gemma3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_template_renders_what_llama_cpp_renders() {
    let model = model(SchedulerConfig::default());
    for case in fixture("chat.json").as_array().expect("array") {
        let user = case["user"].as_str().expect("user");
        let want: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).expect("ids");
        let ours = model
            .chat_tokens(&[llmesh_engine::template::Message {
                role: "user".into(),
                content: user.into(),
            }])
            .expect("template");
        assert_eq!(ours, want, "prompt of {user:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_decoding_matches_llama_cpp_smollm2() {
    greedy_decoding_matches_llama_cpp(Arch::SmolLm2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_decoding_matches_llama_cpp_gemma3() {
    greedy_decoding_matches_llama_cpp(Arch::Gemma3).await;
}

async fn greedy_decoding_matches_llama_cpp(arch: Arch) {
    let model = load(arch, SchedulerConfig::default());
    for case in fixture_of(arch, "greedy.json").as_array().expect("array") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let prompt_ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).expect("ids");
        let want: Vec<u32> = serde_json::from_value(case["greedy"].clone()).expect("greedy");
        let margins: Vec<f64> = serde_json::from_value(case["margins"].clone()).expect("margins");
        assert_eq!(
            model.text_tokens(prompt).expect("encode"),
            prompt_ids,
            "{prompt:?}"
        );

        let (req, rx) = request(prompt_ids, want.len(), SamplingParams::default());
        model.generate(req).expect("submit");
        let (got, _, done) = collect(rx).await;
        assert_eq!(done.finish, FinishReason::Length);
        let mut compared = 0;
        for (step, (g, w)) in got.iter().zip(&want).enumerate() {
            if margins[step] < EPSILON {
                break;
            }
            assert_eq!(
                g, w,
                "{prompt:?}: step {step} differs (llama.cpp margin {:.3})\n ours {got:?}\n want {want:?}",
                margins[step]
            );
            compared += 1;
        }
        assert!(
            compared >= 16,
            "{prompt:?}: only {compared} tokens compared"
        );
    }
}

fn greedy_cases() -> Vec<Vec<u32>> {
    greedy_cases_of(Arch::SmolLm2)
}

fn greedy_cases_of(arch: Arch) -> Vec<Vec<u32>> {
    fixture_of(arch, "greedy.json")
        .as_array()
        .expect("array")
        .iter()
        .map(|c| serde_json::from_value(c["prompt_ids"].clone()).expect("ids"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_changes_no_row_smollm2() {
    a_batch_changes_no_row(Arch::SmolLm2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_changes_no_row_gemma3() {
    a_batch_changes_no_row(Arch::Gemma3).await;
}

async fn a_batch_changes_no_row(arch: Arch) {
    let model = load(arch, SchedulerConfig::default());
    let sampling = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        seed: 7,
        ..Default::default()
    };
    // Alone, one after another.
    let mut alone = Vec::new();
    for prompt in greedy_cases_of(arch) {
        let (req, rx) = request(prompt, 24, sampling.clone());
        model.generate(req).expect("submit");
        alone.push(collect(rx).await.0);
    }
    // Together: submitted at once, so they prefill and decode in shared steps.
    let mut receivers = Vec::new();
    for prompt in greedy_cases_of(arch) {
        let (req, rx) = request(prompt, 24, sampling.clone());
        model.generate(req).expect("submit");
        receivers.push(rx);
    }
    let mut together = Vec::new();
    for rx in receivers {
        together.push(collect(rx).await.0);
    }
    assert!(
        model
            .scheduler()
            .counters()
            .max_batch
            .load(Ordering::SeqCst)
            >= 3,
        "the three sequences shared a step"
    );
    assert_eq!(alone, together);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_reproduces() {
    let model = model(SchedulerConfig::default());
    let prompt = greedy_cases().remove(0);
    let run = |seed| {
        let model = model.clone();
        let prompt = prompt.clone();
        async move {
            let sampling = SamplingParams {
                temperature: 1.2,
                top_p: 0.95,
                seed,
                ..Default::default()
            };
            let (req, rx) = request(prompt, 20, sampling);
            model.generate(req).expect("submit");
            collect(rx).await.0
        }
    };
    let a = run(1).await;
    assert_eq!(a, run(1).await);
    assert_ne!(a, run(2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_end_the_text() {
    let model = model(SchedulerConfig::default());
    let prompt = greedy_cases().remove(0); // "1, 2, ... 8," continues " 9, 10, 11, ..."
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    model
        .generate(Request {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens: 30,
            stop: vec![" 12".into()],
            emit_tokens: false,
            events: tx,
        })
        .expect("submit");
    let (_, text, done) = collect(rx).await;
    assert_eq!(text, " 9, 10, 11,");
    assert_eq!(done.finish, FinishReason::Stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_eos_generates_the_full_length() {
    let model = model(SchedulerConfig::default());
    let prompt = model
        .chat_tokens(&[llmesh_engine::template::Message {
            role: "user".into(),
            content: "Say hi.".into(),
        }])
        .expect("template");
    let (req, rx) = request(prompt.clone(), 200, SamplingParams::default());
    model.generate(req).expect("submit");
    let (short, _, done) = collect(rx).await;
    // The reply ends on its own: the end-of-sequence token is the last one streamed.
    assert_eq!(done.finish, FinishReason::Stop, "{} tokens", short.len());
    assert!(short.len() < 200);
    let sampling = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let (req, rx) = request(prompt, 200, sampling);
    model.generate(req).expect("submit");
    let (long, _, done) = collect(rx).await;
    assert_eq!(done.finish, FinishReason::Length);
    assert_eq!(long.len(), 200);
    assert_eq!(done.completion_tokens, 200);
    // The same tokens up to and including the end-of-sequence token, then more.
    assert_eq!(long[..short.len()], short[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_sequences_leave_and_free_their_cache() {
    let model = model(SchedulerConfig::default());
    let counters = model.scheduler().counters().clone();
    let (req, mut rx) = request(greedy_cases().remove(0), 4000, SamplingParams::default());
    model.generate(req).expect("submit");
    // Wait until it is decoding, then hang up as a client would.
    while !matches!(rx.recv().await, Some(Event::Delta(_))) {}
    assert_eq!(counters.running.load(Ordering::SeqCst), 1);
    assert!(counters.kv_cache_bytes.load(Ordering::SeqCst) > 0);
    drop(rx);
    let generated_at_drop = counters.generated_tokens.load(Ordering::SeqCst);
    let steps_at_drop = counters.steps.load(Ordering::SeqCst);
    for _ in 0..500 {
        if counters.cancelled.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(counters.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(counters.running.load(Ordering::SeqCst), 0);
    assert_eq!(counters.kv_cache_bytes.load(Ordering::SeqCst), 0);
    // The scheduler checks for hung-up clients before every step: at most the step in
    // flight when the client left completes.
    assert!(counters.steps.load(Ordering::SeqCst) <= steps_at_drop + 1);
    assert!(counters.generated_tokens.load(Ordering::SeqCst) <= generated_at_drop + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses() {
    let model = model(SchedulerConfig {
        queue_capacity: 2,
        max_running: 1,
        prefill_chunk: 256,
        ..Default::default()
    });
    let prompt = greedy_cases().remove(0);
    let mut keep = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let (req, rx) = request(prompt.clone(), 200, SamplingParams::default());
        match model.generate(req) {
            Ok(()) => keep.push(rx),
            Err(llmesh_engine::EngineError::QueueFull(_)) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // One may already be running; at most two wait.
    assert!(
        keep.len() <= 3 && refused >= 3,
        "kept {} refused {refused}",
        keep.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_prefix_changes_no_token() {
    // The next turn of a conversation starts with the previous prompt and reply: with
    // reuse, those positions come from the kept cache instead of being computed again,
    // and the tokens must be exactly those of a model that computes everything.
    let reusing = model(SchedulerConfig::default());
    let computing = model(SchedulerConfig {
        prefix_cache_entries: 0,
        ..Default::default()
    });
    let greedy = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let first = greedy_cases().remove(1);
    let (req, rx) = request(first.clone(), 24, greedy.clone());
    reusing.generate(req).expect("submit");
    let (reply, _, done) = collect(rx).await;
    assert_eq!(
        done.finish,
        FinishReason::Length,
        "24 tokens without an end"
    );
    let mut next = first.clone();
    next.extend(&reply);
    next.extend(&first[..8]);
    let mut outputs = Vec::new();
    for m in [&reusing, &computing] {
        let (req, rx) = request(next.clone(), 16, greedy.clone());
        m.generate(req).expect("submit");
        outputs.push(collect(rx).await.0);
    }
    assert_eq!(outputs[0], outputs[1]);
    let reused = |m: &ChatModel| {
        m.scheduler()
            .counters()
            .reused_prompt_tokens
            .load(Ordering::SeqCst)
    };
    // Everything the first turn fed: its prompt and all but the last reply token.
    assert_eq!(reused(&reusing), (first.len() + reply.len() - 1) as u64);
    assert_eq!(reused(&computing), 0);
}

/// SmolLM2's token for a space and the first two bytes of a four-byte emoji (" ðŁ").
const SPACE_AND_EMOJI_LEAD: u32 = 15107;

/// Generates from a fixed prompt with one token forced by logit_bias on every step.
async fn forced(model: &ChatModel, token: u32, max_tokens: usize) -> (Vec<u32>, String, Done) {
    let sampling = SamplingParams {
        logit_bias: vec![(token, 100.0)],
        ..SamplingParams::default()
    };
    let prompt = model.text_tokens("Trees:").expect("tokens");
    let (req, rx) = request(prompt, max_tokens, sampling);
    model.generate(req).expect("submit");
    collect(rx).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_inside_a_character_is_dropped_and_invalid_bytes_are_replaced() {
    let model = model(SchedulerConfig::default());
    assert_eq!(
        model.tokenizer.piece(SPACE_AND_EMOJI_LEAD),
        b" \xF0\x9F",
        "the scripted token is a space and the start of an emoji"
    );
    // One token: the space is text, the two bytes of an unfinished emoji are dropped.
    let (ids, text, done) = forced(&model, SPACE_AND_EMOJI_LEAD, 1).await;
    assert_eq!(ids, [SPACE_AND_EMOJI_LEAD]);
    assert_eq!(text, " ");
    assert_eq!(done.finish, FinishReason::Length);
    assert_eq!(done.completion_tokens, 1, "the cut token is still counted");

    // Three: each earlier lead is followed by a space, so it can never complete and is
    // shown as one U+FFFD; only the last, cut by max_tokens, is dropped.
    let (ids, text, done) = forced(&model, SPACE_AND_EMOJI_LEAD, 3).await;
    assert_eq!(ids, [SPACE_AND_EMOJI_LEAD; 3]);
    assert_eq!(text, " \u{FFFD} \u{FFFD} ");
    assert_eq!(done.completion_tokens, 3);
}
