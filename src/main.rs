use std::process::ExitCode;

fn main() -> ExitCode {
    match onnx_dlq::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", onnx_dlq::cli::sink::render_error(&e));
            ExitCode::FAILURE
        }
    }
}
