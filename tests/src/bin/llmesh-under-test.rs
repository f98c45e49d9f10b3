//! The `llmesh` binary, built with the tests so the mesh tests always run the code under
//! test (cargo hands integration tests its path as `CARGO_BIN_EXE_llmesh-under-test`).

fn main() -> std::process::ExitCode {
    llmesh::cli::main()
}
