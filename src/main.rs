use std::process::ExitCode;

fn main() -> ExitCode {
    match onnx_dlq::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
