//! `llmesh`: the self-hosted LLM platform's one binary.

fn main() -> std::process::ExitCode {
    llmesh::cli::main()
}
